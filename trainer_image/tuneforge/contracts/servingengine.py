"""The ``ServingEngine`` custom resource (``servingengines.tuneforge.dev``): one vLLM engine for one base model in
cluster mode.

The service creates one per base model in use (on its first completion request) and scales it between 0 and 1
replicas; the operator reconciles it into a Deployment (vLLM with runtime LoRA loading, an init container that
fetches the base weights from the object store, an adapter-fetcher sidecar) and a Service, and mirrors the
Deployment's readiness into the status. Everything both sides agree on lives here once: names, labels, ports,
phases and the spec/status models, from which the CRD is generated (:func:`crd_manifest`;
``python -m tuneforge.operator.crd --write helm/crds`` writes it next to the FineTuneJob's, a test keeps them equal).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from tuneforge.contracts.finetunejob import (
    GROUP,
    VERSION,
    ContainerResources,
    FreeObject,
    Int64,
    Named,
    _Camel,
    _structural,
)

API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ServingEngine"
PLURAL = "servingengines"
SINGULAR = "servingengine"
SHORT_NAME = "tfse"
CRD_NAME = f"{PLURAL}.{GROUP}"

#: on the ServingEngine's children (Deployment, Service, pods): the name of the owning ServingEngine
LABEL_SERVINGENGINE = "tuneforge.dev/servingengine"
#: on the ServingEngine and its children: the base model key it serves (as a label value)
LABEL_BASE_MODEL = "tuneforge.dev/base-model"
COMPONENT = "serving"

#: containers of the engine pod and their ports
ENGINE_CONTAINER = "vllm"
FETCHER_CONTAINER = "adapter-fetcher"
WEIGHTS_CONTAINER = "fetch-weights"
ENGINE_PORT = 8000
FETCHER_PORT = 8001
#: the shared volumes: base weights (written by the init container) and adapters (written by the sidecar)
MODELS_DIR = "/models"
BASE_MODEL_DIR = f"{MODELS_DIR}/base"
ADAPTERS_DIR = "/adapters"
#: the adapter-fetcher sidecar's shared bearer token: the environment variable the sidecar reads it from, and the
#: default key of the Secret that holds it (the operator names the Secret, never the token, in the engine pod)
FETCHER_TOKEN_ENV = "TUNEFORGE_FETCHER_TOKEN"
FETCHER_TOKEN_KEY = "fetcher-token"

Phase = Literal["Pending", "ScaledToZero", "Starting", "Ready", "Stopping", "Failed"]


@dataclass(frozen=True)
class ServingChildNames:
    deployment: str
    service: str


def serving_child_names(name: str) -> ServingChildNames:
    """Deterministic names of a ServingEngine's children (an operator restart finds, never duplicates, them)."""
    return ServingChildNames(deployment=name, service=name)


_DNS = re.compile(r"[^a-z0-9-]+")


def engine_name(base_model: str) -> str:
    """The ServingEngine's name for a base model key: a DNS-1035 label (it names the Service too), readable and
    unique (``SmolLM2-135M-Instruct`` -> ``engine-smollm2-135m-instruct-1a2b3c4d``)."""
    slug = _DNS.sub("-", base_model.lower()).strip("-")[:40].strip("-") or "model"
    digest = hashlib.sha256(base_model.encode()).hexdigest()[:8]
    return f"engine-{slug}-{digest}"


class WeightsSource(_Camel):
    """Where the base weights come from: exactly one of ``catalogue`` and ``prefix``."""

    catalogue: str | None = Field(None, min_length=1, description="a bundled model id of tuneforge's catalogue "
                                  "(converted by the trainer image's model code)")
    prefix: str | None = Field(None, min_length=1, description="an object-store prefix holding published weights "
                               "(manifest.json last), e.g. models/NAME or jobs/ID/model")

    @model_validator(mode="after")
    def _exactly_one(self) -> WeightsSource:
        if (self.catalogue is None) == (self.prefix is None):
            raise ValueError("weights: give exactly one of catalogue and prefix")
        return self


_WEIGHTS_RULES: list[Any] = [{"rule": "has(self.catalogue) != has(self.prefix)",
                              "message": "give exactly one of catalogue and prefix"}]


