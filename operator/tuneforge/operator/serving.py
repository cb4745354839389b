"""ServingEngine -> a vLLM Deployment and its Service, and the Deployment's state -> what to do and the status.

Pure, like :mod:`.manifests` and :mod:`.status`: API dicts in, manifests and a :class:`ServingPlan` out; the same
ServingEngine always gives the same manifests (deterministic names make creation idempotent).

The engine pod:

- init container ``fetch-weights`` (the trainer image, which holds the storage and model code): the base weights
  from the object store (or the catalogue's bundled model, converted) into the shared ``/models`` emptyDir;
- container ``vllm``: ``python3 -m vllm.entrypoints.openai.api_server --model /models/base --enable-lora ...`` with
  runtime adapter loading on (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``); a readiness probe on ``/health`` keeps the
  Service from sending traffic to an engine that is still loading;
- sidecar ``adapter-fetcher`` (``python -m tuneforge.engine.adapter_fetcher serve``): the service asks it to put
  an adapter from the object store into the shared ``/adapters`` emptyDir before telling vLLM to load it. It
  answers only requests with the shared bearer token, which it reads from the operator's fetcher-token Secret (by
  reference: no manifest holds the token); without such a Secret configured no engine is made (``NoFetcherToken``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tuneforge.contracts.finetunejob import LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY_OPERATOR, label_value
from tuneforge.contracts.servingengine import (
    ADAPTERS_DIR,
    API_VERSION,
    BASE_MODEL_DIR,
    COMPONENT,
    ENGINE_CONTAINER,
    ENGINE_PORT,
    FETCHER_CONTAINER,
    FETCHER_PORT,
    FETCHER_TOKEN_ENV,
    KIND,
    LABEL_BASE_MODEL,
    LABEL_SERVINGENGINE,
    MODELS_DIR,
    WEIGHTS_CONTAINER,
    ServingEngineSpec,
    serving_child_names,
)
from tuneforge.contracts.validation import first_problem
from tuneforge.operator.config import OperatorSettings
from tuneforge.operator.status import CONFIG_ERROR_REASONS, IMAGE_PULL_REASONS, termination_detail

JSON = dict[str, Any]

#: on the Deployment: a digest of everything the operator derives from the spec except ``replicas`` (a change
#: of it means the pod template must be replaced; a change of replicas alone is a scale)
SPEC_HASH_ANNOTATION = "tuneforge.dev/spec-hash"
VLLM_COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
FETCHER_MODULE = "tuneforge.engine.adapter_fetcher"
#: owned by the operator in ``status`` (the service reads them, writes none)
OWNED_FIELDS = ("phase", "reason", "message", "replicas", "readyReplicas", "observedGeneration", "deploymentName",
                "serviceName")


#: reasons of a ``Starting`` engine that need a person (a Warning event)
TROUBLE_REASONS = frozenset({"Unschedulable", "ImagePullBackOff", "ContainerConfigError", "WeightsFetchFailed",
                             "EngineCrashLoop"})


class InvalidServingSpec(ValueError):
    """The ServingEngine cannot be turned into a Deployment (its spec must be fixed)."""


def validate_spec(engine: Mapping[str, Any]) -> ServingEngineSpec:
    raw = engine.get("spec")
    if not isinstance(raw, dict):
        raise InvalidServingSpec("spec is missing")
    try:
        return ServingEngineSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidServingSpec(first_problem(exc.errors(), raw, "spec")) from None


def owner_reference(engine: Mapping[str, Any]) -> JSON:
    meta = engine["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def selector_labels(name: str) -> dict[str, str]:
    return {LABEL_SERVINGENGINE: name, LABEL_COMPONENT: COMPONENT}


def _labels(engine: Mapping[str, Any], spec: ServingEngineSpec) -> dict[str, str]:
    return {**selector_labels(engine["metadata"]["name"]), LABEL_BASE_MODEL: label_value(spec.base_model),
            LABEL_MANAGED_BY: MANAGED_BY_OPERATOR}


def _meta(engine: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> JSON:
    return {"name": name, "namespace": engine["metadata"]["namespace"], "labels": dict(labels),
            "ownerReferences": [owner_reference(engine)]}


def vllm_args(spec: ServingEngineSpec) -> list[str]:
    v = spec.vllm
    args = ["--model", BASE_MODEL_DIR, "--served-model-name", spec.base_model, "--enable-lora",
            "--max-loras", str(v.max_loras), "--max-lora-rank", str(v.max_lora_rank),
            "--host", "0.0.0.0", "--port", str(ENGINE_PORT)]
    if v.max_model_len is not None:
        args += ["--max-model-len", str(v.max_model_len)]
    if v.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(v.gpu_memory_utilization)]
    return args + list(v.extra_args or [])


def _container_security() -> JSON:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


#: every container writes only to its volumes and /tmp
_COMMON_ENV: list[JSON] = [
    {"name": "HOME", "value": "/tmp"},
    {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
    {"name": "PYTHONUNBUFFERED", "value": "1"},
    {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    {"name": "HF_HUB_OFFLINE", "value": "1"},
]


def _probe(path: str, port: int, period: int, failures: int) -> JSON:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": 5}


def _engine_container(spec: ServingEngineSpec, config: OperatorSettings) -> JSON:
    gpus = spec.scheduling.gpus
    requests: JSON = {}
    limits: JSON = {}
    if spec.resources is not None and spec.resources.cpu is not None:
        requests["cpu"] = str(spec.resources.cpu)
    if spec.resources is not None and spec.resources.memory is not None:
        requests["memory"] = limits["memory"] = str(spec.resources.memory)
    if gpus > 0:
        requests[config.gpu_resource] = limits[config.gpu_resource] = str(gpus)
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return {
        "name": ENGINE_CONTAINER,
        "image": spec.image or config.serving_image,
        "imagePullPolicy": spec.image_pull_policy or config.image_pull_policy,
        "command": list(VLLM_COMMAND),
        "args": vllm_args(spec),
        "env": [*_COMMON_ENV,
                {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
                {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
                {"name": "DO_NOT_TRACK", "value": "1"},
                {"name": "HF_HOME", "value": "/tmp/hf"},
                {"name": "VLLM_CACHE_ROOT", "value": "/tmp/vllm"},
                {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"}],
        "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        "resources": resources,
        # loading a large model takes minutes: the startup probe allows for it, then liveness takes over
        "startupProbe": _probe("/health", ENGINE_PORT, 10, max(1, spec.startup_seconds // 10)),
        "readinessProbe": _probe("/health", ENGINE_PORT, 5, 3),
        "livenessProbe": _probe("/health", ENGINE_PORT, 15, 4),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            {"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _store_env(spec: ServingEngineSpec, config: OperatorSettings) -> JSON:
    secret = spec.storage_secret or config.storage_secret
    return {"envFrom": [{"secretRef": {"name": secret}}]} if secret else {}


def _weights_container(spec: ServingEngineSpec, config: OperatorSettings) -> JSON:
    source = (["--catalogue", spec.weights.catalogue] if spec.weights.catalogue is not None
              else ["--prefix", str(spec.weights.prefix)])
    return {
        "name": WEIGHTS_CONTAINER,
        "image": spec.fetcher_image or config.default_image,
        "imagePullPolicy": spec.image_pull_policy or config.image_pull_policy,
        "command": ["python", "-m", FETCHER_MODULE, "weights", "--store", spec.storage_url, *source,
                    "--dest", BASE_MODEL_DIR],
        "env": [*_COMMON_ENV, {"name": "TUNEFORGE_MODEL_CACHE", "value": f"{MODELS_DIR}/cache"}],
        **_store_env(spec, config),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _fetcher_token_env(config: OperatorSettings) -> JSON:
    """The sidecar's bearer token, by reference to the operator's Secret: the token itself is in no manifest."""
    return {"name": FETCHER_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": config.fetcher_token_secret,
                                                                       "key": config.fetcher_token_key}}}


def _fetcher_container(spec: ServingEngineSpec, config: OperatorSettings) -> JSON:
    return {
        "name": FETCHER_CONTAINER,
        "image": spec.fetcher_image or config.default_image,
        "imagePullPolicy": spec.image_pull_policy or config.image_pull_policy,
        "command": ["python", "-m", FETCHER_MODULE, "serve", "--store", spec.storage_url, "--dir", ADAPTERS_DIR,
                    "--host", "0.0.0.0", "--port", str(FETCHER_PORT)],
        "env": [*_COMMON_ENV, _fetcher_token_env(config)],
        **_store_env(spec, config),
        "ports": [{"name": "fetcher", "containerPort": FETCHER_PORT}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "readinessProbe": _probe("/health", FETCHER_PORT, 5, 3),
        "volumeMounts": [{"name": "adapters", "mountPath": ADAPTERS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(),
    }


def _scheduling(spec: ServingEngineSpec, config: OperatorSettings) -> JSON:
    s = spec.scheduling
    pod: JSON = {}
    selector: dict[str, str] = {}
    if s.gpu_type:
        selector[config.gpu_type_label] = s.gpu_type
    selector.update(s.node_selector or {})
    if selector:
        pod["nodeSelector"] = selector
    tolerations = [dict(t) for t in s.tolerations or []]
    if s.gpus > 0 and not any(t.get("key") == config.gpu_resource for t in tolerations):
        tolerations.append({"key": config.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod["tolerations"] = tolerations
    if s.priority_class_name:
        pod["priorityClassName"] = s.priority_class_name
    return pod


def _pod_spec(spec: ServingEngineSpec, config: OperatorSettings) -> JSON:
    pod: JSON = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": True, "runAsUser": config.run_as_user, "runAsGroup": config.run_as_user,
                            "fsGroup": config.run_as_user, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [_weights_container(spec, config)],
        "containers": [_engine_container(spec, config), _fetcher_container(spec, config)],
        "volumes": [
            {"name": "models", "emptyDir": {}},
            {"name": "adapters", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
        ],
        **_scheduling(spec, config),
    }
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return pod


def spec_hash(spec: ServingEngineSpec, config: OperatorSettings) -> str:
    text = json.dumps(_pod_spec(spec, config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_deployment(engine: Mapping[str, Any], spec: ServingEngineSpec, config: OperatorSettings) -> JSON:
    name = engine["metadata"]["name"]
    labels = _labels(engine, spec)
    meta = _meta(engine, serving_child_names(name).deployment, labels)
    meta["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(spec, config)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            # one engine holds the GPU: the old pod goes before the new one starts
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 2,
            "progressDeadlineSeconds": spec.startup_seconds + 600,
            "template": {"metadata": {"labels": labels}, "spec": _pod_spec(spec, config)},
        },
    }


def build_service(engine: Mapping[str, Any], spec: ServingEngineSpec) -> JSON:
    name = engine["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(engine, serving_child_names(name).service, _labels(engine, spec)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http"},
                      {"name": "fetcher", "port": FETCHER_PORT, "targetPort": "fetcher"}],
        },
    }


def serving_manifests(engine: Mapping[str, Any], config: OperatorSettings) -> list[JSON]:
    """The Deployment and the Service of a ServingEngine (raises :class:`InvalidServingSpec`)."""
    spec = validate_spec(engine)
    return [build_deployment(engine, spec, config), build_service(engine, spec)]


# --------------------------------------------------------------------------- status -> plan


@dataclass(frozen=True)
class CreateServing:
    """Create these manifests; an existing one (409) is left as it is."""

    manifests: list[JSON]


@dataclass(frozen=True)
class ScaleDeployment:
    name: str
    replicas: int


@dataclass(frozen=True)
class ReplaceDeployment:
    """The spec changed beyond replicas: replace the Deployment's spec (a new pod template)."""

    manifest: JSON


