"""Request and response models of REST API v1 (OpenAI's shapes, plus additive extensions)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from tuneforge.contracts.integrations import IntegrationList
from tuneforge.contracts.jobspec import AdapterSpec, ResourceSpec
from tuneforge.contracts.methods import Method
from tuneforge.service.core.roles import Role

#: OpenAI's limits on ``metadata``: keys, key length, value length
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > METADATA_MAX_KEYS:
        raise ValueError(f"at most {METADATA_MAX_KEYS} keys are allowed, got {len(value)}")
    for key, item in value.items():
        if not key or len(key) > METADATA_MAX_KEY_CHARS:
            raise ValueError(f"key {key[:80]!r} must be 1 to {METADATA_MAX_KEY_CHARS} characters, got {len(key)}")
        if len(item) > METADATA_MAX_VALUE_CHARS:
            raise ValueError(f"the value of {key!r} must be at most {METADATA_MAX_VALUE_CHARS} characters, got "
                             f"{len(item)}")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_check_metadata), Field(
    description=f"Up to {METADATA_MAX_KEYS} string pairs (keys up to {METADATA_MAX_KEY_CHARS} characters, "
    f"values up to {METADATA_MAX_VALUE_CHARS})")]


class PiiFinding(BaseModel):
    line: int
    #: the JSON path of the string (``messages[1].content``); null for a line that is not JSON
    field: str | None = None
    kind: str
    #: character offsets in that string
    start: int
    end: int


class PiiReport(BaseModel):
    """The upload's PII scan: what ``pii_action`` was applied, how much was found and where (never the values)."""

    action: Literal["report", "reject", "redact"]
    total: int
    lines: int
    counts: dict[str, int]
    findings: list[PiiFinding]
    truncated: bool = False


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None
    # extensions
    format: str | None = None
    rows: int = 0
    tokens: int = 0
    sha256: str | None = None
    pii: PiiReport | None = None


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool = True


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    estimated_finish: int | None = None
    model: str
    fine_tuned_model: str | None = None
    organization_id: str
    status: str
    error: JobError | None = None
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    training_file: str
    validation_file: str | None = None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    seed: int
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    # extensions
    adapter: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] = Field(default_factory=dict)
    attempts: int = 0
    evals: list[JobEvalObject] | None = None


class EventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    step_number: int
    metrics: dict[str, Any]
    fine_tuning_job_id: str
    fine_tuned_model_checkpoint: str


class ArtifactObject(BaseModel):
    name: str
    bytes: int
    sha256: str
    url: str
    expires_at: int


class ExportObject(BaseModel):
    """An export of a tuned model (an extension): merged full weights or a GGUF file, with download links."""

    id: str
    object: Literal["model.export"] = "model.export"
    model: str
    format: Literal["safetensors", "gguf"]
    status: Literal["not_started", "running", "succeeded", "failed"]
    finished_at: int | None = None
    error: dict[str, str] | None = None
    files: list[ArtifactObject] = Field(default_factory=list)


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # extensions
    kind: Literal["base", "fine-tuned"] = "base"
    base_model: str | None = None
    fine_tuning_job_id: str | None = None
    #: the engine that answers completions on this model (None: it cannot generate, e.g. a reward model)
    engine: str | None = None


