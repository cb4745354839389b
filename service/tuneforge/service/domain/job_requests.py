"""Turn a job-create request into a stored job and its immutable JobSpec."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tuneforge.contracts.catalog import BASE_MODELS, canonical_model_id
from tuneforge.contracts.datasets import METHOD_FORMATS
from tuneforge.contracts.jobspec import (
    AdapterSpec,
    DatasetRef,
    GraderSpec,
    JobSpec,
    MethodSpec,
    ProgressChannel,
    ResourceSpec,
)
from tuneforge.service.core.config import Settings
from tuneforge.service.core.errors import APIError, TooManyRequests
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import File, Job, now
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain import hyperparams
from tuneforge.service.domain.lifecycle import add_event
from tuneforge.service.schemas import JobCreate

METHOD_TYPES = ("supervised", "dpo", "reward_model", "reinforcement")
FORMAT_NAMES = {
    "chat": "chat ('messages')",
    "prompt_completion": "prompt/completion",
    "preference": "preference (input/preferred_output/non_preferred_output or prompt/chosen/rejected)",
    "prompt_only": "prompt-only (reinforcement)",
}


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(message, param=param, code=code)


def resolve_base_model(repo: TenantRepo, model: str) -> str:
    """Catalogue ids, absolute local directories (embedded mode), or hub ids already cached."""
    canonical = canonical_model_id(model)
    if canonical in BASE_MODELS:
        return canonical
    if model.startswith("ft:"):
        raise _bad("Continuing training from a fine-tuned model is not supported yet; use its base model.",
                   "model", "model_not_available")
    if model.startswith("/"):
        if (Path(model) / "config.json").is_file():
            return model
        raise _bad(f"Model directory '{model}' does not exist or has no config.json.", "model",
                   "model_not_available")
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", model):
        return model  # a hub id: the trainer loads it if it is cached or the hub is reachable
    raise _bad(f"The model '{model}' does not exist. Base models: {', '.join(BASE_MODELS)}.", "model",
               "model_not_available")


def _method_section(method: dict[str, Any], mtype: str) -> dict[str, Any]:
    section = method.get(mtype) or {}
    if not isinstance(section, dict):
        raise _bad(f"'method.{mtype}' must be an object", f"method.{mtype}")
    return section


def _grader(repo: TenantRepo, raw: Any) -> GraderSpec:
    if not isinstance(raw, dict):
        raise _bad("reinforcement needs a 'grader' object (string_check, regex or reward_model)",
                   "method.reinforcement.grader")
    gtype = raw.get("type")
    fields: dict[str, Any] = {"type": gtype}
    ref = raw.get("reference")
    if isinstance(ref, str):
        # OpenAI template syntax: "{{item.answer}}"
        match = re.fullmatch(r"\{\{\s*item\.(\w+)\s*\}\}", ref.strip())
        fields["reference_field"] = match.group(1) if match else ref
    if "reference_field" in raw:
        fields["reference_field"] = raw["reference_field"]
    for key in ("operation", "pattern", "reference_pattern"):
        if key in raw:
            fields[key] = raw[key]
    if gtype == "reward_model":
        model = raw.get("model")
        job = repo.find_model_job(model) if isinstance(model, str) else None
        if job is None or (job.method or {}).get("type") != "reward_model":
            raise _bad(f"'grader.model' must be the fine_tuned_model of a succeeded reward_model job, got {model!r}",
                       "method.reinforcement.grader.model", "model_not_available")
        fields["model_prefix"] = f"jobs/{job.id}/model"
    if gtype == "regex":
        pattern = raw.get("pattern")
        if not isinstance(pattern, str):
            raise _bad("a regex grader needs 'pattern'", "method.reinforcement.grader.pattern")
        try:
            re.compile(pattern)
            if raw.get("reference_pattern"):
                re.compile(raw["reference_pattern"])
        except re.error as exc:
            raise _bad(f"invalid regular expression: {exc}", "method.reinforcement.grader.pattern") from None
    try:
        return GraderSpec(**fields)
    except ValueError as exc:
        raise _bad(f"invalid grader: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}",
                   "method.reinforcement.grader") from None


def _check_file_format(file: File, method: str, param: str) -> None:
    allowed = METHOD_FORMATS[method]
    if file.format not in allowed:
        want = " or ".join(FORMAT_NAMES[f] for f in allowed)
        raise _bad(
            f"File '{file.id}' ({file.filename}) is in {FORMAT_NAMES.get(file.format or '', file.format)} format, "
            f"but method '{method}' needs {want} data.",
            param, "invalid_file_format",
        )


def create_job(repo: TenantRepo, settings: Settings, req: JobCreate, idempotency_key: str | None) -> Job:
    if idempotency_key:
        existing = repo.find_job_by_idempotency_key(idempotency_key)
        if existing is not None:
            return existing
    if repo.count_active_jobs() >= settings.limits.max_active_jobs_per_tenant:
        raise TooManyRequests(
            f"Quota exceeded: at most {settings.limits.max_active_jobs_per_tenant} active jobs per organization.",
            code="quota_exceeded",
        )
    base_model = resolve_base_model(repo, req.model)
    training = repo.get_file(req.training_file, param="training_file")
    validation = repo.get_file(req.validation_file, param="validation_file") if req.validation_file else None

    method = dict(req.method or {"type": "supervised"})
    mtype = method.get("type", "supervised")
    if mtype not in METHOD_TYPES:
        raise _bad(f"Unknown method type {mtype!r}; expected one of {', '.join(METHOD_TYPES)}.", "method.type")
    section = _method_section(method, mtype)
    method_hp = section.get("hyperparameters") or {}
    if not isinstance(method_hp, dict):
        raise _bad(f"'method.{mtype}.hyperparameters' must be an object", f"method.{mtype}.hyperparameters")
    raw_hp = dict(req.hyperparameters or {})
    raw_hp.update(method_hp)
    _check_file_format(training, mtype, "training_file")
    if validation is not None:
        _check_file_format(validation, mtype, "validation_file")

    adapter = AdapterSpec(**(req.adapter.model_dump() if req.adapter else {}))
    try:
        hp = hyperparams.resolve(raw_hp, method=mtype, adapter=adapter.type, rows=training.rows,
                                 prefix=f"method.{mtype}.hyperparameters")
    except hyperparams.HyperparameterError as exc:
        # point the param at where the request put the value (top-level or under the method)
        name = exc.param.rsplit(".", 1)[-1]
        top_level_only = name in (req.hyperparameters or {}) and name not in method_hp
        raise _bad(str(exc), f"hyperparameters.{name}" if top_level_only else exc.param) from None

    algorithm = None
    grader = None
    if mtype == "reinforcement":
        algorithm = section.get("algorithm", "grpo")
        if algorithm not in ("grpo", "rloo", "ppo"):
            raise _bad(f"Unknown algorithm {algorithm!r}; expected grpo, rloo or ppo.",
                       "method.reinforcement.algorithm")
        grader = _grader(repo, section.get("grader"))

    job_id = new_id("ftjob")
    seed = req.seed if req.seed is not None else 42
    resources = ResourceSpec(**(req.resources.model_dump() if req.resources else {}))
    spec = JobSpec(
        job_id=job_id,
        tenant_id=repo.tenant_id,
        method=MethodSpec(type=mtype, algorithm=algorithm, grader=grader),
        base_model=base_model,
        training_file=DatasetRef(file_id=training.id, key=training.key, format=training.format or "",
                                 rows=training.rows),
        validation_file=DatasetRef(file_id=validation.id, key=validation.key, format=validation.format or "",
                                   rows=validation.rows) if validation else None,
        hyperparameters=hp,
        adapter=adapter,
        resources=resources,
        seed=seed,
        storage_url=settings.storage.url,
        output_prefix=f"jobs/{job_id}",
        # the executor mints a fresh per-attempt token when it starts the trainer
        progress=ProgressChannel(url=settings.server.base_url, token=""),
    )
    public_hp = hyperparams.public_hyperparameters(hp)
    public_method: dict[str, Any] = {"type": mtype, mtype: {"hyperparameters": public_hp}}
    if algorithm:
        public_method[mtype]["algorithm"] = algorithm
    if grader:
        public_method[mtype]["grader"] = grader.model_dump(exclude_none=True)
    stored_spec = spec.model_dump(mode="json")
    job = Job(
        id=job_id,
        status="validating_files",
        model=req.model,
        method=public_method,
        hyperparameters=public_hp,
        adapter=adapter.model_dump(),
        resources=resources.model_dump(),
        training_file=training.id,
        validation_file=validation.id if validation else None,
        suffix=req.suffix,
        seed=seed,
        job_metadata=req.metadata,
        spec=stored_spec,
        idempotency_key=idempotency_key,
        token_hash="",
        created_at=now(),
    )
    repo.add_job(job)
    add_event(repo.session, job, f"Created fine-tuning job: {job_id}", data={"status": "validating_files"})
    return job


def fine_tuned_model_name(job: Job) -> str:
    base = Path(job.model).name if job.model.startswith("/") else job.model.split("/")[-1]
    parts = ["ft", base, job.tenant_id]
    parts.append(job.suffix or "")
    parts.append(job.id.removeprefix("ftjob-")[:12])
    return ":".join(parts)