class VllmArgs(_Camel):
    max_loras: int = Field(8, ge=1, le=256, description="adapters loaded at once (--max-loras)")
    max_lora_rank: int = Field(64, ge=1, le=1024, description="largest LoRA rank (--max-lora-rank)")
    max_model_len: int | None = Field(None, ge=16, description="context length (--max-model-len; default: the "
                                      "model's)")
    gpu_memory_utilization: float | None = Field(None, ge=0.05, le=1, description="--gpu-memory-utilization")
    extra_args: list[str] | None = Field(None, description="further vLLM arguments, appended as they are")


class ServingScheduling(_Camel):
    gpus: int = Field(1, ge=0, le=64, description="nvidia.com/gpu of the engine pod")
    gpu_type: str | None = Field(None, description="GPU type: selects nodes by the operator's GPU-type label")
    node_selector: dict[str, str] | None = Field(None, description="extra node selector")
    tolerations: list[FreeObject] | None = None
    priority_class_name: str | None = None


class ServingEngineSpec(_Camel):
    base_model: str = Field(..., min_length=1, max_length=256, description="the base model key the service "
                            "routes to this engine (a registry id, or the job id of a fully tuned model)")
    weights: WeightsSource = Field(..., json_schema_extra={"x-kubernetes-validations": _WEIGHTS_RULES})
    storage_url: str = Field(..., min_length=1, description="object store of the weights and adapters "
                             "(s3://bucket/prefix)")
    storage_secret: str | None = Field(
        None, description="Secret whose keys become the environment of the weight fetcher and the adapter "
        "fetcher: object-store credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...)")
    image: str | None = Field(None, description="vLLM image (default: the operator's "
                              "TUNEFORGE_OPERATOR_SERVING_IMAGE)")
    fetcher_image: str | None = Field(None, description="image of the weight fetcher and adapter-fetcher sidecar: "
                                      "the trainer image (default: the operator's TUNEFORGE_OPERATOR_DEFAULT_IMAGE)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[Named] | None = None
    service_account_name: str | None = Field(None, description="service account of the engine pod (workload "
                                             "identity to the bucket); its API token is never mounted")
    replicas: int = Field(0, ge=0, le=1, description="0 (scaled to zero) or 1 (one engine per base "
                          "model); the service scales")
    vllm: VllmArgs = Field(default_factory=VllmArgs)
    scheduling: ServingScheduling = Field(default_factory=ServingScheduling)
    resources: ContainerResources | None = Field(None, description="CPU and memory of the vLLM container (GPUs: "
                                                 "see scheduling)")
    startup_seconds: int = Field(1800, ge=10, le=24 * 3600, description="how long vLLM may take to load the "
                                 "model before its pod is restarted (startup probe)")


class ServingEngineStatus(_Camel):
    phase: Phase | None = None
    reason: str | None = Field(None, description="machine-readable cause of the phase")
    message: str | None = Field(None, description="what happened, for a person")
    replicas: int | None = Field(None, description="the Deployment's desired replicas")
    ready_replicas: int | None = Field(None, description="engine pods that pass vLLM's /health")
    observed_generation: Int64 | None = None
    deployment_name: str | None = None
    service_name: str | None = None


class ServingEngine(_Camel):
    api_version: Literal["tuneforge.dev/v1alpha1"] = "tuneforge.dev/v1alpha1"
    kind: Literal["ServingEngine"] = "ServingEngine"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ServingEngineSpec
    status: ServingEngineStatus | None = None


# --------------------------------------------------------------------------- the CRD


def _resource_schema() -> dict[str, Any]:
    source = ServingEngine.model_json_schema(by_alias=True)
    defs = source.get("$defs", {})
    spec = _structural(source["properties"]["spec"], defs)
    status = _structural(source["properties"]["status"], defs)
    status.pop("nullable", None)
    return {
        "type": "object",
        "description": "A vLLM engine serving one base model (and its LoRA adapters) for tuneforge, run as a "
                       "Deployment and a Service by the tuneforge operator.",
        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                       "metadata": {"type": "object"}, "spec": spec, "status": status},
    }


PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition, generated from the models above. The scale subresource lets
    ``kubectl scale tfse NAME --replicas=0`` work like the service does."""
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
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                         "statusReplicasPath": ".status.replicas"}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": _resource_schema()},
            }],
        },
    }