ServingAction = CreateServing | ScaleDeployment | ReplaceDeployment


@dataclass
class ServingPlan:
    actions: list[ServingAction]
    #: the complete operator-owned status
    status: JSON
    #: merge patch for ``status`` (changed fields only); None when nothing changed
    patch: JSON | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return {}


def _observe(deployment: Mapping[str, Any], want: int, synced: bool) -> tuple[str, str, str]:
    """(phase, reason, message) of a Deployment that exists and carries the wanted template."""
    st = deployment.get("status") or {}
    ready, current = int(st.get("readyReplicas") or 0), int(st.get("replicas") or 0)
    name = deployment["metadata"]["name"]
    if want == 0:
        if current == 0:
            return "ScaledToZero", "ScaledToZero", "No engine runs; the next request starts one"
        return "Stopping", "Stopping", f"Deployment {name}: the engine pod is stopping"
    progressing = _condition(deployment, "Progressing")
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return "Failed", "ProgressDeadlineExceeded", str(progressing.get("message") or "the engine did not start")
    failure = _condition(deployment, "ReplicaFailure")
    if failure.get("status") == "True":
        return "Failed", str(failure.get("reason") or "ReplicaFailure"), str(failure.get("message") or "")
    if synced and ready >= 1 and int(st.get("updatedReplicas") or 0) >= 1:
        return "Ready", "EngineReady", f"vLLM answers on Service {name}"
    return "Starting", "EngineStarting", (f"Deployment {name}: waiting for the engine pod to load the model and "
                                          "pass its readiness probe")


