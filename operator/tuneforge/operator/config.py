"""Operator-wide settings, read once from the environment (``TUNEFORGE_OPERATOR_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class OperatorConfig:
    #: trainer image when a FineTuneJob names none
    default_image: str = "tuneforge/trainer:latest"
    image_pull_policy: str = "IfNotPresent"
    #: node label that ``spec.scheduling.gpuType`` selects on (NVIDIA GPU feature discovery sets
    #: ``nvidia.com/gpu.product``; a cluster may label its pools with its own key instead)
    gpu_type_label: str = "nvidia.com/gpu.product"
    gpu_resource: str = "nvidia.com/gpu"
    #: how often every unfinished FineTuneJob is reconciled even when nothing changed (timer handler)
    resync_seconds: float = 30.0
    #: retries of real failures (exit codes other than 0/65/75, OOM); preemptions are not counted
    backoff_limit: int = 2
    active_deadline_seconds: int = 7 * 24 * 3600
    ttl_seconds_after_finished: int = 24 * 3600
    #: SIGTERM -> SIGKILL window: the trainer saves a checkpoint in it and exits 75
    termination_grace_seconds: int = 120
    #: the trainer image's user (trainer_image/Dockerfile)
    run_as_user: int = 10001
    #: size limit of the shared-memory emptyDir at /dev/shm (torch data loaders, NCCL)
    shm_size: str = "8Gi"
    #: Secret with object-store settings/credentials (env vars) when a FineTuneJob names none
    storage_secret: str = ""

    @classmethod
    def from_env(cls) -> OperatorConfig:
        d = cls()
        return cls(
            default_image=_env("TUNEFORGE_OPERATOR_DEFAULT_IMAGE", d.default_image),
            image_pull_policy=_env("TUNEFORGE_OPERATOR_IMAGE_PULL_POLICY", d.image_pull_policy),
            gpu_type_label=_env("TUNEFORGE_OPERATOR_GPU_TYPE_LABEL", d.gpu_type_label),
            gpu_resource=_env("TUNEFORGE_OPERATOR_GPU_RESOURCE", d.gpu_resource),
            resync_seconds=float(_env("TUNEFORGE_OPERATOR_RESYNC_SECONDS", str(d.resync_seconds))),
            backoff_limit=int(_env("TUNEFORGE_OPERATOR_BACKOFF_LIMIT", str(d.backoff_limit))),
            active_deadline_seconds=int(
                _env("TUNEFORGE_OPERATOR_ACTIVE_DEADLINE_SECONDS", str(d.active_deadline_seconds))
            ),
            ttl_seconds_after_finished=int(
                _env("TUNEFORGE_OPERATOR_TTL_SECONDS_AFTER_FINISHED", str(d.ttl_seconds_after_finished))
            ),
            termination_grace_seconds=int(
                _env("TUNEFORGE_OPERATOR_TERMINATION_GRACE_SECONDS", str(d.termination_grace_seconds))
            ),
            run_as_user=int(_env("TUNEFORGE_OPERATOR_RUN_AS_USER", str(d.run_as_user))),
            shm_size=_env("TUNEFORGE_OPERATOR_SHM_SIZE", d.shm_size),
            storage_secret=_env("TUNEFORGE_OPERATOR_STORAGE_SECRET", d.storage_secret),
        )
