"""Turn a job-create request into a stored job and its immutable JobSpec."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneforge.contracts.catalog import BASE_MODELS, canonical_model_id
from tuneforge.contracts.datasets import METHOD_FORMATS
from tuneforge.contracts.grader_formula import MAX_SUB_GRADERS, FormulaError, check_grader_name, parse_formula
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


GRADER = "method.reinforcement.grader"
GRADER_TYPES = ("string_check", "regex", "multi", "reward_model")
SUB_GRADER_TYPES = ("string_check", "regex")


def _reference_field(raw: dict[str, Any], param: str) -> tuple[bool, str | None]:
    """(given, field) from OpenAI's ``reference: "{{item.answer}}"`` or ``reference_field``; null: no reference."""
    given, field = False, None
    for key in ("reference", "reference_field"):
        if key not in raw:
            continue
        value = raw[key]
        if value is not None and not isinstance(value, str):
            raise _bad(f"'{key}' must be a string such as '{{{{item.answer}}}}' or null", f"{param}.{key}")
        if isinstance(value, str):
            match = re.fullmatch(r"\{\{\s*item\.(\w+)\s*\}\}", value.strip())
            value = match.group(1) if match else value
        given, field = True, value
    return given, field


def _check_regex(raw: dict[str, Any], key: str, param: str) -> None:
    value = raw.get(key)
    if value is None:
        return
    if not isinstance(value, str):
        raise _bad(f"'{key}' must be a regular expression string", f"{param}.{key}")
    try:
        re.compile(value)
    except re.error as exc:
        raise _bad(f"invalid regular expression: {exc}", f"{param}.{key}") from None


def _multi_grader(repo: TenantRepo, raw: dict[str, Any], param: str) -> GraderSpec:
    subs = raw.get("graders")
    if not isinstance(subs, dict) or not subs:
        raise _bad("a multi grader needs 'graders': an object of named sub-graders, e.g. "
                   "{\"format\": {...}, \"correct\": {...}}", f"{param}.graders")
    if len(subs) > MAX_SUB_GRADERS:
        raise _bad(f"a multi grader has at most {MAX_SUB_GRADERS} sub-graders, got {len(subs)}", f"{param}.graders")
    graders: dict[str, GraderSpec] = {}
    for name, sub in subs.items():
        problem = check_grader_name(name)
        if problem:
            raise _bad(problem, f"{param}.graders.{name}")
        graders[name] = _grader(repo, sub, f"{param}.graders.{name}", nested=True)
    formula = raw.get("calculate_output")
    try:
        parse_formula(formula, graders)
    except FormulaError as exc:
        raise _bad(str(exc), f"{param}.calculate_output") from None
    return GraderSpec(type="multi", graders=graders, calculate_output=formula)


def _grader(repo: TenantRepo, raw: Any, param: str = GRADER, nested: bool = False) -> GraderSpec:
    """The request's grader as a GraderSpec; every problem is a 400 whose ``param`` names the field."""
    allowed = SUB_GRADER_TYPES if nested else GRADER_TYPES
    if not isinstance(raw, dict):
        what = "a sub-grader" if nested else "reinforcement needs a 'grader'"
        raise _bad(f"{what} must be an object ({', '.join(allowed)})", param)
    gtype = raw.get("type")
    if gtype not in allowed:
        if nested and gtype in GRADER_TYPES:
            raise _bad(f"a multi grader's sub-graders must be {' or '.join(allowed)}, not {gtype}", f"{param}.type")
        raise _bad(f"unknown grader type {gtype!r}; expected one of {', '.join(allowed)}", f"{param}.type")
    if gtype == "multi":
        return _multi_grader(repo, raw, param)
    fields: dict[str, Any] = {"type": gtype}
    given, ref_field = _reference_field(raw, param)
    if given:
        fields["reference_field"] = ref_field
    for key in ("operation", "pattern", "reference_pattern"):
        if key in raw:
            fields[key] = raw[key]
    if gtype == "reward_model":
        model = raw.get("model")
        job = repo.find_model_job(model) if isinstance(model, str) else None
        if job is None or (job.method or {}).get("type") != "reward_model":
            raise _bad(f"'grader.model' must be the fine_tuned_model of a succeeded reward_model job, got {model!r}",
                       f"{param}.model", "model_not_available")
        fields["model_prefix"] = f"jobs/{job.id}/model"
    if gtype == "regex" and not isinstance(raw.get("pattern"), str):
        raise _bad("a regex grader needs 'pattern'", f"{param}.pattern")
    _check_regex(raw, "pattern", param)
    _check_regex(raw, "reference_pattern", param)
    if given and ref_field is None:
        key = "reference" if "reference" in raw else "reference_field"
        if gtype != "regex":
            raise _bad(f"a {gtype} grader compares with a reference: '{key}' cannot be null "
                       "(only a regex grader can check a pattern without one)", f"{param}.{key}")
        if raw.get("reference_pattern") is not None:
            raise _bad("a regex grader without a reference cannot have a 'reference_pattern'",
                       f"{param}.reference_pattern")
    try:
        return GraderSpec(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise _bad(f"invalid grader: {first['msg']}", f"{param}.{where}" if where else param) from None


def _public_grader(grader: GraderSpec) -> dict[str, Any]:
    """The grader as the job object shows it: set fields only, a reference-free regex keeps its null."""
    if grader.type == "multi":
        subs = {name: _public_grader(sub) for name, sub in (grader.graders or {}).items()}
        return {"type": "multi", "graders": subs, "calculate_output": grader.calculate_output}
    public = grader.model_dump(exclude_none=True, exclude={"graders", "calculate_output"})
    if grader.reference_field is None:
        public["reference_field"] = None
    return public


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
        public_method[mtype]["grader"] = _public_grader(grader)
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
