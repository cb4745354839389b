"""Turn a job-create request into a stored job and its immutable JobSpec.

The request's ``method`` is already validated against the contract models (by the API); here the top-level
``hyperparameters`` (OpenAI's older place for them) are merged in, the files and the model are looked up
through the tenant-scoped repository, and the JobSpec resolves every ``"auto"``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tuneforge.contracts.datasets import METHOD_FORMATS
from tuneforge.contracts.graders import AnyGrader, RewardModelGrader
from tuneforge.contracts.jobspec import AdapterSpec, DatasetRef, JobSpec, ProgressChannel, ResourceSpec
from tuneforge.contracts.methods import AnyMethod, Method, ReinforcementMethod, SupervisedMethod
from tuneforge.contracts.status import JobStatus
from tuneforge.contracts.store_layout import job_model_prefix, job_prefix
from tuneforge.contracts.validation import describe
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import Conflict, InvalidRequest
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import File, Job, now
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.budgets import check_budget, spent_gpu_hours
from tuneforge.service.domain.estimate import estimate
from tuneforge.service.domain.integrations import resolve_integrations
from tuneforge.service.domain.job_evals import JobBeingCreated, check_job_evals
from tuneforge.service.domain.model_registry import StartingPoint, starting_point
from tuneforge.service.domain.quotas import Limits, admit_job, effective_limits
from tuneforge.service.schemas import JobCreate
from tuneforge.storage import ObjectStore

FORMAT_NAMES = {
    "chat": "chat ('messages')",
    "prompt_completion": "prompt/completion",
    "preference": "preference (input/preferred_output/non_preferred_output or prompt/chosen/rejected)",
    "prompt_only": "prompt-only (reinforcement)",
}
_METHOD = TypeAdapter(Method)


def _with_top_level_hyperparameters(req: JobCreate) -> AnyMethod:
    """``req.method`` with OpenAI's top-level ``hyperparameters`` merged in (the method's values win)."""
    method: AnyMethod = req.method or SupervisedMethod()
    top = req.hyperparameters or {}
    if not top:
        return method
    raw = {**method.model_dump(exclude_unset=True), "type": method.type}
    section = raw.setdefault(method.type, {})
    section["hyperparameters"] = {**top, **section.get("hyperparameters", {})}
    try:
        return _METHOD.validate_python(raw)
    except ValidationError as exc:
        # the method alone was valid, so the problem is in what came from the top level: name it there
        details = describe(exc.errors(), raw, rename=lambda path: path.removeprefix(f"{method.type}."))
        raise InvalidRequest(details[0]["message"], param=details[0]["param"], details=list(details)) from None


def _check_file_format(file: File, method: str, param: str) -> None:
    allowed = METHOD_FORMATS[method]
    if file.format not in allowed:
        want = " or ".join(FORMAT_NAMES[f] for f in allowed)
        raise InvalidRequest(
            f"File '{file.id}' ({file.filename}) is in {FORMAT_NAMES.get(file.format or '', file.format)} format, "
            f"but method '{method}' needs {want} data.",
            param=param, code="invalid_file_format",
        )


def _resolve_reward_models(repo: TenantRepo, grader: AnyGrader, param: str) -> AnyGrader:
    """A ``reward_model`` grader names a tuned model; its place in the store is the service's to fill in."""
    if not isinstance(grader, RewardModelGrader):
        return grader
    if grader.model_prefix is not None:
        raise InvalidRequest("'model_prefix' is set by the service; name the reward model with 'model'",
                             param=f"{param}.model_prefix")
    job = repo.find_model_job(grader.model)
    if job is None or (job.method or {}).get("type") != "reward_model":
        raise InvalidRequest(f"'grader.model' must be the fine_tuned_model of a succeeded reward_model job, got "
                             f"{grader.model!r}", param=f"{param}.model", code="model_not_available")
    return grader.model_copy(update={"model_prefix": job_model_prefix(job.id)})


def _check_adapter(method: AnyMethod, adapter: AdapterSpec) -> None:
    if method.algorithm == "ppo" and adapter.type == "full":
        raise InvalidRequest("algorithm 'ppo' trains LoRA adapters (the policy and the critic share one copy of the "
                             "base weights): use adapter type 'lora' or 'qlora'", param="adapter.type")


