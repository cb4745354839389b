"""Request and response models of REST API v1 (OpenAI's shapes, plus additive extensions)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.contracts.jobspec import AdapterSpec, ResourceSpec
from tuneforge.contracts.methods import Method


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
