"""Eval runs, executed in the background in the service process.

Each run is one asyncio task: it reads the run's rows, asks the run's model for each item's answer through the
serving backend (the engines that answer ``/v1/chat/completions``), grades the answer with every testing
criterion in a worker thread (:mod:`tuneforge.graders`; judges ask the serving backend too) and stores the
output item together with the run's new counts. At most ``TUNEFORGE_EVAL_CONCURRENCY`` completion requests of
all runs together are in flight, so evals never crowd out interactive requests beyond that.

- a model that fails (the engine cannot start, crashes, answers 5xx) ends the run ``failed`` with the reason; the
  items graded so far are kept. A 4xx for one item (e.g. a prompt too long) is that item's ``error``;
- a cancel marks the run ``canceled`` in the database first (a conditional update), then stops the task; an item
  that finishes after it is dropped, since items are stored only while the run is ``in_progress``;
- on start-up, runs left ``queued`` or ``in_progress`` by a stopped service resume where they were: items
  already graded are not asked again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tuneforge.contracts.grader_templates import TemplateError, render
from tuneforge.contracts.graders import AnyEvalGrader
from tuneforge.graders import GraderError, JudgeError, compile_grader
from tuneforge.graders.grading import Grade, Graded
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import ServiceError
from tuneforge.service.db.models import EvalOutputItem, EvalRun, now
from tuneforge.service.db.repo import SystemRepo, TenantRepo
from tuneforge.service.domain.evals import (
    CompletionsDataSource,
    ItemReferenceInput,
    Row,
    criteria_of,
    new_eval_id,
    parse_data_source,
    source_rows,
)
from tuneforge.service.domain.grading import ServingJudge, judge_targets, usage_by_model
from tuneforge.service.domain.job_evals import is_compared_run, start_job_evals
from tuneforge.service.domain.lifecycle import add_event
from tuneforge.service.domain.serving import CHAT, ServingBackend, Target, resolve_target
from tuneforge.service.executors.background import KeyedTasks, PollLoop
from tuneforge.storage import ObjectStore

log = logging.getLogger(__name__)
#: how often succeeded jobs are looked at for evals to start, and how many per look
JOB_EVALS_POLL_SECONDS = 2.0
JOB_EVALS_BATCH = 20


class ModelFailed(Exception):
    """The run's model could not answer: the run fails."""


@dataclass
class _Tally:
    """A run's counts as items are graded (rebuilt from the stored items when a run resumes)."""

    names: list[str]
    passed: int = 0
    failed: int = 0
    errored: int = 0
    criteria: dict[str, list[int]] = field(default_factory=dict)
    usage: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.criteria = {name: [0, 0] for name in self.names}

    def add(self, status: str, results: list[dict[str, Any]], usage: dict[str, dict[str, int]]) -> None:
        if status == "pass":
            self.passed += 1
        elif status == "fail":
            self.failed += 1
        else:
            self.errored += 1
        for result in results:
            counts = self.criteria.setdefault(result["name"], [0, 0])
            counts[0 if result.get("passed") else 1] += 1
        for model, used in usage.items():
            seen = self.usage.setdefault(model, {"invocation_count": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                 "total_tokens": 0, "cached_tokens": 0})
            for key, value in used.items():
                seen[key] = seen.get(key, 0) + int(value)

    def values(self) -> dict[str, Any]:
        return {
            "result_counts": {"total": self.passed + self.failed + self.errored, "passed": self.passed,
                              "failed": self.failed, "errored": self.errored},
            "per_testing_criteria_results": [{"testing_criteria": name, "passed": c[0], "failed": c[1]}
                                             for name, c in self.criteria.items()],
            "per_model_usage": [{"model_name": model, **used} for model, used in self.usage.items()],
        }


def _item_usage(item: EvalOutputItem) -> dict[str, dict[str, int]]:
    stored = item.sample.get("_usage_by_model") if isinstance(item.sample, dict) else None
    return stored if isinstance(stored, dict) else {}


@dataclass
class _Job:
    run: EvalRun
    tenant_id: str
    criteria: list[AnyEvalGrader]
    graded: list[Graded]
    rows: list[Row]
    source: Any
    target: Target | None
    tally: _Tally
    done: set[int]
    failure: str | None = None
    #: one item's counts and its row are written together, one item at a time (the counts never go back)
    lock: threading.Lock = field(default_factory=threading.Lock)


#: told of every stored item: its status and the types of the graders that could not grade it (metrics)
ItemHook = Callable[[str, list[str]], None]