def _check_resolved(method: AnyMethod) -> None:
    """The rules that need resolved values (PPO's minibatches must divide an ``auto`` batch size), once more on
    the method as the JobSpec holds it, so the trainer is never handed a job it would refuse."""
    raw = method.model_dump()
    try:
        _METHOD.validate_python(raw)
    except ValidationError as exc:
        details = describe(exc.errors(), raw, rename=lambda path: f"method.{path}")
        raise InvalidRequest(details[0]["message"], param=details[0]["param"], details=list(details)) from None


def _dataset(file: File) -> DatasetRef:
    return DatasetRef(file_id=file.id, key=file.key, format=file.format or "", rows=file.rows)


def _public_grader(grader: dict[str, Any]) -> dict[str, Any]:
    """Set fields only (a reference-free grader keeps its ``reference: null``); where a reward model lives in
    the store is not shown."""
    shown = {k: v for k, v in grader.items() if (v is not None or k == "reference") and k != "model_prefix"}
    if isinstance(shown.get("graders"), dict):
        shown["graders"] = {name: _public_grader(sub) for name, sub in shown["graders"].items()}
    return shown


def public_method(method: AnyMethod) -> dict[str, Any]:
    """The method as the job object shows it."""
    shown: dict[str, Any] = method.model_dump(mode="json")
    shown[method.type]["hyperparameters"] = public_hyperparameters(method)
    grader = shown[method.type].get("grader")
    if isinstance(grader, dict):
        shown[method.type]["grader"] = _public_grader(grader)
    return shown


def public_hyperparameters(method: AnyMethod) -> dict[str, Any]:
    return method.hyperparameters.model_dump(mode="json", exclude_none=True)


