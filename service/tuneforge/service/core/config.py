"""The service's settings: ``TUNEFORGE_*`` environment variables (pydantic-settings), one nested model per concern.

Built once at start-up (``ServiceSettings()`` reads the environment; tests use
``explicit(ServiceSettings, ...)``) and never changed afterwards: the models are frozen. Paths that default to
places inside ``TUNEFORGE_HOME`` (database, object store, API key file) are derived from it when unset.
The README's configuration table is generated from these models (``python docs/configuration.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from tuneforge.contracts.catalog import DEFAULT_BASE_MODEL
from tuneforge.contracts.finetunejob import MAX_BACKOFF_LIMIT, scale_quantity
from tuneforge.contracts.settings import EnvSettings

DEFAULT_HOME = Path.home() / ".tuneforge"
DEFAULT_CACHE = Path.home() / ".cache" / "tuneforge"


def _comma_list(value: Any) -> Any:
    """``a,b`` (how the Helm chart renders a list) or a JSON array."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class ServerSettings(EnvSettings):
    host: str = Field("127.0.0.1", description="Address `tuneforge serve` listens on")
    port: int = Field(8000, ge=1, le=65535, description="Port `tuneforge serve` listens on")
    public_url: str = Field("", description="Base URL trainers use to reach the service's progress route "
                            "(empty: http://HOST:PORT)")
    events_poll_seconds: float = Field(2.0, gt=0, le=3600, description="Event streams re-read the database this "
                                       "often when no notification arrived (PostgreSQL notifies every replica)")
    stream_db_readers: int = Field(4, ge=1, le=64, description="At most this many event-stream reads hold a "
                                   "database connection at once (the rest wait their turn), so open streams never "
                                   "take the connection pool from other requests")

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"


class AuthSettings(EnvSettings):
    api_key: str | None = Field(None, description="An API key the server accepts for the default organization "
                                "(stored hashed; when unset, the first start writes a new one to HOME/api_key)")
    default_tenant: str = Field("default", min_length=1, max_length=64,
                                description="Organization of the key above")
    metrics_token: str = Field("", description="Bearer token `/metrics` requires (empty: none)")
    last_used_resolution_seconds: int = Field(
        60, ge=1, le=86400, validation_alias="TUNEFORGE_KEY_LAST_USED_RESOLUTION_SECONDS",
        description="An API key's `last_used_at` is written at most this often (not once per request)")


class StorageSettings(EnvSettings):
    url: str = Field("", validation_alias="TUNEFORGE_STORAGE_URL",
                     description="Object store: file:///dir or s3://bucket/prefix",
                     json_schema_extra={"default_text": "file://$TUNEFORGE_HOME/objects"})
    link_expiry_seconds: int = Field(900, ge=1, le=7 * 24 * 3600, description="Lifetime of download links")


