"""Safety reports of succeeded jobs, made in the background in the service process.

A loop looks for succeeded jobs without a report (``jobs.safety_report`` is NULL), claims one with a conditional
update (one replica makes it), and asks the job's base and tuned models, through the serving backend like evals
do, the fixed red-team prompts and the first prompts of the job's validation file (else its training file):
greedy, bounded in number and length. The report (:mod:`tuneforge.service.domain.safety.report`) is stored next to
the job's model as ``reports/safety_report.json`` and ``.html`` (listed by the artifacts route) and summarised in
one job event. The job's status never waits for it and never changes because of it.

- a reward model's job is ``skipped`` (it does not generate); so is every job while the report is turned off
  (``TUNEFORGE_SAFETY_REPORT_ENABLED=false``), so that turning it on later does not report the backlog;
- an engine that fails ends the report ``failed`` with the reason in a warning event; one prompt answered with a
  4xx is that item's error;
- reports left ``running`` by a stopped service start again at the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tuneforge.contracts.store_layout import job_prefix
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import NotFound, ServiceError
from tuneforge.service.db.models import File
from tuneforge.service.db.repo import SystemRepo, TenantRepo
from tuneforge.service.domain.lifecycle import add_event
from tuneforge.service.domain.safety.leaks import TrainingValues, training_values
from tuneforge.service.domain.safety.prompts import Messages, file_prompts, redteam_data, redteam_prompts
from tuneforge.service.domain.safety.report import HTML_NAME, JSON_NAME, Answer, Item, build, page, summary
from tuneforge.service.domain.serving import CHAT, SCORE, ServingBackend, Target, resolve_reward_model, resolve_target
from tuneforge.service.executors.background import PollLoop
from tuneforge.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)
#: jobs looked at per poll
BATCH = 20


def report_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}/reports/{name}"


class ModelFailed(Exception):
    """A model could not answer at all: the report fails."""


@dataclass
class _Work:
    job_id: str
    tenant_id: str
    targets: dict[str, Target]
    prompts: list[tuple[str, Messages]]
    training: TrainingValues
    settings: dict[str, Any]
    reward_model: dict[str, Any]


def _reward_model(method: dict[str, Any]) -> dict[str, Any]:
    grader = (method.get(method.get("type", "")) or {}).get("grader") if isinstance(method, dict) else None
    graders = [grader] if isinstance(grader, dict) else []
    if isinstance(grader, dict) and grader.get("type") == "multi":
        graders = [g for g in (grader.get("graders") or {}).values() if isinstance(g, dict)]
    models = [g.get("model") for g in graders if g.get("type") == "reward_model"]
    if not models:
        return {"available": False, "model": None,
                "reason": "the job's method used no reward_model grader: no harmlessness score"}
    return {"available": False, "model": models[0], "reason": "not scored yet"}


def _file_or_none(repo: TenantRepo, file_id: str) -> File | None:
    """A job's file, or None when it was deleted since (the report goes on without it)."""
    try:
        return repo.get_file(file_id)
    except NotFound:
        return None


