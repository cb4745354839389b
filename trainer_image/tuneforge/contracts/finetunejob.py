"""The ``FineTuneJob`` custom resource (``finetunejobs.tuneforge.dev``): one fine-tuning run in cluster mode.

The service creates it (spec), the operator reconciles it into a batch/v1 Job of trainer pods and writes its
status, ``kubectl get ftj`` shows it. Everything both sides agree on lives here once: group/version, labels,
phases and reasons, child-object names, and the spec/status models, from which the CRD is generated
(:func:`crd_manifest`; ``python -m tuneforge.operator.crd`` writes ``helm/crds/``, a test keeps them equal).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from tuneforge.contracts.jobspec import JobSpec

GROUP = "tuneforge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAME = "ftj"
CRD_NAME = f"{PLURAL}.{GROUP}"

#: on every child (ConfigMap, Job, pods): the name of the owning FineTuneJob
LABEL_FINETUNEJOB = "tuneforge.dev/finetunejob"
#: on the FineTuneJob and its children: the service's job id and tenant
LABEL_JOB_ID = "tuneforge.dev/job-id"
LABEL_TENANT = "tuneforge.dev/tenant"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MAX_BACKOFF_LIMIT = 20  # the most retries of real failures one FineTuneJob may ask for (a bound in the CRD)
LABEL_COMPONENT = "app.kubernetes.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: ``app.kubernetes.io/managed-by`` of the FineTuneJobs the service creates, and of their children
MANAGED_BY_SERVICE = "tuneforge-service"
MANAGED_BY_OPERATOR = "tuneforge-operator"

#: name of the trainer container (the pod failure policy keys on it)
TRAINER_CONTAINER = "trainer"
#: where the JobSpec ConfigMap is mounted in the trainer pod
JOBSPEC_DIR = "/etc/tuneforge"
JOBSPEC_FILE = "jobspec.json"
WORK_DIR = "/work"
#: the key of the progress-token Secret
TOKEN_KEY = "token"

Phase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed", "Cancelled"]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
CONDITION_TYPES = ("Queued", "Running", "Suspended", "Succeeded", "Failed")


class Reason(StrEnum):
    """``status.reason``: why a FineTuneJob is in its phase, one CamelCase word (docs/cluster.md)."""

    ACCEPTED = "Accepted"
    CREATED = "Created"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    WAITING_FOR_ADMISSION = "WaitingForAdmission"
    SUSPENDED = "Suspended"
    PREEMPTED = "Preempted"
    RESUMED = "Resumed"
    RESUMING = "Resuming"
    RETRYING = "Retrying"
    JOB_RECREATED = "JobRecreated"
    POD_RUNNING = "PodRunning"
    COMPLETED = "Completed"
    OOM_KILLED = "OOMKilled"
    BAD_INPUT = "BadInput"
    TRAINER_ERROR = "TrainerError"
    POD_FAILED = "PodFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    CANCELLED = "Cancelled"
    INVALID_SPEC = "InvalidSpec"


@dataclass(frozen=True)
class ChildNames:
    job: str
    configmap: str
    service: str
    token_secret: str


def child_names(name: str) -> ChildNames:
    """Deterministic names of a FineTuneJob's children (an operator restart finds, never duplicates, them)."""
    return ChildNames(job=name, configmap=f"{name}-jobspec", service=f"{name}-workers",
                      token_secret=f"{name}-progress-token")


_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


def label_value(value: str) -> str:
    """``value`` made a valid label value (63 characters at most, alphanumeric at both ends)."""
    return _LABEL_VALUE.sub("-", value)[:63].strip("-_.")


# --------------------------------------------------------------------------- the resource

_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"


_SIMPLE_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]{0,2})$")


def scale_quantity(quantity: str, factor: int) -> str:
    """A Kubernetes quantity times ``factor`` (``"160Gi"`` x 2 = ``"320Gi"``, ``"500m"`` x 3 = ``"1500m"``)."""
    match = _SIMPLE_QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity such as 12, 500m or 160Gi")
    value = Decimal(match.group(1)) * factor
    text = format(value.normalize(), "f") if value != value.to_integral() else str(int(value))
    return text + match.group(2)


def _quantity(description: str) -> Any:
    return Annotated[int | str | None, WithJsonSchema({
        "x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN, "description": description,
    })]


