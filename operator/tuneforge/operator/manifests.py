"""FineTuneJob -> child manifests (a ConfigMap with the JobSpec, a batch/v1 Job, a headless Service for
multi-node runs). Pure: no API calls, no clock, no randomness; the same FineTuneJob always gives the same
manifests, so a reconcile can be repeated any number of times (deterministic names make creation idempotent).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tuneforge.contracts.exit_codes import ExitCode
from tuneforge.contracts.finetunejob import (
    API_VERSION,
    JOBSPEC_DIR,
    JOBSPEC_FILE,
    KIND,
    KUEUE_QUEUE_LABEL,
    LABEL_COMPONENT,
    LABEL_FINETUNEJOB,
    LABEL_JOB_ID,
    LABEL_MANAGED_BY,
    LABEL_TENANT,
    TRAINER_CONTAINER,
    WORK_DIR,
    ChildNames,
    child_names,
    label_value,
)
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.contracts.validation import first_problem
from tuneforge.operator.config import OperatorSettings

JSON = dict[str, Any]

MODEL_CACHE_DIR = "/cache"
TRAINER_COMMAND = ["python", "-m", "tuneforge.trainer", "--spec", f"{JOBSPEC_DIR}/{JOBSPEC_FILE}"]
RENDEZVOUS_PORT = 29500


class InvalidSpec(ValueError):
    """The FineTuneJob cannot be turned into a Job (the user must fix it; retrying does not help)."""


def owner_reference(cr: Mapping[str, Any]) -> JSON:
    meta = cr["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def validate_jobspec(cr: Mapping[str, Any]) -> JobSpec:
    raw = (cr.get("spec") or {}).get("jobSpec")
    if not isinstance(raw, dict):
        raise InvalidSpec("spec.jobSpec is missing")
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidSpec(first_problem(exc.errors(), raw, "spec.jobSpec")) from None
    if spec.progress is not None and spec.progress.token:
        raise InvalidSpec("spec.jobSpec.progress.token must be empty: the token comes from progressTokenSecret")
    return spec


def _labels(cr: Mapping[str, Any], jobspec: JobSpec) -> dict[str, str]:
    return {
        LABEL_FINETUNEJOB: cr["metadata"]["name"],
        LABEL_JOB_ID: label_value(jobspec.job_id),
        LABEL_TENANT: label_value(jobspec.tenant_id),
        LABEL_MANAGED_BY: "tuneforge-operator",
        LABEL_COMPONENT: "trainer",
    }


def _meta(cr: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> JSON:
    return {
        "name": name,
        "namespace": cr["metadata"]["namespace"],
        "labels": dict(labels),
        "ownerReferences": [owner_reference(cr)],
    }


def gpus_of(spec: Mapping[str, Any], jobspec: JobSpec) -> int:
    scheduling = spec.get("scheduling") or {}
    gpus = scheduling.get("gpus")
    return int(gpus) if gpus is not None else int(jobspec.resources.gpus)


def nodes_of(spec: Mapping[str, Any], jobspec: JobSpec) -> int:
    scheduling = spec.get("scheduling") or {}
    nodes = scheduling.get("nodes")
    return max(1, int(nodes) if nodes is not None else int(jobspec.resources.nodes))


def build_configmap(cr: Mapping[str, Any], jobspec: JobSpec) -> JSON:
    names = child_names(cr["metadata"]["name"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(cr, names.configmap, _labels(cr, jobspec)),
        "data": {JOBSPEC_FILE: jobspec.to_json()},
        "immutable": True,
    }


def build_service(cr: Mapping[str, Any], jobspec: JobSpec) -> JSON:
    """Headless Service giving the pods of a multi-node job stable DNS names (rank 0 = rendezvous)."""
    names = child_names(cr["metadata"]["name"])
    labels = _labels(cr, jobspec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(cr, names.service, labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_FINETUNEJOB: cr["metadata"]["name"]},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def pod_failure_policy() -> JSON:
    """Exit codes of the trainer contract -> Job actions (first matching rule wins).

    65 (bad input): fail the Job at once. 75 (preempted, checkpoint saved) and any disruption (preemption,
    eviction, node drain): replace the pod without counting a failure. Anything else counts towards
    backoffLimit.
    """
    return {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In",
                                                  "values": [int(ExitCode.BAD_INPUT)]}},
            {"action": "Ignore", "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In",
                                                 "values": [int(ExitCode.PREEMPTED)]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _env(cr: Mapping[str, Any], names: ChildNames, nodes: int) -> list[JSON]:
    spec = cr.get("spec") or {}
    token_ref = spec.get("progressTokenSecret") or {}
    env: list[JSON] = [
        {"name": "TUNEFORGE_JOBSPEC", "value": f"{JOBSPEC_DIR}/{JOBSPEC_FILE}"},
        {"name": "TUNEFORGE_PROGRESS_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": token_ref.get("name") or names.token_secret, "key": token_ref.get("key") or "token"}}},
        {"name": "TUNEFORGE_WORKDIR", "value": WORK_DIR},
        {"name": "TUNEFORGE_MODEL_CACHE", "value": f"{MODEL_CACHE_DIR}/models"},
        {"name": "HF_HOME", "value": f"{WORK_DIR}/hf"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "TUNEFORGE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if nodes > 1:
        # the trainer's launcher (tuneforge.trainer.launch) runs torchrun with a c10d rendezvous on pod 0
        env += [
            {"name": "TUNEFORGE_RDZV_ENDPOINT", "value": f"{names.job}-0.{names.service}:{RENDEZVOUS_PORT}"},
            {"name": "TUNEFORGE_NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        ]
    for item in spec.get("env") or []:
        env.append({"name": str(item["name"]), "value": str(item.get("value", ""))})
    return env


def _resources(spec: Mapping[str, Any], gpus: int, config: OperatorSettings) -> JSON:
    res = spec.get("resources") or {}
    requests: JSON = {}
    limits: JSON = {}
    if res.get("cpu") is not None:
        requests["cpu"] = str(res["cpu"])
    if res.get("memory") is not None:
        requests["memory"] = limits["memory"] = str(res["memory"])
    if gpus > 0:
        requests[config.gpu_resource] = limits[config.gpu_resource] = str(gpus)
    out: JSON = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _scheduling(spec: Mapping[str, Any], gpus: int, config: OperatorSettings) -> JSON:
    scheduling = spec.get("scheduling") or {}
    pod: JSON = {}
    selector: dict[str, str] = {}
    if scheduling.get("gpuType"):
        selector[config.gpu_type_label] = str(scheduling["gpuType"])
    selector.update({str(k): str(v) for k, v in (scheduling.get("nodeSelector") or {}).items()})
    if selector:
        pod["nodeSelector"] = selector
    tolerations = [dict(t) for t in scheduling.get("tolerations") or []]
    if gpus > 0 and not any(t.get("key") == config.gpu_resource for t in tolerations):
        # GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule so that only GPU pods land there
        tolerations.append({"key": config.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod["tolerations"] = tolerations
    if scheduling.get("affinity"):
        pod["affinity"] = dict(scheduling["affinity"])
    if scheduling.get("priorityClassName"):
        pod["priorityClassName"] = str(scheduling["priorityClassName"])
    return pod


def _cache_volume(spec: Mapping[str, Any]) -> JSON:
    """Base models are cached at /cache: a shared PersistentVolumeClaim when the FineTuneJob names one
    (pods then skip the download), else an emptyDir per pod."""
    claim = (spec.get("modelCache") or {}).get("claimName")
    if claim:
        return {"name": "cache", "persistentVolumeClaim": {"claimName": str(claim)}}
    return {"name": "cache", "emptyDir": {}}


def build_job(cr: Mapping[str, Any], jobspec: JobSpec, config: OperatorSettings) -> JSON:
    spec = cr.get("spec") or {}
    names = child_names(cr["metadata"]["name"])
    labels = _labels(cr, jobspec)
    gpus = gpus_of(spec, jobspec)
    nodes = nodes_of(spec, jobspec)
    queue = (spec.get("scheduling") or {}).get("queueName")

    container: JSON = {
        "name": TRAINER_CONTAINER,
        "image": spec.get("image") or config.default_image,
        "imagePullPolicy": spec.get("imagePullPolicy") or config.image_pull_policy,
        "command": list(TRAINER_COMMAND),
        "env": _env(cr, names, nodes),
        "resources": _resources(spec, gpus, config),
        "volumeMounts": [
            {"name": "jobspec", "mountPath": JOBSPEC_DIR, "readOnly": True},
            {"name": "work", "mountPath": WORK_DIR},
            {"name": "cache", "mountPath": MODEL_CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # the trainer's last stderr line ("tuneforge: <why>") becomes the termination message on failure
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.get("storageSecret") or config.storage_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.get("storageSecret") or config.storage_secret}}]
    if nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]

    pod_labels = {**{str(k): str(v) for k, v in (spec.get("podLabels") or {}).items()}, **labels}
    pod_spec: JSON = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": int(
            spec.get("terminationGracePeriodSeconds", config.termination_grace_seconds)),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "jobspec", "configMap": {"name": names.configmap,
                                              "items": [{"key": JOBSPEC_FILE, "path": JOBSPEC_FILE}]}},
            {"name": "work", "emptyDir": {}},
            _cache_volume(spec),
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
        ],
        **_scheduling(spec, gpus, config),
    }
    if spec.get("serviceAccountName"):
        pod_spec["serviceAccountName"] = str(spec["serviceAccountName"])
    if spec.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = [{"name": s["name"]} for s in spec["imagePullSecrets"]]
    if nodes > 1:
        pod_spec["subdomain"] = names.service

    job_labels = dict(labels)
    if queue:
        job_labels[KUEUE_QUEUE_LABEL] = str(queue)
    job_spec: JSON = {
        "parallelism": nodes,
        "completions": nodes,
        "backoffLimit": int(spec.get("backoffLimit", config.backoff_limit)),
        "activeDeadlineSeconds": int(spec.get("activeDeadlineSeconds", config.active_deadline_seconds)),
        "ttlSecondsAfterFinished": int(spec.get("ttlSecondsAfterFinished", config.ttl_seconds_after_finished)),
        "podFailurePolicy": pod_failure_policy(),
        # a replacement pod starts only once the old one is gone (it may still be writing its checkpoint)
        "podReplacementPolicy": "Failed",
        # Kueue admits (unsuspends) a queued Job; otherwise spec.suspend decides
        "suspend": bool(spec.get("suspend")) or bool(queue),
        "template": {
            "metadata": {"labels": pod_labels,
                         "annotations": {str(k): str(v) for k, v in (spec.get("podAnnotations") or {}).items()}},
            "spec": pod_spec,
        },
    }
    if nodes > 1:
        job_spec["completionMode"] = "Indexed"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(cr, names.job, job_labels),
        "spec": job_spec,
    }


def build_children(cr: Mapping[str, Any], config: OperatorSettings) -> list[JSON]:
    """Everything to create for a FineTuneJob, in creation order (the Job last: it needs the others)."""
    jobspec = validate_jobspec(cr)
    children = [build_configmap(cr, jobspec)]
    if nodes_of(cr.get("spec") or {}, jobspec) > 1:
        children.append(build_service(cr, jobspec))
    children.append(build_job(cr, jobspec, config))
    return children


def jobspec_json(cr: Mapping[str, Any]) -> str:
    """The JobSpec exactly as the trainer reads it (for tests and debugging)."""
    return json.dumps(json.loads(validate_jobspec(cr).to_json()), indent=2)