def pod_trouble(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of what keeps the engine pod from starting, if a user can act on it: it cannot be
    scheduled, its image cannot be pulled, or the weight fetcher failed (its last line says why)."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and \
                    cond.get("reason") == "Unschedulable":
                return "Unschedulable", f"The engine pod cannot be scheduled: {cond.get('message') or ''}".rstrip(": ")
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            ended = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if waiting.get("reason") in IMAGE_PULL_REASONS:
                return "ImagePullBackOff", f"{cs.get('name')}: cannot pull {cs.get('image')}: {waiting.get('message')}"
            if waiting.get("reason") in CONFIG_ERROR_REASONS:
                return "ContainerConfigError", f"{cs.get('name')}: {waiting.get('message') or waiting['reason']}"
            if cs.get("name") == WEIGHTS_CONTAINER and ended.get("exitCode") not in (None, 0):
                detail = termination_detail(ended.get("message")) or f"exit code {ended.get('exitCode')}"
                return "WeightsFetchFailed", f"The base weights could not be fetched: {detail}"
            if cs.get("name") == ENGINE_CONTAINER and waiting.get("reason") == "CrashLoopBackOff":
                detail = termination_detail(ended.get("message")) or "it keeps exiting"
                return "EngineCrashLoop", f"vLLM does not start: {detail}"
    return None


def serving_plan(engine: Mapping[str, Any], deployment: Mapping[str, Any] | None, service: Mapping[str, Any] | None,
                 config: OperatorSettings, pods: Sequence[Mapping[str, Any]] = ()) -> ServingPlan:
    """What to do for one ServingEngine, and its new status, from its Deployment, Service and pods as they are."""
    meta = engine.get("metadata") or {}
    prior = engine.get("status") or {}
    names = serving_child_names(meta["name"])
    generation = meta.get("generation")
    actions: list[ServingAction] = []
    status: JSON = {"deploymentName": names.deployment, "serviceName": names.service,
                    "observedGeneration": prior.get("observedGeneration")}
    try:
        spec = validate_spec(engine)
    except InvalidServingSpec as exc:
        status.update(phase="Failed", reason="InvalidSpec", message=str(exc), replicas=0, readyReplicas=0,
                      observedGeneration=generation)
        return _finish(prior, status, actions)
    if not config.fetcher_token_secret:
        # an engine pod whose sidecar takes requests from anyone who reaches it is never made
        status.update(phase="Failed", reason="NoFetcherToken", replicas=0, readyReplicas=0,
                      observedGeneration=generation,
                      message="The operator has no TUNEFORGE_OPERATOR_FETCHER_TOKEN_SECRET: the Secret with the "
                      "adapter-fetcher sidecar's bearer token (the chart creates it with serving.enabled)")
        return _finish(prior, status, actions)

    wanted = build_deployment(engine, spec, config)
    if deployment is None:
        actions.append(CreateServing([wanted, build_service(engine, spec)]))
        status.update(phase="Pending" if spec.replicas == 0 else "Starting", reason="Creating",
                      message=f"Creating Deployment {names.deployment} and Service {names.service}",
                      replicas=0, readyReplicas=0)
        return _finish(prior, status, actions)
    if service is None:
        actions.append(CreateServing([build_service(engine, spec)]))
    current_hash = ((deployment.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if current_hash != wanted["metadata"]["annotations"][SPEC_HASH_ANNOTATION]:
        actions.append(ReplaceDeployment(wanted))
    elif int((deployment.get("spec") or {}).get("replicas") or 0) != spec.replicas:
        actions.append(ScaleDeployment(names.deployment, spec.replicas))
    dst = deployment.get("status") or {}
    dmeta = deployment.get("metadata") or {}
    # the Deployment reflects this generation of the spec once nothing is left to change and its controller has
    # seen its latest spec: only then does ``observedGeneration`` move (the service waits for it)
    synced = not actions and int(dst.get("observedGeneration") or 0) >= int(dmeta.get("generation") or 0)
    if actions:
        phase = "Starting" if spec.replicas else "Stopping"
        reason, message = "Scaling", f"Scaling Deployment {names.deployment} to {spec.replicas}"
    else:
        phase, reason, message = _observe(deployment, spec.replicas, synced)
        trouble = pod_trouble(pods) if phase == "Starting" else None
        if trouble is not None:  # still starting (the Deployment keeps trying), but the user learns why not yet
            reason, message = trouble
    status.update(phase=phase, reason=reason, message=message, replicas=int(dst.get("replicas") or 0),
                  readyReplicas=int(dst.get("readyReplicas") or 0) if synced else 0)
    if synced:
        status["observedGeneration"] = generation
    return _finish(prior, status, actions)


def _finish(prior: Mapping[str, Any], status: JSON, actions: list[ServingAction]) -> ServingPlan:
    status = {k: v for k, v in status.items() if v is not None}
    patch = {k: v for k, v in status.items() if prior.get(k) != v}
    events: list[tuple[str, str, str]] = []
    if "phase" in patch or "reason" in patch:
        kind = "Warning" if status.get("phase") == "Failed" or status.get("reason") in TROUBLE_REASONS else "Normal"
        events.append((kind, str(status.get("reason")), str(status.get("message"))))
    return ServingPlan(actions, status, patch or None, events)
