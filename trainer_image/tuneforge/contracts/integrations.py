"""``integrations``: where a job's metrics, hyperparameters and tuned model are logged besides tuneforge.

OpenAI's shape for Weights & Biases (``{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}``) and,
as an extension, MLflow (``{"type": "mlflow", "mlflow": {"experiment_name", "run_name", "tracking_uri",
"tags"}}``). The request never carries credentials (``extra="forbid"`` refuses an ``api_key``): the trainer
gets them from its environment (``WANDB_API_KEY``, ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/
``_PASSWORD``), set by whoever deploys it, so a job object or a JobSpec never holds one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: OpenAI's limits: at most this many integrations per job, and of tags per W&B run
MAX_INTEGRATIONS = 5
MAX_TAGS = 50
_NAME = r"^[^\x00-\x1f]*$"  # printable: a name ends up in a tracker's UI and URLs


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WandbSettings(_Frozen):
    project: str = Field(..., min_length=1, max_length=128, pattern=_NAME, description="W&B project")
    name: str | None = Field(None, min_length=1, max_length=128, pattern=_NAME,
                             description="Run name (default: the job id)")
    entity: str | None = Field(None, min_length=1, max_length=128, pattern=_NAME,
                               description="W&B team or user (default: the API key's default entity)")
    tags: list[Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME)]] | None = Field(
        None, max_length=MAX_TAGS, description="Tags of the run (the job id is always added)")


class WandbIntegration(_Frozen):
    type: Literal["wandb"] = "wandb"
    wandb: WandbSettings


class MlflowSettings(_Frozen):
    experiment_name: str = Field(..., min_length=1, max_length=256, pattern=_NAME,
                                 description="MLflow experiment (created when missing)")
    run_name: str | None = Field(None, min_length=1, max_length=256, pattern=_NAME,
                                 description="Run name (default: the job id)")
    tracking_uri: str | None = Field(None, max_length=512, description="Tracking server (default: the service's "
                                     "TUNEFORGE_MLFLOW_TRACKING_URI; others must be in its allowed list)")
    tags: dict[Annotated[str, Field(min_length=1, max_length=250)], Annotated[str, Field(max_length=5000)]] | None \
        = Field(None, max_length=MAX_TAGS, description="Tags of the run")


class MlflowIntegration(_Frozen):
    type: Literal["mlflow"] = "mlflow"
    mlflow: MlflowSettings


Integration = Annotated[WandbIntegration | MlflowIntegration, Field(discriminator="type")]
IntegrationList = Annotated[list[Integration], Field(max_length=MAX_INTEGRATIONS)]