class ListObject(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


# -- requests --


#: evals a job may name to run on its base and tuned models when it succeeds
MAX_JOB_EVALS = 5


#: an entry that builds an eval from the job's validation file (``"validation_file"`` alone is short for it)
VALIDATION_FILE_EVAL = "validation_file"
#: validation rows a built eval uses unless the entry says otherwise
DEFAULT_VALIDATION_EVAL_ITEMS = 100


class JobEvalRequest(BaseModel):
    """An eval to run on the job's base model and on its tuned model once the job succeeds: one of the
    organization's evals (``eval_id``), or one built from the job's validation file (``type: validation_file``)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["eval", "validation_file"] = Field(
        "eval", description="eval: the eval named by eval_id; validation_file: an eval built from the job's "
        "validation file and its method's graders (the rows' prompts, their answers graded by ROUGE-L, or a "
        "reinforcement job's own grader)")
    eval_id: str | None = Field(None, min_length=1, max_length=64, description="An eval of this organization "
                                "(type eval)")
    data_source: dict[str, Any] | None = Field(
        None, description="Type eval: a `completions` run data source (source, input_messages, sampling_params) "
        "without `model`: the job sets it, once to the base model and once to the tuned one. Default: the data "
        "source of the eval's latest completions run")
    max_items: int | None = Field(None, ge=1, le=10_000, description="Type validation_file: use the first N "
                                  f"validation rows (default {DEFAULT_VALIDATION_EVAL_ITEMS}, at most the "
                                  "deployment's eval item limit)")
    sampling_params: dict[str, Any] | None = Field(
        None, description="Type validation_file: as a completions run's (default: temperature 0, "
        "max_completion_tokens 256, or a reinforcement job's max_completion_length)")


def _eval_id_alone(value: Any) -> Any:
    """An eval's id alone is short for ``{"eval_id": id}``, and ``"validation_file"`` for ``{"type":
    "validation_file"}`` (one object model: errors name its fields)."""
    if value == VALIDATION_FILE_EVAL:
        return {"type": VALIDATION_FILE_EVAL}
    return {"eval_id": value} if isinstance(value, str) else value


JobEval = Annotated[JobEvalRequest, BeforeValidator(_eval_id_alone, json_schema_input_type=str | JobEvalRequest)]


class JobEvalObject(BaseModel):
    #: ``eval``: an eval the job named; ``validation_file``: built from its validation file when it succeeds
    type: Literal["eval", "validation_file"] = "eval"
    #: the eval (for a built one: once the job has succeeded and it was created)
    eval_id: str | None = None
    #: the two runs, once the job has succeeded and they were created
    base_run_id: str | None = None
    tuned_run_id: str | None = None
    #: why the runs could not be created (the eval was deleted meanwhile, ...)
    error: str | None = None


class JobCreate(BaseModel):
    """OpenAI's job-create body; ``method`` is the contract's discriminated union (every field typed, so the
    schema shows them and a job the trainer would refuse is refused here)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1, max_length=512, description="A base model id, an ft: model of this "
                       "organization, or one of its checkpoints' fine_tuned_model_checkpoint (training continues "
                       "from its weights)")
    training_file: str = Field(..., min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    hyperparameters: dict[str, Any] | None = Field(
        None, description="Deprecated by OpenAI in favour of method.<type>.hyperparameters; merged into them "
        "(the method's values win)")
    method: Method | None = Field(None, description="The fine-tuning method (default: supervised)")
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$",
                               description="Up to 64 letters, digits, '.', '_' or '-', added to the model's name")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = None
    integrations: IntegrationList | None = Field(
        None, description="W&B ({type: wandb, wandb: {project, name, entity, tags}}) as OpenAI defines it, and "
        "MLflow ({type: mlflow, mlflow: {experiment_name, run_name, tracking_uri, tags}}); credentials come from "
        "the deployment, never the request")
    # extensions
    adapter: AdapterSpec | None = None
    resources: ResourceSpec | None = None
    evals: list[JobEval] | None = Field(
        None, max_length=MAX_JOB_EVALS, description="Evals to run on the base and the tuned model when the job "
        "succeeds (an eval id, {eval_id, data_source}, or 'validation_file' / {type: validation_file, max_items, "
        "sampling_params}: an eval built from the validation file and the method's graders); the comparison is at GET "
        "/v1/fine_tuning/jobs/{id}/eval_report and on the job's page")