#: a free-form object the apiserver keeps as it is (validated by the operator or Kubernetes instead)
FreeObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]
DateTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Int64 = Annotated[int, WithJsonSchema({"type": "integer", "format": "int64"})]


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        """As the API server takes it: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Named(_Camel):
    name: str = Field(..., min_length=1)


class TokenSecretRef(_Camel):
    name: str | None = None
    key: str = TOKEN_KEY


class ModelCache(_Camel):
    claim_name: str = Field(..., min_length=1)


class EnvVar(_Camel):
    name: str = Field(..., min_length=1)
    value: str | None = None


class ContainerResources(_Camel):
    cpu: _quantity("CPU request") = None  # type: ignore[valid-type]
    memory: _quantity("memory request and limit") = None  # type: ignore[valid-type]


class Scheduling(_Camel):
    gpus: int | None = Field(None, ge=0, le=64, description="nvidia.com/gpu per pod")
    gpu_type: str | None = Field(None, description="GPU type: selects nodes by the operator's GPU-type label")
    nodes: int | None = Field(None, ge=1, le=64, description="pods (nodes) for multi-node training: an indexed Job")
    node_selector: dict[str, str] | None = Field(None, description="extra node selector")
    tolerations: list[FreeObject] | None = None
    affinity: FreeObject | None = None
    priority_class_name: str | None = None
    queue_name: str | None = Field(None, description="Kueue LocalQueue: the Job is created suspended and Kueue "
                                   "admits it")
    max_pending_seconds: int | None = Field(
        None, ge=1, description="fail the job (reason Unschedulable) when its pod cannot be scheduled for this "
        "long; unset: wait (a cluster autoscaler may add a node)")


_JOBSPEC_RULES: list[Any] = [{"rule": "self == oldSelf", "message": "jobSpec is immutable"}]
_CANCEL_RULES: list[Any] = [{"rule": "self || !oldSelf", "message": "a cancelled FineTuneJob cannot be un-cancelled"}]


class FineTuneJobSpec(_Camel):
    job_spec: JobSpec = Field(
        ..., description="The resolved JobSpec (tuneforge.contracts.JobSpec) the trainer runs; immutable. Its "
        "progress token is never stored here: the pod reads it from progressTokenSecret.",
        json_schema_extra={"x-kubernetes-validations": _JOBSPEC_RULES})
    image: str | None = Field(None, description="trainer image (default: the operator's "
                              "TUNEFORGE_OPERATOR_DEFAULT_IMAGE)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[Named] | None = None
    service_account_name: str | None = Field(
        None, description="service account of the trainer pod (for workload identity to the bucket); its API "
        "token is never mounted")
    suspend: bool = Field(False, description="true: delete the running pod (it checkpoints) and wait; false "
                          "again: resume")
    cancel: bool = Field(False, description="true: stop the job for good (its Job and pods are deleted); cannot "
                         "be undone", json_schema_extra={"x-kubernetes-validations": _CANCEL_RULES})
    progress_token_secret: TokenSecretRef | None = Field(
        None, description="Secret holding the per-job progress token (default name: <name>-progress-token)")
    storage_secret: str | None = Field(
        None, description="Secret whose keys become the trainer's environment: object-store settings and "
        "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION, ...)")
    model_cache: ModelCache | None = Field(
        None, description="PersistentVolumeClaim (ReadWriteMany) mounted at /cache to share downloaded base "
        "models between pods; default: an emptyDir per pod")
    env: list[EnvVar] | None = Field(None, description="extra environment variables of the trainer")
    resources: ContainerResources | None = Field(None, description="CPU and memory of the trainer container "
                                                 "(GPUs: see scheduling)")
    scheduling: Scheduling | None = None
    active_deadline_seconds: int | None = Field(None, ge=1, description="wall-clock limit of the whole job")
    backoff_limit: int | None = Field(None, ge=0, le=MAX_BACKOFF_LIMIT, description="retries of real failures "
                                      "(preemptions are not counted)")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="keep the finished Job and pods this "
                                                   "long")
    termination_grace_period_seconds: int | None = Field(None, ge=0, description="time to checkpoint after "
                                                         "SIGTERM")
    pod_annotations: dict[str, str] | None = Field(None, description="annotations of the trainer pods")
    pod_labels: dict[str, str] | None = Field(None, description="labels of the trainer pods")


class LastCheckpoint(_Camel):
    step: int | None = None
    prefix: str | None = None
    time: DateTime | None = None


class Condition(_Camel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: DateTime | None = None
    observed_generation: Int64 | None = None


class FineTuneJobStatus(_Camel):
    phase: Phase | None = None
    reason: str | None = Field(None, description="machine-readable cause of the phase, e.g. Unschedulable, "
                               "OOMKilled, Preempted")
    message: str | None = Field(None, description="what happened, for a person")
    exit_code: int | None = Field(None, description="the trainer's exit code when it ended the job")
    observed_generation: Int64 | None = None
    attempts: int | None = Field(None, description="pods started so far (preemptions and retries add one each)")
    job_name: str | None = Field(None, description="the batch/v1 Job")
    pod_names: list[str] | None = Field(None, description="trainer pods, oldest first (last 100)")
    active_pods: int | None = Field(
        None, ge=0, description="pods that may still run a trainer: not finished, or being deleted. In a final "
        "phase, above 0 means the pods are still stopping (a cancelled trainer saves a checkpoint in its grace "
        "period) and may still write to the object store")
    start_time: DateTime | None = None
    completion_time: DateTime | None = None
    progress: str | None = Field(None, description="training progress reported by the service, e.g. 120/300 (40%)")
    last_checkpoint: LastCheckpoint | None = None
    conditions: list[Condition] | None = Field(
        None, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


class FineTuneJob(_Camel):
    api_version: Literal["tuneforge.dev/v1alpha1"] = "tuneforge.dev/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    def dump(self) -> dict[str, Any]:
        out = super().dump()
        # a JobSpec is snake_case inside the camelCase resource (it is the trainer's file, verbatim)
        out["spec"]["jobSpec"] = self.spec.job_spec.model_dump(mode="json")
        return out


# --------------------------------------------------------------------------- the CRD

#: fields of the JobSpec typed in the CRD (deeper structure is validated by the operator with the model)
_JOBSPEC_TYPED = ("version", "job_id", "tenant_id", "base_model", "seed", "storage_url", "output_prefix")


def _jobspec_schema() -> dict[str, Any]:
    """Top-level JobSpec fields typed, nested objects kept as they are (their unions and recursion cannot be
    expressed in a structural schema); the token rule is the CRD's own: tokens never go into a FineTuneJob."""
    source = JobSpec.model_json_schema()
    props: dict[str, Any] = {}
    for name, field in source["properties"].items():
        if name in _JOBSPEC_TYPED:
            props[name] = _structural(field, source.get("$defs", {}))
        elif field.get("type") == "array":  # a list of objects (e.g. integrations): its items kept as they are
            props[name] = {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
        else:
            props[name] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    props["version"] = {"type": "string", "description": "JobSpec schema version, e.g. tuneforge.dev/v2"}
    props["validation_file"]["nullable"] = True
    props["progress"] = {
        "type": "object", "nullable": True,
        "description": "where the trainer reports progress; the token comes from progressTokenSecret",
        "properties": {"url": {"type": "string", "description": "base URL of the service's internal progress route"},
                       "token": {"type": "string", "maxLength": 0,
                                 "description": "must be empty: tokens never go into a FineTuneJob"}},
    }
    return {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
            "required": list(source.get("required", [])), "properties": props}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema as a Kubernetes structural schema: refs inlined, ``X | None`` as an optional
    ``X``, other unions as free objects, titles and pydantic-only keywords dropped, None defaults dropped."""
    schema = copy.deepcopy(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").rsplit("/", 1)[-1]]
        schema = {**copy.deepcopy(target), **schema}
    for key in ("title", "discriminator"):
        schema.pop(key, None)
    if "anyOf" in schema and not schema.get("x-kubernetes-int-or-string"):
        # ``X | None``: absent, never null (the service and operator leave unset fields out)
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            schema = {**_structural(options[0], defs), **rest}
        else:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if "default" in schema and schema["default"] is None:
        schema.pop("default")
    if schema.get("type") == "object" and "properties" in schema:
        schema["properties"] = {k: _structural(v, defs) for k, v in schema["properties"].items()}
        if not schema.get("required"):
            schema.pop("required", None)
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _structural(schema["additionalProperties"], defs)
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        schema["items"] = _structural(schema["items"], defs)
    return schema


def _resource_schema() -> dict[str, Any]:
    source = FineTuneJob.model_json_schema(by_alias=True)
    defs = source.get("$defs", {})
    spec = _structural(source["properties"]["spec"], defs)
    extra = spec["properties"]["jobSpec"].get("x-kubernetes-validations")
    spec["properties"]["jobSpec"] = {**_jobspec_schema(), "description": spec["properties"]["jobSpec"].get(
        "description", ""), "x-kubernetes-validations": extra}
    status = _structural(source["properties"]["status"], defs)
    status.pop("nullable", None)
    return {
        "type": "object",
        "description": "A fine-tuning run of tuneforge, executed as a batch/v1 Job of trainer pods by the "
                       "tuneforge operator.",
        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                       "metadata": {"type": "object"}, "spec": spec, "status": status},
    }


PRINTER_COLUMNS = [
    {"name": "Method", "type": "string", "jsonPath": ".spec.jobSpec.method.type"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.jobSpec.base_model"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts", "priority": 1},
    {"name": "Pods", "type": "integer", "jsonPath": ".status.activePods", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition, generated from the models above."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": [SHORT_NAME], "categories": ["tuneforge"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": _resource_schema()},
            }],
        },
    }