def request_fingerprint(req: JobCreate) -> str:
    """The request as the client meant it (fields it set, nulls dropped), hashed: what an idempotent retry repeats."""
    canonical = json.dumps(req.model_dump(mode="json", exclude_unset=True, exclude_none=True), sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replayed(job: Job, key: str, fingerprint: str) -> Job:
    """The job an ``Idempotency-Key`` already made, if this request is the same one (as Stripe answers)."""
    if job.idempotency_hash is not None and job.idempotency_hash != fingerprint:
        raise Conflict(f"The Idempotency-Key '{key[:64]}' was already used with a different request (it created "
                       f"{job.id}). Send the same body to get that job again, or use a new key for a new job.",
                       param="Idempotency-Key", code="idempotency_key_reused")
    return job


#: methods whose models are causal LMs (one can continue another's); a reward model is a classifier
_CAUSAL_LM_METHODS = frozenset({"supervised", "dpo", "reinforcement"})


def _continued_adapter(start: StartingPoint, requested: AdapterSpec | None, method: str) -> AdapterSpec | None:
    """A continued job trains the earlier job's adapter further: the same adapter, and a compatible method."""
    source = start.source_job
    if source is None:
        return requested
    source_method = (source.method or {}).get("type", "supervised")
    if (source_method in _CAUSAL_LM_METHODS) != (method in _CAUSAL_LM_METHODS):
        raise InvalidRequest(f"'{start.initial_weights.source if start.initial_weights else ''}' was trained by a "
                             f"'{source_method}' job; a '{method}' job cannot continue it (reward models and "
                             "language models have different heads)", param="model", code="model_not_available")
    adapter = AdapterSpec.model_validate(source.adapter or {})
    if requested is not None and requested != adapter:
        raise InvalidRequest(f"Continuing '{start.initial_weights.source if start.initial_weights else ''}' trains "
                             f"its {adapter.type} adapter (r={adapter.r}, alpha={adapter.alpha}) further: leave "
                             "'adapter' out or give that one", param="adapter")
    return adapter


def describe_request(repo: TenantRepo, store: ObjectStore, settings: ServiceSettings, req: JobCreate,
                     job_id: str) -> tuple[JobSpec, File, File | None]:
    """The JobSpec a request describes (every lookup and check of a create, nothing stored)."""
    start = starting_point(repo, store, req.model)
    training = repo.get_file(req.training_file, param="training_file")
    validation = repo.get_file(req.validation_file, param="validation_file") if req.validation_file else None

    method = _with_top_level_hyperparameters(req)
    _check_file_format(training, method.type, "training_file")
    if validation is not None:
        _check_file_format(validation, method.type, "validation_file")
    if isinstance(method, ReinforcementMethod):
        grader = _resolve_reward_models(repo, method.grader, "method.reinforcement.grader")
        method = method.model_copy(update={
            "reinforcement": method.reinforcement.model_copy(update={"grader": grader})})

    seed = req.seed if req.seed is not None else 42
    adapter = _continued_adapter(start, req.adapter, method.type) or AdapterSpec()
    _check_adapter(method, adapter)
    resources = req.resources or ResourceSpec()
    spec = JobSpec(
        job_id=job_id,
        tenant_id=repo.tenant_id,
        method=method,
        base_model=start.base_model,
        training_file=_dataset(training),
        validation_file=_dataset(validation) if validation else None,
        adapter=adapter,
        resources=resources,
        seed=seed,
        initial_weights=start.initial_weights,
        integrations=resolve_integrations(req.integrations or [], settings),
        storage_url=settings.storage.url,
        output_prefix=job_prefix(job_id),
        # the executor mints a fresh per-attempt token when it starts the trainer
        progress=ProgressChannel(url=settings.server.base_url, token=""),
    )
    _check_resolved(spec.method)
    return spec, training, validation


def create_job(repo: TenantRepo, store: ObjectStore, settings: ServiceSettings, req: JobCreate,
               idempotency_key: str | None, limits: Limits | None = None) -> Job:
    fingerprint = request_fingerprint(req)
    if idempotency_key:
        existing = repo.find_job_by_idempotency_key(idempotency_key)
        if existing is not None:
            return _replayed(existing, idempotency_key, fingerprint)
    check_budget(repo)
    job_id = new_id("ftjob")
    spec, training, validation = describe_request(repo, store, settings, req, job_id)
    evals = check_job_evals(repo, store, req.evals or [], req.model, settings.limits.max_eval_items,
                            JobBeingCreated(spec.method, validation, req.suffix or job_id))
    adapter, resources = spec.adapter, spec.resources
    job = Job(
        id=job_id,
        status=JobStatus.VALIDATING_FILES,
        model=req.model,
        method=public_method(spec.method),
        hyperparameters=public_hyperparameters(spec.method),
        adapter=adapter.model_dump(),
        resources=resources.model_dump(),
        training_file=training.id,
        validation_file=validation.id if validation else None,
        suffix=req.suffix,
        seed=spec.seed,
        job_metadata=req.metadata,
        spec=spec.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        idempotency_hash=fingerprint if idempotency_key else None,
        evals=evals,
        evals_state="pending" if evals else None,
        token_hash="",
        created_at=now(),
        tenant_id=repo.tenant_id,
    )
    # the quota check, the insert and the first event are one transaction (concurrent creates cannot overshoot,
    # and an acknowledged job always has its history)
    stored = admit_job(repo, limits or effective_limits(settings.limits, None), job,
                       default_gpus=quota_default_gpus(settings), created_message=f"Created fine-tuning job: {job_id}",
                       idempotency_key=idempotency_key)
    if stored is not job:  # a concurrent request with the same Idempotency-Key created it first
        assert idempotency_key is not None
        return _replayed(stored, idempotency_key, fingerprint)
    return stored


def quota_default_gpus(settings: ServiceSettings) -> int:
    """GPUs a job that asks for 0 counts against the GPU quota: the cluster's default per pod, none locally."""
    return settings.executor.kube_default_gpus if settings.executor.kind == "kubernetes" else 0


def estimate_job(repo: TenantRepo, store: ObjectStore, settings: ServiceSettings, req: JobCreate) -> dict[str, Any]:
    """What creating ``req`` would cost (every check of a create, nothing stored)."""
    spec, training, validation = describe_request(repo, store, settings, req, "ftjob-estimate")
    check_job_evals(repo, store, req.evals or [], req.model, settings.limits.max_eval_items,
                    JobBeingCreated(spec.method, validation, req.suffix or "estimate"))
    budget = repo.budget()
    shown = None
    if budget is not None:
        spent = spent_gpu_hours(repo.session, repo.tenant_id)
        shown = {"gpu_hours": budget.gpu_hours, "spent_gpu_hours": round(spent, 6),
                 "remaining_gpu_hours": round(max(0.0, budget.gpu_hours - spent), 6)}
    return estimate(spec, training, store, settings, shown)


def fine_tuned_model_name(job: Job) -> str:
    # a continued job is named after its base model, like OpenAI's (never ft:ft:...)
    base = str(job.spec.get("base_model") or job.model) if job.model.startswith("ft:") else job.model
    base = base.split("/")[-1]
    parts = ["ft", base, job.tenant_id, job.suffix or "", job.id.removeprefix("ftjob-")[:12]]
    return ":".join(parts)
