"""A fine-tuning job's evals: named when the job is created, run on its base model and on its tuned model once it
succeeds, and compared (:mod:`.eval_compare`).

- at creation every check of a run is made with the base model (a bad eval id, data source or row is a 4xx then,
  never a run that fails after the training was paid for); the entries are stored on the job as ``pending``; an
  eval built from the job's validation file (:mod:`.validation_eval`) is checked the same way and created with
  the runs;
- once the job has succeeded, one replica claims them (``pending`` -> ``starting``) and creates two runs per
  eval, the same rows for both models; the runs execute like any other (:mod:`..executors.eval_runs`) and are
  the tenant's to read, page or delete;
- the report pairs the two runs' items; it is there as soon as both runs have completed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.service.core.errors import InvalidRequest, NotFound, ServiceError
from tuneforge.service.db.models import Eval, EvalRun, File, Job, now
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.eval_compare import compare, graded_item
from tuneforge.service.domain.evals import build_eval, check_run, create_eval, create_run, criteria_of
from tuneforge.service.domain.validation_eval import build_validation_eval
from tuneforge.service.schemas import VALIDATION_FILE_EVAL, JobEvalRequest
from tuneforge.storage import ObjectStore

ROLES = ("base", "tuned")


def _with_param(exc: ServiceError, prefix: str) -> ServiceError:
    exc.param = f"{prefix}.{exc.param}" if exc.param else prefix
    return exc


def _latest_completions_source(repo: TenantRepo, row: Eval, param: str) -> dict[str, Any]:
    runs, _ = repo.list_eval_runs(row.id, None, 100, newest_first=True)
    for run in runs:
        if run.data_source.get("type") == "completions":
            return {k: v for k, v in run.data_source.items() if k != "model"}
    raise InvalidRequest(f"Eval '{row.id}' has no completions run to take the data source from: give "
                         f"'{param}.data_source' (a completions data source without 'model')", param=param)


@dataclass(frozen=True)
class JobBeingCreated:
    """What a validation-file eval is built from: the job's method (as its spec holds it), its validation file,
    and a name for the eval."""

    method: Any
    validation: File | None
    name: str


def check_job_evals(repo: TenantRepo, store: ObjectStore, requests: list[JobEvalRequest],
                    base_model: str, max_items: int, job: JobBeingCreated | None = None) -> list[dict[str, Any]] | None:
    """The entries to store on the job, each checked as a run of the base model would be; None when none.
    ``job`` is None where no validation-file eval can be built (a feedback round names its evals)."""
    if not requests:
        return None
    entries: list[dict[str, Any]] = []
    for i, request in enumerate(requests):
        param = f"evals.{i}"
        if request.type == VALIDATION_FILE_EVAL:
            entries.append(_check_validation_eval(repo, store, request, base_model, max_items, job, entries, param))
        else:
            entries.append(_check_named_eval(repo, store, request, base_model, max_items, entries, param))
    return entries


def _check_named_eval(repo: TenantRepo, store: ObjectStore, request: JobEvalRequest, base_model: str,
                      max_items: int, entries: list[dict[str, Any]], param: str) -> dict[str, Any]:
    for name in ("max_items", "sampling_params"):
        if getattr(request, name) is not None:
            raise InvalidRequest(f"'{name}' is for an eval built from the validation file (type "
                                 "validation_file); a named eval's run takes its data_source", param=f"{param}.{name}")
    if request.eval_id is None:
        raise InvalidRequest(f"Missing required parameter: '{param}.eval_id'.", param=f"{param}.eval_id")
    try:
        row = repo.get_eval(request.eval_id)
    except NotFound as exc:
        raise _with_param(exc, f"{param}.eval_id") from None
    if any(e.get("eval_id") == row.id for e in entries):
        raise InvalidRequest(f"Eval '{row.id}' is named twice", param=param)
    source = request.data_source
    if source is None:
        source = _latest_completions_source(repo, row, param)
    elif "model" in source:
        raise InvalidRequest("The job sets the model (its base model, then its tuned model): leave "
                             f"'{param}.data_source.model' out", param=f"{param}.data_source.model")
    elif source.get("type", "completions") != "completions":
        raise InvalidRequest("A job's eval runs its models, so its data source is of type 'completions'",
                             param=f"{param}.data_source.type")
    body = {"data_source": {**source, "type": "completions", "model": base_model}}
    try:
        check_run(repo, store, row, body, max_items)
    except ServiceError as exc:
        raise _with_param(exc, param) from None
    return {"eval_id": row.id, "data_source": {**source, "type": "completions"}}


def _check_validation_eval(repo: TenantRepo, store: ObjectStore, request: JobEvalRequest, base_model: str,
                           max_items: int, job: JobBeingCreated | None, entries: list[dict[str, Any]],
                           param: str) -> dict[str, Any]:
    for name in ("eval_id", "data_source"):
        if getattr(request, name) is not None:
            raise InvalidRequest(f"An eval built from the validation file has no '{name}'", param=f"{param}.{name}")
    if job is None:
        raise InvalidRequest("Only a fine-tuning job builds an eval from its validation file: name evals by id",
                             param=f"{param}.type")
    if any(e.get("type") == VALIDATION_FILE_EVAL for e in entries):
        raise InvalidRequest("The validation_file eval is named twice", param=param)
    body, source = build_validation_eval(store, job.validation, job.method, job.name, request, max_items, param)
    try:
        row = build_eval(repo, store, body, now())
        check_run(repo, store, row, {"data_source": {**source, "model": base_model}}, max_items)
    except ServiceError as exc:
        raise _with_param(exc, param) from None
    return {"type": VALIDATION_FILE_EVAL, "eval_id": None, "eval": body, "data_source": source}


def start_job_evals(repo: TenantRepo, store: ObjectStore, job: Job, max_items: int) -> tuple[
        list[dict[str, Any]], list[EvalRun]]:
    """Creates the base and tuned runs of a succeeded job's evals: the entries as they are now, and the new runs.
    An eval that cannot run any more (deleted, its file deleted) gets its entry's ``error`` instead."""
    entries: list[dict[str, Any]] = []
    runs: list[EvalRun] = []
    models = {"base": job.model, "tuned": job.fine_tuned_model or ""}
    for stored in job.evals or []:
        entry = dict(stored)
        entries.append(entry)
        if entry.get("base_run_id") or entry.get("error"):
            continue
        bodies = {role: {"name": f"{job.id} {role}: {models[role]}"[:256],
                         "metadata": {"fine_tuning_job_id": job.id, "compared_as": role},
                         "data_source": {**entry["data_source"], "model": models[role]}} for role in ROLES}
        try:
            if entry.get("eval_id") is None:  # built from the validation file: created now, with its runs
                entry["eval_id"] = create_eval(repo, store, entry["eval"], now()).id
            row = repo.get_eval(entry["eval_id"])
            for role in ROLES:  # both checked before either is created: never a base run without its pair
                check_run(repo, store, row, bodies[role], max_items)
            made = {role: create_run(repo, store, row, bodies[role], now(), max_items).run for role in ROLES}
        except ServiceError as exc:
            entry["error"] = exc.message
            continue
        entry["base_run_id"], entry["tuned_run_id"] = made["base"].id, made["tuned"].id
        runs += [made["base"], made["tuned"]]
    return entries, runs


