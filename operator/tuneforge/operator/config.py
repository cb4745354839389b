"""The operator's settings: ``TUNEFORGE_OPERATOR_*`` environment variables (pydantic-settings), read once."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from tuneforge.contracts.servingengine import FETCHER_TOKEN_KEY
from tuneforge.contracts.settings import EnvSettings


class OperatorSettings(EnvSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_OPERATOR_", extra="ignore", frozen=True,
                                      populate_by_name=True)

    default_image: str = Field("tuneforge/trainer:latest", description="Trainer image when a FineTuneJob names none")
    image_pull_policy: str = Field("IfNotPresent", description="Trainer image pull policy")
    serving_enabled: bool = Field(True, description="Reconcile ServingEngines into vLLM Deployments (false: the "
                                  "ServingEngine handlers are not registered; nothing of serving is watched)")
    serving_image: str = Field("vllm/vllm-openai:latest", description="vLLM image of ServingEngines that name none "
                               "(their weight fetcher and adapter sidecar use the trainer image above)")
    fetcher_token_secret: str = Field(
        "", description="Secret holding the bearer token of the engine pods' adapter-fetcher sidecar (the api "
        "sends the same token); required for ServingEngines: without it they fail with reason NoFetcherToken")
    fetcher_token_key: str = Field(FETCHER_TOKEN_KEY, min_length=1, description="Key of that Secret")
    gpu_type_label: str = Field(
        "nvidia.com/gpu.product", description="Node label that spec.scheduling.gpuType selects on (NVIDIA GPU "
        "feature discovery sets nvidia.com/gpu.product)")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU")
    resync_seconds: float = Field(30.0, gt=0, description="Every unfinished FineTuneJob is reconciled this often "
                                  "even when nothing changed")
    backoff_limit: int = Field(2, ge=0, le=20, description="Retries of real failures (exit codes other than "
                               "0/65/75, OOM); preemptions are not counted")
    active_deadline_seconds: int = Field(7 * 24 * 3600, ge=1, description="Wall-clock limit of a job")
    ttl_seconds_after_finished: int = Field(24 * 3600, ge=0, description="Finished Jobs and pods are kept this long")
    termination_grace_seconds: int = Field(120, ge=0, description="SIGTERM to SIGKILL: the trainer saves a "
                                           "checkpoint in it and exits 75")
    run_as_user: int = Field(10001, ge=1, description="The trainer image's user")
    shm_size: str = Field("8Gi", description="Size limit of the shared-memory emptyDir at /dev/shm")
    storage_secret: str = Field("", description="Secret with object-store settings and credentials (environment "
                                "of the trainer) when a FineTuneJob names none")
    kubeconfig: str = Field("", validation_alias=AliasChoices("TUNEFORGE_OPERATOR_KUBECONFIG", "KUBECONFIG"),
                            description="kubeconfig file (empty: the in-cluster service account, else "
                            "~/.kube/config); KUBECONFIG works too")
