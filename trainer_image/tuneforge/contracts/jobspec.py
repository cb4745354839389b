"""JobSpec: the resolved, immutable description of one training run.

The service writes it, the operator carries it in the FineTuneJob resource, the trainer reads it.
Every "auto" hyperparameter is resolved before a JobSpec exists, except the few that depend on the device the
trainer lands on: those are None here and the trainer resolves them (see ``Hyperparameters``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.contracts.ppo import PPOHyperparameters

JOBSPEC_VERSION: Literal["tuneforge.dev/v1"] = "tuneforge.dev/v1"

MethodType = Literal["supervised", "dpo", "reward_model", "reinforcement"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetRef(_Frozen):
    file_id: str
    #: object-store key of the uploaded file, e.g. ``files/file-abc``
    key: str
    #: detected line format, e.g. ``chat``, ``prompt_completion``, ``preference``, ``prompt_only``
    format: str
    rows: int = 0


class AdapterSpec(_Frozen):
    type: Literal["lora", "qlora", "full"] = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


class ResourceSpec(_Frozen):
    gpus: int = 0
    gpu_type: str | None = None
    nodes: int = 1
    cpu: str | None = None
    memory: str | None = None


class Hyperparameters(_Frozen):
    """Resolved hyperparameters; method-specific ones are None when they do not apply."""

    n_epochs: int
    batch_size: int
    learning_rate: float
    learning_rate_multiplier: float = 1.0
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    packing: bool = False
    #: None = "auto": the trainer decides per device (on for CUDA, where memory limits the batch; off on the CPU,
    #: where memory is plentiful and recomputation costs ~30% speed); true/false force it. Older specs carry a bool.
    gradient_checkpointing: bool | None = None
    max_steps: int = -1
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    eval_every_steps: int = 0
    # preference methods
    beta: float | None = None
    loss_type: str | None = None
    # reinforcement
    kl_coef: float | None = None
    num_generations: int | None = None
    max_completion_length: int | None = None
    temperature: float | None = None
    #: algorithm ppo: its own settings (None: the defaults, with the reinforcement fields above filling in)
    ppo: PPOHyperparameters | None = None


class GraderSpec(_Frozen):
    """How a ``reinforcement`` job scores a completion (built into reward functions by the trainer).

    - ``string_check``: the completion (or the last ``pattern`` match in it) equals / contains the reference;
    - ``regex`` with a reference: the last ``pattern`` match (group 1 if any) equals the reference;
    - ``regex`` with ``reference_field=None``: reference-free, 1.0 when ``pattern`` is found in the completion
      (a format check such as ``####\\s*-?[\\d,]*\\.?\\d+\\s*$``), else 0.0;
    - ``reward_model``: a ``reward_model`` job's score;
    - ``multi``: the named sub-graders in ``graders`` (string_check / regex) combined by the arithmetic
      formula ``calculate_output`` (see :mod:`tuneforge.contracts.grader_formula`), e.g.
      ``0.2 * format + 0.8 * correct``.
    """

    type: Literal["string_check", "regex", "reward_model", "multi"]
    #: name of the field in each data row that holds the reference answer; None: a reference-free ``regex``
    reference_field: str | None = "answer"
    #: for string_check: ``eq`` (exact after normalisation) or ``contains``
    operation: Literal["eq", "contains"] = "eq"
    #: for regex: applied to the model output, group 1 (or the whole match) is compared with the reference
    pattern: str | None = None
    #: regex applied to the reference (e.g. GSM8K ``####\\s*(.+)``)
    reference_pattern: str | None = None
    #: for reward_model: the object-store prefix of a succeeded reward_model job's model
    model_prefix: str | None = None
    #: for multi: sub-graders by name (the names are the variables of ``calculate_output``)
    graders: dict[str, GraderSpec] | None = None
    #: for multi: the formula combining the sub-grader scores
    calculate_output: str | None = None


GraderSpec.model_rebuild()


class MethodSpec(_Frozen):
    type: MethodType
    algorithm: Literal["grpo", "rloo", "ppo"] | None = None
    grader: GraderSpec | None = None


class ProgressChannel(_Frozen):
    #: base URL of the service's internal progress route, e.g. http://127.0.0.1:8000
    url: str
    #: per-job bearer token; the service stores only its hash
    token: str


class JobSpec(_Frozen):
    version: Literal["tuneforge.dev/v1"] = "tuneforge.dev/v1"
    job_id: str
    tenant_id: str
    method: MethodSpec
    #: canonical base model id or an object-store prefix / local path / hub id
    base_model: str
    training_file: DatasetRef
    validation_file: DatasetRef | None = None
    hyperparameters: Hyperparameters
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    seed: int = 42
    #: object-store URL the trainer reads and writes (``file:///...`` or ``s3://bucket/prefix``)
    storage_url: str
    #: job prefix inside the store: ``jobs/{job_id}``
    output_prefix: str
    progress: ProgressChannel | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return cls.model_validate_json(text)