class ExecutorSettings(EnvSettings):
    kind: Literal["local", "kubernetes", "none"] = Field(
        "local", validation_alias="TUNEFORGE_EXECUTOR",
        description="local (trainer subprocesses), kubernetes (FineTuneJob resources) or none (API only)")
    max_concurrent_jobs: int = Field(1, ge=0, le=1024, description="Local executor: trainers running at once "
                                     "(0: validate and queue jobs but start none, e.g. for maintenance)")
    trainer_python: str = Field(sys.executable, description="Local executor: the Python that runs the trainer",
                                json_schema_extra={"default_text": "the service's Python"})
    cancel_grace_seconds: float = Field(10.0, ge=0, description="Local executor: SIGINT to SIGKILL on cancel")
    max_attempts: int = Field(3, ge=1, le=100, description="Starts of a job interrupted by a restart or a "
                              "preemption before it fails")
    poll_interval_seconds: float = Field(0.5, gt=0, le=60, description="Executor control-loop period")
    model_cache: Path = Field(DEFAULT_CACHE / "models", description="Converted base models (local trainers)",
                              json_schema_extra={"default_text": "~/.cache/tuneforge/models"})
    replica_id: str = Field("", description="This replica's name, recorded on the jobs its local executor runs "
                            "(empty: the host name); a restart re-queues only its own jobs")
    gguf_converter: str = Field("", description="Exports: directory of llama.cpp's GGUF converter "
                                "(infra/engines/gguf/install.sh prints it; empty: GGUF exports fail with that reason)")
    kube_namespace: str = Field("default", description="Kubernetes: namespace of the FineTuneJobs")
    kube_image: str = Field("tuneforge/trainer:latest", description="Kubernetes: trainer image")
    kubeconfig: str = Field("", validation_alias=AliasChoices("TUNEFORGE_KUBECONFIG", "KUBECONFIG"),
                            description="Kubernetes: kubeconfig file (empty: the in-cluster service account, or "
                            "~/.kube/config); KUBECONFIG works too")
    kube_storage_secret: str = Field("", description="Kubernetes: Secret whose keys become the trainer pods' "
                                     "environment (object-store settings and credentials)")
    kube_default_gpus: int = Field(1, ge=0, le=64, description="Kubernetes: GPUs per pod when a job asks for 0")
    kube_queue_name: str = Field("", validation_alias="TUNEFORGE_KUBE_QUEUE",
                                 description="Kubernetes: Kueue LocalQueue of the jobs (empty: no Kueue)")
    kube_priority_class: str = Field("", description="Kubernetes: PriorityClass of the trainer pods")
    kube_service_account: str = Field("", description="Kubernetes: service account of the trainer pods (workload "
                                      "identity to the bucket; its API token is never mounted)")
    kube_node_selector: dict[str, str] = Field(default_factory=dict, description="Kubernetes: node selector of "
                                               "every trainer pod (JSON object)",
                                               json_schema_extra={"default_text": "{}"})
    kube_tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Kubernetes: tolerations of "
                                                   "every trainer pod (JSON array)",
                                                   json_schema_extra={"default_text": "[]"})
    kube_image_pull_secrets: Annotated[list[str], NoDecode, BeforeValidator(_comma_list)] = Field(
        default_factory=list, description="Kubernetes: image pull secrets of the trainer pods (comma-separated)",
        json_schema_extra={"default_text": "(none)"})
    kube_default_gpu_type: str = Field("", description="Kubernetes: GPU type of jobs that name none")
    kube_gpu_resources: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Kubernetes: CPU and memory per GPU of each type, multiplied by the pod's "
        'GPU count (JSON, e.g. {"h100": {"cpu": "12", "memory": "160Gi"}})', json_schema_extra={"default_text": "{}"})
    kube_trainer_env: dict[str, str] = Field(default_factory=dict, description="Kubernetes: extra environment of "
                                             "the trainer container (JSON object)",
                                             json_schema_extra={"default_text": "{}"})

    @model_validator(mode="after")
    def _attempts_fit_the_cluster(self) -> ExecutorSettings:
        # the cluster retries real failures itself, max_attempts - 1 times (the FineTuneJob's backoffLimit); a
        # value the CRD refuses would leave every job stuck in validating_files, so it is refused at start
        if self.kind == "kubernetes" and self.max_attempts - 1 > MAX_BACKOFF_LIMIT:
            raise ValueError(f"max_attempts is at most {MAX_BACKOFF_LIMIT + 1} with the kubernetes executor (a "
                             f"FineTuneJob's backoffLimit, max_attempts - 1, is at most {MAX_BACKOFF_LIMIT}); got "
                             f"{self.max_attempts}")
        return self


    @field_validator("kube_gpu_resources")
    @classmethod
    def _quantities(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for gpu_type, per_gpu in value.items():
            if set(per_gpu) - {"cpu", "memory"}:
                raise ValueError(f"{gpu_type!r}: only cpu and memory can be given per GPU, got {sorted(per_gpu)}")
            for key, quantity in per_gpu.items():
                try:
                    scale_quantity(quantity, 1)
                except ValueError as exc:
                    raise ValueError(f"{gpu_type!r}.{key}: {exc}") from None
        return value


class ServingSettings(EnvSettings):
    """Chat and text completions on base and tuned models (OpenAI's /v1/chat/completions, /v1/completions)."""

    enabled: bool = Field(True, validation_alias="TUNEFORGE_SERVING_ENABLED",
                          description="Serving: answer completions at all (false: completion requests, evals and "
                          "safety reports are refused with 503 serving_not_enabled; no engine is ever started)")
    engine: Literal["tuneforge", "vllm"] = Field(
        "tuneforge", validation_alias="TUNEFORGE_SERVING_ENGINE",
        description="Serving engine: tuneforge (transformers + PEFT, batches requests with different adapters; the "
        "CPU default) or vllm (GPUs)")
    vllm_python: str = Field("", description="Serving: the Python of vLLM's own environment "
                             "(infra/engines/vllm-cpu/install.sh --print-python)")
    idle_seconds: float = Field(900.0, ge=0, description="Serving: an engine without requests for this long is "
                                "stopped (0: never); the next request starts it again")
    start_timeout_seconds: float = Field(600.0, gt=0, description="Serving: how long a first request waits for "
                                         "its engine to start")
    max_loras: int = Field(8, ge=1, le=256, description="Serving: adapters loaded in one engine at once (least "
                           "recently used ones are evicted)")
    max_batch: int = Field(16, ge=1, le=1024, description="Serving: sequences an engine generates together")
    max_request_bytes: int = Field(4 << 20, ge=1024, description="Serving: largest completion request body")
    eval_concurrency: int = Field(4, ge=1, le=256, description="Evals: completion requests eval runs send the "
                                  "engines at once (generation and judges, all runs together)")
    cluster_url_template: str = Field(
        "http://{service}.{namespace}.svc:8000", validation_alias="TUNEFORGE_SERVING_CLUSTER_URL_TEMPLATE",
        description="Serving, kubernetes executor: URL of a ServingEngine's vLLM, from its Service name and namespace "
        "(set it when the service runs outside the cluster)")
    cluster_fetcher_url_template: str = Field(
        "http://{service}.{namespace}.svc:8001", validation_alias="TUNEFORGE_SERVING_CLUSTER_FETCHER_URL_TEMPLATE",
        description="Serving, kubernetes executor: URL of a ServingEngine's adapter-fetcher sidecar")
    cluster_fetcher_token: str = Field(
        "", validation_alias="TUNEFORGE_SERVING_CLUSTER_FETCHER_TOKEN", repr=False,
        description="Serving, kubernetes executor: bearer token of the engine pods' adapter-fetcher sidecar (the "
        "chart shares it with the operator through a Secret)")
    cluster_image: str = Field("", validation_alias="TUNEFORGE_SERVING_CLUSTER_IMAGE",
                               description="Serving, kubernetes executor: vLLM image (empty: the operator's default)")
    cluster_gpus: int = Field(1, ge=0, le=64, validation_alias="TUNEFORGE_SERVING_CLUSTER_GPUS",
                              description="Serving, kubernetes executor: GPUs of an engine pod")
    cluster_gpu_type: str = Field("", validation_alias="TUNEFORGE_SERVING_CLUSTER_GPU_TYPE",
                                  description="Serving, kubernetes executor: GPU type of the engine pods (empty: any)")
    max_lora_rank: int = Field(64, ge=1, le=1024, description="Serving: largest LoRA rank vLLM engines accept "
                               "(--max-lora-rank)")
    max_model_len: int = Field(0, ge=0, description="Serving: context length of vLLM engines in a cluster "
                               "(--max-model-len; 0: the model's)")

    @field_validator("cluster_url_template", "cluster_fetcher_url_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            url = value.format(service="engine", namespace="ns")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{value!r}: only {{service}} and {{namespace}} may be filled in ({exc!r})") from None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class LimitSettings(EnvSettings):
    max_upload_bytes: int = Field(1 << 30, ge=1, description="Largest training file")
    max_example_tokens: int = Field(8192, ge=1, description="Upload validation: longest example in tokens")
    max_reported_errors: int = Field(50, ge=1, le=10_000, description="Upload validation: problems listed")
    max_eval_items: int = Field(10_000, ge=1, description="Evals: most data items one eval run may have")
    max_active_jobs_per_tenant: int = Field(20, ge=1, validation_alias="TUNEFORGE_MAX_ACTIVE_JOBS",
                                            description="Jobs validating, queued or running per organization")
    max_queued_jobs_per_tenant: int = Field(0, ge=0, validation_alias="TUNEFORGE_MAX_QUEUED_JOBS",
                                            description="Jobs validating or queued per organization (0: only the "
                                            "active-job limit)")
    max_gpus_per_tenant: int = Field(0, ge=0, validation_alias="TUNEFORGE_MAX_GPUS",
                                     description="GPUs requested by an organization's active jobs (0: no limit)")
    max_stored_bytes_per_tenant: int = Field(0, ge=0, validation_alias="TUNEFORGE_MAX_STORED_BYTES",
                                             description="Bytes of an organization's files (0: no limit)")
    requests_per_minute: int = Field(0, ge=0, validation_alias="TUNEFORGE_REQUESTS_PER_MINUTE",
                                     description="Requests per minute per API key, over a moving window (0: no "
                                     "limit); an organization can have its own")
    rate_limit_storage: str = Field("memory://", validation_alias="TUNEFORGE_RATE_LIMIT_STORAGE",
                                    description="Where request counts live (a `limits` storage URI): memory:// "
                                    "counts in each replica; a shared store (redis://host:6379, with the `redis` "
                                    "package installed) counts across replicas")


class LogSettings(EnvSettings):
    log_format: Literal["plain", "json"] = Field("plain", description="plain: lines for people; json: one JSON "
                                                 "object per line with the request id (for log collectors)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged")


class IntegrationSettings(EnvSettings):
    mlflow_tracking_uri: str = Field("", description="MLflow tracking server jobs log to when their `mlflow` "
                                     "integration names none (empty: such jobs are refused)")
    mlflow_allowed_tracking_uris: list[str] = Field(
        default_factory=list, description="Other MLflow tracking servers a job may name (JSON list); trainers "
        "reach no others. Credentials: MLFLOW_TRACKING_TOKEN or _USERNAME/_PASSWORD in the trainer's environment")


class WebhookSettings(EnvSettings):
    webhook_max_attempts: int = Field(8, ge=1, le=50, description="Deliveries of one event before it is marked "
                                      "failed")
    webhook_backoff_seconds: float = Field(10.0, gt=0, le=3600, description="First retry delay; each next one "
                                           "doubles (with jitter)")
    webhook_max_backoff_seconds: float = Field(3600.0, gt=0, description="Longest delay between two attempts")
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60, description="How long a receiver may take to answer")
    webhook_allow_private_urls: bool = Field(False, description="Deliver to loopback and private addresses "
                                             "(development and tests; off: public addresses only)")
    webhook_poll_interval_seconds: float = Field(1.0, gt=0, le=60, description="How often due deliveries are "
                                                 "looked for")