def is_compared_run(job: Job, run: EvalRun) -> str | None:
    """The role (base or tuned) of one of the job's compared runs, or None (a run's metadata is the client's to
    write, so it is never trusted alone)."""
    if job.tenant_id != run.tenant_id:
        return None
    for entry in job.evals or []:
        for role in ROLES:
            if entry.get(f"{role}_run_id") == run.id:
                return role
    return None


def _run_summary(run: EvalRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"id": run.id, "model": run.model, "status": run.status, "result_counts": run.result_counts,
            "per_testing_criteria_results": run.per_testing_criteria_results}


def job_eval_report(repo: TenantRepo, job: Job) -> dict[str, Any]:
    """The job's evals, each with its two runs and, once both completed, their comparison."""
    shown: list[dict[str, Any]] = []
    for entry in job.evals or []:
        report: dict[str, Any] = {"type": entry.get("type", "eval"), "eval_id": entry.get("eval_id"),
                                  "eval_name": None, "error": entry.get("error"), "base_run": None,
                                  "tuned_run": None, "comparison": None}
        shown.append(report)
        if entry.get("eval_id") is None:  # a validation-file eval before the job succeeded
            report["eval_name"] = (entry.get("eval") or {}).get("name")
            continue
        try:
            row = repo.get_eval(entry["eval_id"])
        except NotFound:
            report["error"] = report["error"] or "the eval was deleted"
            continue
        report["eval_name"] = row.name
        runs: dict[str, EvalRun | None] = {}
        for role in ROLES:
            run_id = entry.get(f"{role}_run_id")
            try:
                runs[role] = repo.get_eval_run(row.id, run_id) if run_id else None
            except NotFound:
                runs[role] = None
                report["error"] = report["error"] or f"the {role} model's run was deleted"
            report[f"{role}_run"] = _run_summary(runs[role])
        base, tuned = runs["base"], runs["tuned"]
        if base is None or tuned is None or base.status != "completed" or tuned.status != "completed":
            continue
        names = [g.name or g.type for g in criteria_of(row)]
        items = {role: [graded_item(i.datasource_item_id, i.status, i.datasource_item, i.sample or {}, i.results)
                        for i in repo.all_output_items(run)] for role, run in (("base", base), ("tuned", tuned))}
        report["comparison"] = compare(names, items["base"], items["tuned"])
    return {"object": "fine_tuning.job.eval_report", "fine_tuning_job_id": job.id, "status": job.status,
            "model": job.model, "fine_tuned_model": job.fine_tuned_model, "evals": shown}