class SafetyReporter(PollLoop):
    name = "safety-reports"

    def __init__(self, settings: ServiceSettings, sessions: sessionmaker[Session], store: ObjectStore,
                 serving: ServingBackend) -> None:
        super().__init__(settings.privacy.safety_poll_seconds)
        self.settings, self.sessions, self.store, self.serving = settings, sessions, store, serving
        self.privacy = settings.privacy

    # -- lifecycle --
    async def start(self) -> None:
        released = await asyncio.to_thread(self._system, SystemRepo.release_running_safety_reports)
        if released:
            log.info("safety reports: %d left running by a stopped service start again", released)
        self.start_polling()

    async def aclose(self) -> None:
        await self.stop_polling()

    def _system(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        with self.sessions() as session:
            return call(SystemRepo(session), *args, **kwargs)

    async def tick(self) -> None:
        for job_id in await asyncio.to_thread(self._system, SystemRepo.jobs_awaiting_safety_report, BATCH):
            if not (self.privacy.safety_report_enabled and self.settings.serving.enabled):
                await asyncio.to_thread(self._system, SystemRepo.set_safety_report, job_id, "skipped")
                continue
            if await asyncio.to_thread(self._system, SystemRepo.set_safety_report, job_id, "running"):
                await self.report(job_id)

    # -- one report --
    async def report(self, job_id: str) -> None:
        try:
            work = await asyncio.to_thread(self._prepare, job_id)
            if isinstance(work, str):
                await asyncio.to_thread(self._finish, job_id, "skipped", f"Safety report skipped: {work}", None)
                return
            items = await self._ask(work)
            if work.reward_model.get("model"):
                work.reward_model = await self._harmlessness(work, items)
            report = build(job_id=job_id, created_at=int(time.time()),
                           models={role: t.public_id for role, t in work.targets.items()}, items=items,
                           training=work.training, settings=work.settings, reward_model=work.reward_model,
                           redteam_source={k: v for k, v in redteam_data().items() if k != "prompts"})
            await asyncio.to_thread(self._publish, job_id, report)
        except asyncio.CancelledError:
            raise
        except (ModelFailed, ServiceError, ObjectNotFound) as exc:
            reason = exc.message if isinstance(exc, ServiceError) else str(exc)
            await asyncio.to_thread(self._finish, job_id, "failed", f"Safety report failed: {reason}", None)
        except Exception as exc:
            log.exception("safety report of %s crashed", job_id)
            await asyncio.to_thread(self._finish, job_id, "failed", f"Safety report failed: {exc}", None)

    def _prepare(self, job_id: str) -> _Work | str:
        with self.sessions() as session:
            job = SystemRepo(session).job(job_id)
            if job is None:
                return "the job is gone"
            if (job.method or {}).get("type") == "reward_model":
                return "a reward model scores text; it does not generate answers"
            repo = TenantRepo(session, job.tenant_id)
            targets = {"base": resolve_target(repo, self.store, job.model),
                       "tuned": resolve_target(repo, self.store, job.fine_tuned_model)}
            training_file = _file_or_none(repo, job.training_file)
            prompt_file = _file_or_none(repo, job.validation_file) if job.validation_file else None
            source = "validation_file" if prompt_file is not None else "training_file"
            prompt_file = prompt_file or training_file
            method, tenant_id = dict(job.method or {}), job.tenant_id
        redteam = [("redteam", [{"role": "user", "content": p}])
                   for p in redteam_prompts(self.privacy.safety_redteam_prompts)]
        count = self.privacy.safety_validation_prompts
        own = [] if prompt_file is None else [("validation", m) for m in file_prompts(self.store, prompt_file.key,
                                                                                           count)]
        training = training_values(self.store, training_file.key) if training_file is not None else TrainingValues(
            complete=False)
        settings = {"max_tokens": self.privacy.safety_max_tokens, "temperature": 0.0, "seed": 0,
                    "redteam_prompts": len(redteam), "validation_prompts": len(own),
                    "validation_source": f"{source} {prompt_file.id}" if prompt_file is not None else None}
        return _Work(job_id, tenant_id, targets, redteam + own, training, settings, _reward_model(method))

    async def _ask(self, work: _Work) -> list[Item]:
        limit = asyncio.Semaphore(self.privacy.safety_concurrency)

        async def one(role: str, messages: Messages) -> Answer:
            target = work.targets[role]
            body = {"model": target.public_id, "messages": messages, "max_tokens": self.privacy.safety_max_tokens,
                    "temperature": 0.0, "seed": 0}
            async with limit:
                try:
                    reply = await self.serving.request(target, CHAT, body)
                except ServiceError as exc:
                    raise ModelFailed(f"the model '{target.public_id}' failed: {exc.message}") from None
            if reply.status >= 500:
                raise ModelFailed(f"the model '{target.public_id}' failed: the engine answered {reply.status}: "
                                  f"{json.dumps(reply.body)[:300]}")
            if reply.status != 200:
                error = reply.body.get("error") if isinstance(reply.body, dict) else None
                message = error.get("message") if isinstance(error, dict) else str(reply.body)[:300]
                return Answer("", error=f"the engine answered {reply.status}: {message}")
            choice = (reply.body.get("choices") or [{}])[0]
            return Answer(str((choice.get("message") or {}).get("content") or ""))

        answers = await asyncio.gather(*(one(role, messages) for _, messages in work.prompts
                                         for role in ("base", "tuned")))
        items = []
        for i, (set_name, messages) in enumerate(work.prompts):
            prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            items.append(Item(set_name, prompt, {"base": answers[2 * i], "tuned": answers[2 * i + 1]}))
        return items

    async def _harmlessness(self, work: _Work, items: list[Item]) -> dict[str, Any]:
        """The reward model's mean score of the base and the tuned answers to the harmful requests (a higher score
        is what the reward model prefers); why not, when it cannot score."""
        model = str(work.reward_model["model"])
        pairs = [(item, role) for item in items if item.set == "redteam" for role in ("base", "tuned")
                 if item.answers[role].error is None]
        try:
            target = await asyncio.to_thread(self._scorer, work.tenant_id, model)
            body = {"model": model, "input": [{"messages": [{"role": "user", "content": item.prompt}],
                                               "output_text": item.answers[role].text} for item, role in pairs]}
            reply = await self.serving.request(target, SCORE, body) if pairs else None
        except ServiceError as exc:
            return {"available": False, "model": model, "reason": f"the reward model could not score: {exc.message}"}
        if reply is None or reply.status != 200:
            shown = json.dumps(reply.body)[:300] if reply is not None else "no answers to score"
            return {"available": False, "model": model, "reason": f"the reward model could not score: {shown}"}
        scores: dict[str, list[float]] = {"base": [], "tuned": []}
        for (_, role), entry in zip(pairs, reply.body["data"], strict=True):
            scores[role].append(float(entry["score"]))
        means = {role: round(sum(v) / len(v), 6) if v else None for role, v in scores.items()}
        difference = (round(means["tuned"] - means["base"], 6)
                      if means["base"] is not None and means["tuned"] is not None else None)
        return {"available": True, "model": model, "set": "redteam", "answers": {r: len(v) for r, v in scores.items()},
                "mean_score": means, "difference": difference,
                "reason": "the job's reward model's mean score of the answers to the harmful requests"}

    def _scorer(self, tenant_id: str, model: str) -> Target:
        with self.sessions() as session:
            return resolve_reward_model(TenantRepo(session, tenant_id), model)

    def _publish(self, job_id: str, report: dict[str, Any]) -> None:
        self.store.put_bytes(report_key(job_id, JSON_NAME), json.dumps(report, indent=1).encode("utf-8"))
        self.store.put_bytes(report_key(job_id, HTML_NAME), page(report).encode("utf-8"))
        compact = {key: report[key] for key in ("models", "settings")}
        compact["refusal_rate"] = {s: {r: report[s][r]["refusal_rate"] for r in ("base", "tuned")}
                                   for s in ("redteam", "validation")}
        compact["pii"] = {r: {k: report["pii"][r][k] for k in ("found_total", "leaked_total")}
                          for r in ("base", "tuned")}
        compact["reward_model"] = report["reward_model"]
        compact["artifacts"] = [f"reports/{JSON_NAME}", f"reports/{HTML_NAME}"]
        self._finish(job_id, "completed", summary(report), compact)

    def _finish(self, job_id: str, state: str, message: str, data: dict[str, Any] | None) -> None:
        with self.sessions() as session:
            system = SystemRepo(session)
            if not system.set_safety_report(job_id, state, only_if="running"):
                return  # deleted meanwhile
            job = system.job(job_id)
            if job is not None:
                add_event(session, job, message, level="info" if state != "failed" else "warn",
                          data={"safety_report": {"status": state, **(data or {})}})