class EstimateSettings(EnvSettings):
    gpu_hour_prices: dict[str, float] = Field(
        default_factory=lambda: {"cpu": 0.0, "default": 2.0},
        description="Price of one device-hour by device (JSON object: a `gpu_type` such as NVIDIA-H100-80GB-HBM3, "
        "`cpu`, or `default`), for `POST /v1/fine_tuning/jobs/estimate`")
    price_currency: str = Field("USD", max_length=8, description="Currency of the prices above")
    default_device: str = Field("", description="Device an estimate assumes when a job names no gpu_type "
                                "(empty: `cpu` for the local executor, `default` for Kubernetes)")
    throughput_overrides: dict[str, float] = Field(
        default_factory=dict, description="Measured training tokens/s to use instead of the built-in table, keyed "
        "`DEVICE` or `DEVICE/PARAMS_BUCKET` (JSON object, e.g. {\"NVIDIA-H100-80GB-HBM3/135M\": 25000})")
    budget_check_seconds: float = Field(5.0, gt=0, le=3600, description="How often spent GPU-hour budgets are "
                                        "checked (their jobs are paused)")


class PrivacySettings(EnvSettings):
    """Upload-time PII scan and the safety report of succeeded jobs (docs/privacy.md)."""

    pii_default_action: Literal["report", "reject", "redact"] = Field(
        "report", description="Uploads: what the PII scan does when a request names no `pii_action` (report: "
        "list findings on the file; reject: refuse a file with any; redact: replace them before storing)")
    pii_max_listed_findings: int = Field(100, ge=1, le=10_000, description="Uploads: PII findings listed on a "
                                         "file object (all are counted)")
    safety_report_enabled: bool = Field(True, description="Safety report: base and tuned model answer red-team and "
                                        "validation prompts after every succeeded job (background work)")
    safety_redteam_prompts: int = Field(20, ge=0, le=50, description="Safety report: harmful-request prompts asked "
                                        "(of the 50 fixed HH-RLHF red-team prompts)")
    safety_validation_prompts: int = Field(8, ge=0, le=200, description="Safety report: prompts of the job's "
                                           "validation file (else its training file) asked")
    safety_max_tokens: int = Field(64, ge=1, le=2048, description="Safety report: tokens generated per answer")
    safety_concurrency: int = Field(2, ge=1, le=64, description="Safety report: completion requests in flight "
                                    "per report")
    safety_poll_seconds: float = Field(5.0, gt=0, le=3600, description="Safety report: how often newly "
                                       "succeeded jobs are looked for")


