"""JobSpec: the resolved, immutable description of one training run.

The service writes it, the operator carries it in the FineTuneJob resource, the trainer reads it. Its
``method`` is the job request's method object (:mod:`tuneforge.contracts.methods`) with every hyperparameter
the service can decide resolved (:meth:`JobSpec._resolve`); the ones that depend on the device
(``gradient_checkpointing: "auto"``) are left for the trainer.

Version ``tuneforge.dev/v2``. Version 1 specs (flat ``hyperparameters``, ``method.algorithm/grader``) are still
read: they are converted on validation (:func:`upgrade_v1`), so jobs queued before an upgrade still run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge.contracts.hyperparameters import _Hyperparameters
from tuneforge.contracts.methods import Method

JOBSPEC_VERSION: Literal["tuneforge.dev/v2"] = "tuneforge.dev/v2"
JOBSPEC_V1 = "tuneforge.dev/v1"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetRef(_Frozen):
    file_id: str
    #: object-store key of the uploaded file, e.g. ``files/file-abc``
    key: str
    #: detected line format, e.g. ``chat``, ``prompt_completion``, ``preference``, ``prompt_only``
    format: str
    rows: int = Field(0, ge=0)


class _Strict(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class AdapterSpec(_Strict):
    """What is trained: a LoRA adapter (default), a LoRA adapter on a 4-bit base (QLoRA, CUDA only), or every
    weight."""

    type: Literal["lora", "qlora", "full"] = Field("lora", description="lora, qlora or full")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] | str = Field("all-linear", description="Modules that get an adapter")


class ResourceSpec(_Strict):
    """Hardware a job asks for (cluster mode schedules on it; the local executor uses the machine it has)."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs per node (0: the cluster's default)")
    gpu_type: str | None = Field(None, max_length=128, description="GPU product, e.g. NVIDIA-H100-80GB-HBM3")
    nodes: int = Field(1, ge=1, le=64, description="Nodes for multi-node training")
    cpu: str | None = Field(None, max_length=32, description="CPU request (Kubernetes quantity)")
    memory: str | None = Field(None, max_length=32, description="Memory request and limit (Kubernetes quantity)")


class ProgressChannel(_Frozen):
    #: base URL of the service's internal progress route, e.g. http://127.0.0.1:8000
    url: str
    #: per-job bearer token; the service stores only its hash
    token: str


class JobSpec(_Frozen):
    version: Literal["tuneforge.dev/v2"] = JOBSPEC_VERSION
    job_id: str = Field(..., min_length=1)
    tenant_id: str
    method: Method
    #: canonical base model id, or the object-store prefix of a published model
    base_model: str = Field(..., min_length=1)
    training_file: DatasetRef
    validation_file: DatasetRef | None = None
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    seed: int = 42
    #: object-store URL the trainer reads and writes (``file:///...`` or ``s3://bucket/prefix``)
    storage_url: str
    #: job prefix inside the store: ``jobs/{job_id}``
    output_prefix: str
    progress: ProgressChannel | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_v1(cls, data: Any) -> Any:
        # version 1 wrote the version and kept hyperparameters at the top; version 2 never does
        if isinstance(data, dict) and (data.get("version") == JOBSPEC_V1 or
                                       ("version" not in data and "hyperparameters" in data)):
            return upgrade_v1(data)
        return data

    @model_validator(mode="after")
    def _resolve(self) -> JobSpec:
        # the one place "auto" becomes a number: from the training file's size and the adapter type
        resolved = self.method.resolved(rows=self.training_file.rows, adapter=self.adapter.type)
        object.__setattr__(self, "method", resolved)  # frozen: set once, during validation
        return self

    @property
    def hyperparameters(self) -> _Hyperparameters:
        return self.method.hyperparameters

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return cls.model_validate_json(text)


# -- reading version 1 --

_V1_GRADER_KEYS = {
    "string_check": ("reference_field", "operation", "pattern", "reference_pattern"),
    "regex": ("reference_field", "pattern", "reference_pattern"),
    "reward_model": ("model_prefix",),
    "multi": ("graders", "calculate_output"),
}


def _v1_grader(grader: Any) -> Any:
    if not isinstance(grader, dict) or grader.get("type") not in _V1_GRADER_KEYS:
        return grader
    gtype = grader["type"]
    out: dict[str, Any] = {"type": gtype}
    for key in _V1_GRADER_KEYS[gtype]:
        if key in grader and (grader[key] is not None or key == "reference_field"):
            out[key] = grader[key]
    if gtype == "multi" and isinstance(out.get("graders"), dict):
        out["graders"] = {name: _v1_grader(sub) for name, sub in out["graders"].items()}
    if gtype == "reward_model":
        out["model"] = grader.get("model") or out.get("model_prefix") or "reward-model"
    return out


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 spec (flat hyperparameters, unused ones null) as version 2."""
    data = dict(data)
    data["version"] = JOBSPEC_VERSION
    method = dict(data.get("method") or {"type": "supervised"})
    mtype = method.get("type", "supervised")
    hp = {k: v for k, v in (data.pop("hyperparameters", None) or {}).items()
          if v is not None and not (k == "max_steps" and v == -1)}
    section: dict[str, Any] = {"hyperparameters": hp}
    if mtype == "reinforcement":
        section["algorithm"] = method.get("algorithm") or "grpo"
        section["grader"] = _v1_grader(method.get("grader"))
    data["method"] = {"type": mtype, mtype: section}
    return data

