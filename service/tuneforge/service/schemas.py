"""Request and response models of REST API v1 (OpenAI's shapes, plus additive extensions)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.contracts.jobspec import AdapterSpec, ResourceSpec
from tuneforge.contracts.methods import Method
from tuneforge.service.core.roles import Role


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
    integrations: list[Any] | None = None
    # extensions
    adapter: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] = Field(default_factory=dict)
    attempts: int = 0


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


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # extensions
    kind: Literal["base", "fine-tuned"] = "base"
    base_model: str | None = None
    fine_tuning_job_id: str | None = None


class ListObject(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


# -- requests --


class JobCreate(BaseModel):
    """OpenAI's job-create body; ``method`` is the contract's discriminated union (every field typed, so the
    schema shows them and a job the trainer would refuse is refused here)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1, max_length=256, description="A base model id or an ft: model")
    training_file: str = Field(..., min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    hyperparameters: dict[str, Any] | None = Field(
        None, description="Deprecated by OpenAI in favour of method.<type>.hyperparameters; merged into them "
        "(the method's values win)")
    method: Method | None = Field(None, description="The fine-tuning method (default: supervised)")
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    # extensions
    adapter: AdapterSpec | None = None
    resources: ResourceSpec | None = None


# -- organizations, API keys, audit log (the admin API) --

ORG_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class OrganizationLimits(BaseModel):
    """An organization's limits. In a request, a field left out keeps its value and ``null`` returns it to the
    service's default; in a response every field is the value in force."""

    model_config = ConfigDict(extra="forbid")
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