# -- webhooks (tuneforge's endpoint management; the events and their signing are OpenAI's / Standard Webhooks) --


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(..., min_length=1, max_length=2048, description="Where events are POSTed (http or https)")
    events: list[str] | None = Field(None, max_length=16, description="Event types to send (default: "
                                     "fine_tuning.job.succeeded, .failed and .cancelled)")
    description: str = Field("", max_length=512)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, min_length=1, max_length=2048)
    events: list[str] | None = Field(None, max_length=16)
    description: str | None = Field(None, max_length=512)
    enabled: bool | None = None


class WebhookObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: int
    #: the signing secret: in the answer to the create only (never stored in plain text)
    secret: str | None = None


class WebhookAttempt(BaseModel):
    attempt: int
    at: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: float


class WebhookDeliveryObject(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint_id: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    status: Literal["pending", "succeeded", "failed"]
    attempts: list[WebhookAttempt]
    next_attempt_at: int | None = None
    created_at: int
    finished_at: int | None = None


class BudgetObject(BaseModel):
    object: Literal["organization.budget"] = "organization.budget"
    organization_id: str
    gpu_hours: float | None = Field(None, description="The budget (none: unlimited); an admin sets it")
    spent_gpu_hours: float
    exhausted: bool


# -- organizations, API keys, audit log (the admin API) --

ORG_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class OrganizationLimits(BaseModel):
    """An organization's limits. In a request, a field left out keeps its value and ``null`` returns it to the
    service's default; in a response every field is the value in force."""

    # strict: a limit is a number (lax mode read ``false`` as 0, i.e. "no limit")
    model_config = ConfigDict(extra="forbid", strict=True)
    max_active_jobs: int | None = Field(None, ge=1, le=1_000_000, description="Jobs validating, queued or running")
    max_queued_jobs: int | None = Field(None, ge=0, le=1_000_000,
                                        description="Jobs validating or queued (0: only max_active_jobs)")
    max_gpus: int | None = Field(None, ge=0, le=1_000_000, description="GPUs requested by active jobs (0: no limit)")
    max_stored_bytes: int | None = Field(None, ge=0, le=1 << 60, description="Bytes of files (0: no limit)")
    max_upload_bytes: int | None = Field(None, ge=1, le=1 << 50, description="Largest file")
    requests_per_minute: int | None = Field(None, ge=0, le=10_000_000,
                                            description="Requests per minute per API key (0: no limit)")


class OrganizationUsage(BaseModel):
    active_jobs: int
    queued_jobs: int
    gpus: int
    stored_bytes: int


class OrganizationObject(BaseModel):
    id: str
    object: Literal["organization"] = "organization"
    name: str
    created_at: int
    limits: OrganizationLimits
    usage: OrganizationUsage | None = None


class OrganizationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ORG_ID_PATTERN, description="lowercase letters, digits, '-' and '_' (at most 64)")
    name: str = Field("", max_length=256)
    limits: OrganizationLimits | None = None


class OrganizationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=256)
    limits: OrganizationLimits | None = None


class ApiKeyObject(BaseModel):
    id: str
    object: Literal["organization.api_key"] = "organization.api_key"
    name: str
    role: Role
    redacted_value: str
    #: the secret itself: in the response that creates the key, never again
    value: str | None = None
    organization_id: str
    created_at: int
    created_by: str | None = None
    last_used_at: int | None = None
    revoked_at: int | None = None


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=128)
    role: Role = Role.MEMBER


class ApiKeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=128)
    role: Role | None = None


class AuditActorKey(BaseModel):
    id: str | None = None
    redacted_value: str | None = None
    organization_id: str | None = None


class AuditActor(BaseModel):
    type: Literal["api_key", "operator"]
    api_key: AuditActorKey | None = None


class AuditLogObject(BaseModel):
    id: str
    object: Literal["organization.audit_log"] = "organization.audit_log"
    type: str
    effective_at: int
    organization_id: str
    actor: AuditActor
    resource_id: str | None = None
    details: dict[str, Any] | None = None
    request_id: str | None = None
