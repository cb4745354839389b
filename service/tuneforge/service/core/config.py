"""Settings read from the environment into nested dataclasses (kopf/Kubeflow style)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _env_json(name: str, kind: type[dict[str, Any]] | type[list[Any]]) -> Any:
    """A JSON object or array from the environment (the Helm chart renders these); empty: an empty one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc}): {raw[:200]!r}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a JSON {'object' if kind is dict else 'array'}, got: {raw[:200]!r}")
    return value


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    #: base URL the trainer uses to reach the progress route; derived from host/port when empty
    public_url: str = ""

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


@dataclass
class AuthSettings:
    #: an API key the embedded server accepts for the default tenant (stored hashed, never logged)
    api_key: str | None = None
    #: where the embedded server writes the key it creates on first start
    key_file: Path = Path()
    default_tenant: str = "default"


@dataclass
class StorageSettings:
    url: str = ""
    #: lifetime of artifact / file-content download links
    link_expiry_seconds: int = 900


@dataclass
class ExecutorSettings:
    kind: str = "local"
    max_concurrent_jobs: int = 1
    trainer_python: str = ""
    #: seconds between SIGTERM and SIGKILL when a job is cancelled
    cancel_grace_seconds: float = 10.0
    #: how many times a job interrupted by a restart or preemption is started again
    max_attempts: int = 3
    poll_interval_seconds: float = 0.5
    model_cache: Path = Path()
    kube_namespace: str = "default"
    kube_image: str = "tuneforge/trainer:latest"
    #: kubeconfig file; empty: $KUBECONFIG, else the in-cluster service account, else ~/.kube/config
    kubeconfig: str = ""
    #: Secret whose keys become the trainer pods' environment (object-store settings and credentials)
    kube_storage_secret: str = ""
    #: GPUs per pod when a job's request does not say (resources.gpus = 0)
    kube_default_gpus: int = 1
    #: Kueue LocalQueue for the jobs (empty: no Kueue) and their PriorityClass
    kube_queue_name: str = ""
    kube_priority_class: str = ""
    #: service account of the trainer pods (workload identity to the bucket; its API token is never mounted)
    kube_service_account: str = ""
    #: added to every trainer pod: node selector and tolerations of the GPU node pool, image pull secrets
    kube_node_selector: dict[str, str] = field(default_factory=dict)
    kube_tolerations: list[dict[str, Any]] = field(default_factory=list)
    kube_image_pull_secrets: list[str] = field(default_factory=list)
    #: GPU type of jobs that name none; CPU and memory per GPU of each type ({"h100": {"cpu": "12",
    #: "memory": "160Gi"}}), multiplied by the pod's GPU count
    kube_default_gpu_type: str = ""
    kube_gpu_resources: dict[str, dict[str, str]] = field(default_factory=dict)
    #: extra environment variables of the trainer container (e.g. TUNEFORGE_TRAINER_METRICS_PORT)
    kube_trainer_env: dict[str, str] = field(default_factory=dict)


@dataclass
class LimitSettings:
    max_upload_bytes: int = 1 << 30
    max_example_tokens: int = 8192
    max_reported_errors: int = 50
    max_active_jobs_per_tenant: int = 20


@dataclass
class Settings:
    home: Path
    database_url: str
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    #: HMAC key for signed download links and nothing else; generated per home when unset
    secret_key: str = ""
    default_base_model: str = "SmolLM2-135M-Instruct"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        import sys

        home = Path(_env("TUNEFORGE_HOME", str(Path.home() / ".tuneforge"))).expanduser().resolve()
        cache = Path(_env("TUNEFORGE_CACHE", str(Path.home() / ".cache" / "tuneforge"))).expanduser()
        settings = cls(
            home=home,
            database_url=_env("TUNEFORGE_DATABASE_URL", f"sqlite:///{home / 'tuneforge.db'}"),
            server=ServerSettings(
                host=_env("TUNEFORGE_HOST", "127.0.0.1"),
                port=_env_int("TUNEFORGE_PORT", 8000),
                public_url=_env("TUNEFORGE_PUBLIC_URL", ""),
            ),
            auth=AuthSettings(
                api_key=os.environ.get("TUNEFORGE_API_KEY") or None,
                key_file=home / "api_key",
            ),
            storage=StorageSettings(
                url=_env("TUNEFORGE_STORAGE_URL", (home / "objects").as_uri()),
                link_expiry_seconds=_env_int("TUNEFORGE_LINK_EXPIRY_SECONDS", 900),
            ),
            executor=ExecutorSettings(
                kind=_env("TUNEFORGE_EXECUTOR", "local"),
                max_concurrent_jobs=_env_int("TUNEFORGE_MAX_CONCURRENT_JOBS", 1),
                trainer_python=_env("TUNEFORGE_TRAINER_PYTHON", sys.executable),
                cancel_grace_seconds=float(_env("TUNEFORGE_CANCEL_GRACE_SECONDS", "10")),
                max_attempts=_env_int("TUNEFORGE_MAX_ATTEMPTS", 3),
                model_cache=Path(_env("TUNEFORGE_MODEL_CACHE", str(cache / "models"))).expanduser(),
                kube_namespace=_env("TUNEFORGE_KUBE_NAMESPACE", "default"),
                kube_image=_env("TUNEFORGE_KUBE_IMAGE", "tuneforge/trainer:latest"),
                kubeconfig=_env("TUNEFORGE_KUBECONFIG", ""),
                kube_storage_secret=_env("TUNEFORGE_KUBE_STORAGE_SECRET", ""),
                kube_default_gpus=_env_int("TUNEFORGE_KUBE_DEFAULT_GPUS", 1),
                kube_queue_name=_env("TUNEFORGE_KUBE_QUEUE", ""),
                kube_priority_class=_env("TUNEFORGE_KUBE_PRIORITY_CLASS", ""),
                kube_service_account=_env("TUNEFORGE_KUBE_SERVICE_ACCOUNT", ""),
                kube_node_selector=_env_json("TUNEFORGE_KUBE_NODE_SELECTOR", dict),
                kube_tolerations=_env_json("TUNEFORGE_KUBE_TOLERATIONS", list),
                kube_image_pull_secrets=[s.strip() for s in _env("TUNEFORGE_KUBE_IMAGE_PULL_SECRETS", "").split(",")
                                         if s.strip()],
                kube_default_gpu_type=_env("TUNEFORGE_KUBE_DEFAULT_GPU_TYPE", ""),
                kube_gpu_resources=_env_json("TUNEFORGE_KUBE_GPU_RESOURCES", dict),
                kube_trainer_env=_env_json("TUNEFORGE_KUBE_TRAINER_ENV", dict),
            ),
            limits=LimitSettings(
                max_upload_bytes=_env_int("TUNEFORGE_MAX_UPLOAD_BYTES", 1 << 30),
                max_example_tokens=_env_int("TUNEFORGE_MAX_EXAMPLE_TOKENS", 8192),
                max_active_jobs_per_tenant=_env_int("TUNEFORGE_MAX_ACTIVE_JOBS", 20),
            ),
            secret_key=os.environ.get("TUNEFORGE_SECRET_KEY", ""),
            default_base_model=_env("TUNEFORGE_DEFAULT_MODEL", "SmolLM2-135M-Instruct"),
        )
        for key, value in overrides.items():
            setattr(settings, key, value)
        return settings