class _JobEvals(PollLoop):
    """Starts the base and tuned runs of succeeded jobs' evals (domain/job_evals.py)."""

    name = "job-evals"

    def __init__(self, runner: EvalRunner) -> None:
        super().__init__(JOB_EVALS_POLL_SECONDS)
        self.runner = runner

    async def tick(self) -> None:
        for run_id in await asyncio.to_thread(self.runner.start_pending_job_evals):
            self.runner.submit(run_id)


class EvalRunner(KeyedTasks):
    def __init__(self, settings: ServiceSettings, sessions: sessionmaker[Session], store: ObjectStore,
                 serving: ServingBackend, on_item: ItemHook | None = None) -> None:
        super().__init__(settings.serving.eval_concurrency, "eval-run")
        self.settings, self.sessions, self.store, self.serving = settings, sessions, store, serving
        self.on_item = on_item
        self.job_evals = _JobEvals(self)

    # -- lifecycle --
    async def start(self) -> None:
        """Resume the runs a stopped service left unfinished; start looking for succeeded jobs' evals."""
        self.attach()
        with self.sessions() as session:
            unfinished = SystemRepo(session).unfinished_eval_runs()
            released = SystemRepo(session).release_starting_job_evals()
        if released:
            log.info("job evals: %d left starting by a stopped service start again", released)
        for run_id in unfinished:
            log.info("resuming eval run %s", run_id)
            self.submit(run_id)
        self.job_evals.start_polling()

    async def aclose(self) -> None:
        await self.job_evals.stop_polling()
        await super().aclose()

    def wake_threadsafe(self) -> None:
        """Look for succeeded jobs' evals now instead of at the next poll."""
        self.job_evals.wake_threadsafe()

    # -- a succeeded job's base-vs-tuned runs (domain/job_evals.py) --
    def start_pending_job_evals(self) -> list[str]:
        """One pass: creates the runs of the succeeded jobs whose evals are pending; their ids, to submit."""
        started: list[str] = []
        with self.sessions() as session:
            job_ids = SystemRepo(session).jobs_awaiting_evals(JOB_EVALS_BATCH)
        for job_id in job_ids:
            with self.sessions() as session:
                job = SystemRepo(session).claim_job_evals(job_id)
                if job is None:
                    continue  # another replica has it
                entries, runs = start_job_evals(TenantRepo(session, job.tenant_id), self.store, job,
                                                self.settings.limits.max_eval_items)
                SystemRepo(session).set_job_evals(job.id, entries, "started")
                for entry in entries:
                    if entry.get("error"):
                        which = entry["eval_id"] or "from the validation file"
                        add_event(session, job, f"Eval {which} could not run: {entry['error']}",
                                  level="warn", data={"eval_id": entry["eval_id"]})
                    elif entry.get("base_run_id") in {r.id for r in runs}:
                        add_event(session, job, f"Eval {entry['eval_id']} started on the base model ({job.model}: "
                                  f"run {entry['base_run_id']}) and the tuned model ({job.fine_tuned_model}: run "
                                  f"{entry['tuned_run_id']})", data={
                                      "eval_id": entry["eval_id"], "base_run_id": entry["base_run_id"],
                                      "tuned_run_id": entry["tuned_run_id"]})
                started += [r.id for r in runs]
        return started

    def _tell_job(self, run_id: str) -> None:
        """A finished run that a job compares: one event on the job."""
        with self.sessions() as session:
            system = SystemRepo(session)
            found = system.eval_run(run_id)
            if found is None:
                return
            run = found[0]
            job_id = (run.run_metadata or {}).get("fine_tuning_job_id")
            job = system.job(job_id) if isinstance(job_id, str) else None
            role = is_compared_run(job, run) if job is not None else None
            if job is None or role is None:
                return
            counts = run.result_counts or {}
            message = (f"Eval run {run.id} on the {role} model {run.status}: {counts.get('passed', 0)} of "
                       f"{counts.get('total', 0)} items passed")
            if run.status == "failed" and run.error:
                message += f" ({run.error.get('message', '')})"
            add_event(session, job, message, level="warn" if run.status == "failed" else "info",
                      data={"eval_id": run.eval_id, "run_id": run.id, "compared_as": role, "status": run.status,
                            "result_counts": counts})

    # -- a run --
    def _system(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        with self.sessions() as session:
            return call(SystemRepo(session), *args, **kwargs)

    async def run(self, run_id: str) -> None:
        try:
            await self._run(run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the run in progress forever
            log.exception("eval run %s crashed", run_id)
            await asyncio.to_thread(self._system, SystemRepo.set_eval_run, run_id, status="failed",
                                    finished_at=now(), error={"code": "internal_error", "message": str(exc)[:500]})

    def _prepare(self, run_id: str, loop: asyncio.AbstractEventLoop) -> _Job | str | None:
        """The run's work, or the reason it cannot run (a string), or None when it is not to run."""
        with self.sessions() as session:
            system = SystemRepo(session)
            found = system.eval_run(run_id)
            if found is None or found[0].status not in ("queued", "in_progress"):
                return None
            run, row = found
            session.expunge_all()
            repo = TenantRepo(session, run.tenant_id)
            criteria = criteria_of(row)
            source = parse_data_source(run.data_source)
            try:
                target = resolve_target(repo, self.store, source.model) if isinstance(
                    source, CompletionsDataSource) else None
                targets = judge_targets(repo, self.store, {g.name or "": g for g in criteria})
                rows = source_rows(repo, self.store, source.source, "data_source.source")
            except ServiceError as exc:
                return exc.message
            judge = ServingJudge(self.serving, targets, loop, self.limit)
            try:
                graded = [compile_grader(g, judge) for g in criteria]
            except GraderError as exc:
                return str(exc)
            tally = _Tally([g.name or g.type for g in criteria])
            done = set()
            for item in system.run_items(run_id):
                done.add(item.datasource_item_id)
                tally.add(item.status, item.results, _item_usage(item))
        return _Job(run, run.tenant_id, criteria, graded, rows, source, target, tally, done)

    async def _run(self, run_id: str) -> None:
        job = await asyncio.to_thread(self._prepare, run_id, asyncio.get_running_loop())
        if job is None:
            return
        if isinstance(job, str):
            await asyncio.to_thread(self._system, SystemRepo.set_eval_run, run_id, status="failed",
                                    finished_at=now(), error={"code": "invalid_data_source", "message": job})
            return
        if not await asyncio.to_thread(self._system, SystemRepo.set_eval_run, run_id, status="in_progress"):
            return  # canceled meanwhile
        pending = iter([i for i in range(len(job.rows)) if i not in job.done])
        workers = [self._worker(job, pending) for _ in range(self.settings.serving.eval_concurrency)]
        await asyncio.gather(*workers)
        if job.failure is not None:
            ended = await asyncio.to_thread(self._system, SystemRepo.set_eval_run, run_id, only_if=("in_progress",),
                                            status="failed", finished_at=now(),
                                            error={"code": "model_error", "message": job.failure})
        else:
            ended = await asyncio.to_thread(self._system, SystemRepo.set_eval_run, run_id, only_if=("in_progress",),
                                            status="completed", finished_at=now())
        if ended and (job.run.run_metadata or {}).get("fine_tuning_job_id"):
            await asyncio.to_thread(self._tell_job, run_id)

    async def _worker(self, job: _Job, pending: Iterator[int]) -> None:
        for index in pending:
            if job.failure is not None:
                return
            row = job.rows[index]
            try:
                sample = await self._sample(job, row)
            except ModelFailed as exc:
                if job.failure is None:
                    job.failure = f"the model '{job.run.model}' failed on item {index} ({row.where}): {exc}"
                return
            results, usage = await asyncio.to_thread(self._grade, job, row, sample)
            stored = await asyncio.to_thread(self._store, job, index, row, sample, results, usage)
            if not stored:
                return  # canceled or deleted

    async def _sample(self, job: _Job, row: Row) -> dict[str, Any]:
        """The answer graded for one row: the model's (completions) or the row's own (jsonl)."""
        source = job.source
        if not isinstance(source, CompletionsDataSource):
            return {"output_text": str((row.sample or {}).get("output_text", "")), "input": [], "output": [],
                    "model": "", "finish_reason": "", "usage": {}, "error": None, **(row.sample or {})}
        assert job.target is not None
        params = source.sampling_params
        body: dict[str, Any] = {"model": job.target.public_id}
        try:
            body["messages"] = self._messages(source, row)
        except (TemplateError, ValueError) as exc:
            return self._sample_error(body, "invalid_item", str(exc))
        if params is not None:
            for key in ("temperature", "top_p", "seed", "ignore_eos"):
                if getattr(params, key) is not None:
                    body[key] = getattr(params, key)
            tokens = params.max_completion_tokens or params.max_completions_tokens
            if tokens is not None:
                body["max_tokens"] = tokens
        async with self.limit:
            try:
                reply = await self.serving.request(job.target, CHAT, body)
            except ServiceError as exc:
                raise ModelFailed(exc.message) from None
            except Exception as exc:
                raise ModelFailed(str(exc) or type(exc).__name__) from None
        error = reply.body.get("error") if isinstance(reply.body, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(reply.body)[:300]
        if reply.status >= 500:
            raise ModelFailed(f"the engine answered {reply.status}: {message}")
        if reply.status != 200:
            return self._sample_error(body, "model_error", f"the engine answered {reply.status}: {message}")
        choice = (reply.body.get("choices") or [{}])[0]
        text = str((choice.get("message") or {}).get("content") or "")
        usage = reply.body.get("usage") or {}
        return {"input": body["messages"], "output": [{"role": "assistant", "content": text}], "output_text": text,
                "finish_reason": choice.get("finish_reason") or "", "model": job.target.public_id,
                "usage": {"prompt_tokens": int(usage.get("prompt_tokens", 0)),
                          "completion_tokens": int(usage.get("completion_tokens", 0)),
                          "total_tokens": int(usage.get("total_tokens", 0)), "cached_tokens": 0},
                "error": None, "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
                "seed": body.get("seed"), "max_completion_tokens": body.get("max_tokens")}

    @staticmethod
    def _messages(source: CompletionsDataSource, row: Row) -> list[dict[str, str]]:
        if isinstance(source.input_messages, ItemReferenceInput):
            value: Any = row.item
            for part in source.input_messages.item_reference.split(".")[1:]:
                value = value.get(part) if isinstance(value, dict) else None
            ok = isinstance(value, list) and value and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)
            if not ok:
                raise ValueError(f"'{source.input_messages.item_reference}' is not a list of chat messages")
            return [{"role": m["role"], "content": m["content"]} for m in value]
        return [{"role": "system" if m.role == "developer" else m.role, "content": render(m.text, row.item)}
                for m in source.input_messages.template]

    @staticmethod
    def _sample_error(body: dict[str, Any], code: str, message: str) -> dict[str, Any]:
        return {"input": body.get("messages", []), "output": [], "output_text": "", "finish_reason": "",
                "model": body.get("model", ""), "usage": {}, "error": {"code": code, "message": message}}

    def _grade(self, job: _Job, row: Row, sample: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                                                          dict[str, dict[str, int]]]:
        results: list[dict[str, Any]] = []
        usage: dict[str, dict[str, int]] = {}
        if sample.get("error"):
            return [], usage
        for grader, graded in zip(job.criteria, job.graded, strict=True):
            name = grader.name or grader.type
            try:
                grade: Grade = graded(row.item, sample)
            except (TemplateError, JudgeError) as exc:
                results.append({"name": name, "type": grader.type, "score": 0.0, "passed": False,
                                "sample": None, "error": str(exc)})
                continue
            judged = [{"model": c.model, "output": c.reply, "usage": dict(c.usage)} for c in grade.judge_calls]
            results.append({"name": name, "type": grader.type, "score": grade.score, "passed": grade.passed,
                            "sample": judged[0] if len(judged) == 1 else ({"judges": judged} if judged else None),
                            **({"sub_scores": dict(grade.sub_scores)} if grade.sub_scores else {})})
            for model, used in usage_by_model(grade).items():
                seen = usage.setdefault(model, dict.fromkeys(used, 0))
                for key, value in used.items():
                    seen[key] += value
        if sample.get("model") and sample.get("usage"):
            own = usage.setdefault(sample["model"], {"invocation_count": 0, "prompt_tokens": 0,
                                                     "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0})
            own["invocation_count"] += 1
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                own[key] += int(sample["usage"].get(key, 0))
        return results, usage

    def _store(self, job: _Job, index: int, row: Row, sample: dict[str, Any], results: list[dict[str, Any]],
               usage: dict[str, dict[str, int]]) -> bool:
        if sample.get("error") or any("error" in r for r in results):
            status = "error"
        else:
            status = "pass" if all(r["passed"] for r in results) else "fail"
        item = EvalOutputItem(
            id=new_eval_id("outputitem"), run_id=job.run.id, eval_id=job.run.eval_id, tenant_id=job.tenant_id,
            datasource_item_id=index, datasource_item=row.item, status=status, results=results,
            sample={**sample, "_usage_by_model": usage}, created_at=int(time.time()))
        with job.lock:
            job.tally.add(status, results, usage)
            stored = bool(self._system(SystemRepo.add_output_item, item, job.tally.values()))
        if stored and self.on_item is not None:
            self.on_item(status, [r["type"] for r in results if "error" in r])
        return stored