class ServiceSettings(EnvSettings):
    home: Path = Field(DEFAULT_HOME, description="Database, object store, logs and API key file (embedded mode)",
                       json_schema_extra={"default_text": "~/.tuneforge"})
    database_url: str = Field("", description="SQLAlchemy URL: SQLite (WAL mode) or postgresql+psycopg://…",
                              json_schema_extra={"default_text": "sqlite:///$TUNEFORGE_HOME/tuneforge.db"})
    db_auto_upgrade: bool = Field(True, description="Upgrade an empty or older database schema on start (false: "
                                  "refuse to start and say which `tuneforge db upgrade` is needed)")
    secret_key: str = Field("", description="HMAC key of signed download links (empty: generated once per home)")
    default_base_model: str = Field(DEFAULT_BASE_MODEL, validation_alias=AliasChoices(
        "TUNEFORGE_DEFAULT_BASE_MODEL", "TUNEFORGE_DEFAULT_MODEL"), description="Base model whose tokenizer counts "
        "upload tokens")
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    integrations: IntegrationSettings = Field(default_factory=IntegrationSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    estimate: EstimateSettings = Field(default_factory=EstimateSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    logging: LogSettings = Field(default_factory=LogSettings)

    @model_validator(mode="after")
    def _derive_from_home(self) -> ServiceSettings:
        # frozen models: the derived defaults are set once, here, during validation
        home = self.home.expanduser().resolve()
        object.__setattr__(self, "home", home)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{home / 'tuneforge.db'}")
        if not self.storage.url:
            object.__setattr__(self, "storage", self.storage.model_copy(update={"url": (home / "objects").as_uri()}))
        return self

    @property
    def key_file(self) -> Path:
        """Where the embedded server writes the API key it creates on first start."""
        return self.home / "api_key"
