"""Unit tests of the pure FineTuneJob -> manifests builder and of the CRD (no cluster needed)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from tests.operator.helpers import CRD_DIR, finetunejob
from tuneforge.contracts.finetunejob import crd_manifest as build_crd
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.contracts.settings import explicit
from tuneforge.operator.config import OperatorSettings
from tuneforge.operator.crd import to_yaml
from tuneforge.operator.manifests import (
    InvalidSpec,
    build_children,
    child_names,
    label_value,
    pod_failure_policy,
)
from tuneforge.operator.status import OWNED_FIELDS

CONFIG = explicit(OperatorSettings, gpu_type_label="tuneforge.dev/gpu-type", default_image="registry/trainer:1.0")


def cr(name: str = "ftjob-abc", **spec: Any) -> dict[str, Any]:
    body = finetunejob(name, **spec)
    body["metadata"].update({"namespace": "team-a", "uid": "uid-1234", "generation": 1})
    return body


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def pod_of(children: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(children)["Job"]["spec"]["template"]["spec"]


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod["containers"][0]["env"]}


def test_children_are_deterministic_and_owned():
    first, second = build_children(cr(), CONFIG), build_children(cr(), CONFIG)
    assert first == second  # same input, same manifests: reconciles are repeatable
    assert [c["kind"] for c in first] == ["ConfigMap", "Job"]  # the Job last: it mounts the ConfigMap
    names = child_names("ftjob-abc")
    assert (names.job, names.configmap, names.token_secret) == (
        "ftjob-abc", "ftjob-abc-jobspec", "ftjob-abc-progress-token")
    for child in first:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "name": "ftjob-abc",
                         "uid": "uid-1234", "controller": True, "blockOwnerDeletion": True}
        assert child["metadata"]["namespace"] == "team-a"
        assert child["metadata"]["labels"]["tuneforge.dev/finetunejob"] == "ftjob-abc"


def test_jobspec_goes_into_an_immutable_configmap_without_token():
    cm = by_kind(build_children(cr(), CONFIG))["ConfigMap"]
    assert cm["immutable"] is True
    spec = JobSpec.from_json(cm["data"]["jobspec.json"])
    assert spec.job_id == "ftjob-abc" and spec.progress is not None and spec.progress.token == ""


def test_job_spec_policies():
    job = by_kind(build_children(cr(), CONFIG))["Job"]["spec"]
    assert job["backoffLimit"] == 2 and job["completions"] == job["parallelism"] == 1
    assert job["activeDeadlineSeconds"] == 7 * 24 * 3600 and job["ttlSecondsAfterFinished"] == 86400
    assert job["podReplacementPolicy"] == "Failed" and job["suspend"] is False
    assert job["podFailurePolicy"] == pod_failure_policy()
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                             "values": [65]}}
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [75]
    assert rules[2] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    custom = by_kind(build_children(cr(backoffLimit=0, activeDeadlineSeconds=60, ttlSecondsAfterFinished=5),
                                   CONFIG))["Job"]["spec"]
    assert (custom["backoffLimit"], custom["activeDeadlineSeconds"], custom["ttlSecondsAfterFinished"]) == (0, 60, 5)


def test_pod_runs_the_trainer_locked_down():
    pod = pod_of(build_children(cr(), CONFIG))
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["name"] == "trainer" and container["image"] == "registry/trainer:1.0"
    assert container["command"] == ["python", "-m", "tuneforge.trainer", "--spec", "/etc/tuneforge/jobspec.json"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/tuneforge": "jobspec", "/work": "work", "/cache": "cache", "/tmp": "tmp",
                      "/dev/shm": "dshm"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["work"] == {"name": "work", "emptyDir": {}} and volumes["tmp"]["emptyDir"] == {}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["jobspec"]["configMap"]["name"] == "ftjob-abc-jobspec"
    assert volumes["cache"] == {"name": "cache", "emptyDir": {}}
    assert env_of(pod)["TUNEFORGE_MODEL_CACHE"]["value"] == "/cache/models"
    shared = pod_of(build_children(cr(modelCache={"claimName": "models"}), CONFIG))
    assert {v["name"]: v for v in shared["volumes"]}["cache"]["persistentVolumeClaim"] == {"claimName": "models"}
    env = {e["name"]: e for e in container["env"]}
    assert env["TUNEFORGE_PROGRESS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "ftjob-abc-progress-token", "key": "token"}
    assert env["TUNEFORGE_WORKDIR"]["value"] == "/work" and env["HOME"]["value"] == "/tmp"
    assert "envFrom" not in container  # no storage Secret configured
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_gpus_selector_tolerations_priority_and_kueue():
    body = cr(gpus=4, gpu_type="h100", scheduling={
        "gpus": 4, "gpuType": "h100", "nodeSelector": {"pool": "train"}, "priorityClassName": "batch-low",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "queueName": "team-a-queue"})
    children = build_children(body, CONFIG)
    job = by_kind(children)["Job"]
    pod = pod_of(children)
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "4"
    assert pod["nodeSelector"] == {"tuneforge.dev/gpu-type": "h100", "pool": "train"}
    assert pod["priorityClassName"] == "batch-low"
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["dedicated", "nvidia.com/gpu"]  # GPU taint tolerated automatically
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-queue"
    assert job["spec"]["suspend"] is True  # Kueue admits it


def test_cpu_only_job_requests_no_gpu_and_no_toleration():
    body = cr(scheduling={"gpus": 0}, resources={"cpu": "4", "memory": "16Gi"})
    pod = pod_of(build_children(body, CONFIG))
    res = pod["containers"][0]["resources"]
    assert res == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_storage_secret_token_secret_env_and_pod_metadata():
    body = cr(storageSecret="s3-credentials", progressTokenSecret={"name": "my-token", "key": "t"},
              env=[{"name": "HF_HUB_OFFLINE", "value": "1"}], podLabels={"team": "nlp"},
              podAnnotations={"sidecar.istio.io/inject": "false"}, serviceAccountName="trainer",
              imagePullSecrets=[{"name": "regcred"}], image="my/trainer:2")
    children = build_children(body, CONFIG)
    pod = pod_of(children)
    template = by_kind(children)["Job"]["spec"]["template"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["TUNEFORGE_PROGRESS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "my-token", "key": "t"}
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert template["metadata"]["labels"]["team"] == "nlp"
    assert template["metadata"]["labels"]["tuneforge.dev/finetunejob"] == "ftjob-abc"
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert pod["serviceAccountName"] == "trainer" and pod["automountServiceAccountToken"] is False
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and container["image"] == "my/trainer:2"
    default_secret = explicit(OperatorSettings, storage_secret="cluster-s3")
    assert pod_of(build_children(cr(), default_secret))["containers"][0]["envFrom"] == [
        {"secretRef": {"name": "cluster-s3"}}]


def test_multi_node_is_an_indexed_job_with_a_headless_service():
    children = build_children(cr(scheduling={"gpus": 8, "nodes": 2}), CONFIG)
    assert [c["kind"] for c in children] == ["ConfigMap", "Service", "Job"]
    svc, job = by_kind(children)["Service"], by_kind(children)["Job"]
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == "ftjob-abc-workers"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "ftjob-abc-workers"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["TUNEFORGE_RDZV_ENDPOINT"]["value"] == "ftjob-abc-0.ftjob-abc-workers:29500"
    assert "job-completion-index" in env["TUNEFORGE_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]


def test_invalid_specs_are_rejected_with_the_field():
    body = cr()
    body["spec"]["jobSpec"]["method"]["supervised"]["hyperparameters"]["n_epochs"] = 0
    where = r"spec\.jobSpec\.method\.supervised\.hyperparameters\.n_epochs"
    with pytest.raises(InvalidSpec, match=where + ": .*greater than or equal to 1"):
        build_children(body, CONFIG)
    body = cr()
    body["spec"]["jobSpec"]["progress"]["token"] = "leaked"
    with pytest.raises(InvalidSpec, match="token must be empty"):
        build_children(body, CONFIG)
    body = cr()
    del body["spec"]["jobSpec"]
    with pytest.raises(InvalidSpec, match="missing"):
        build_children(body, CONFIG)


def test_builder_does_not_mutate_its_input():
    body = cr(scheduling={"gpus": 1, "tolerations": [{"key": "a", "operator": "Exists"}]})
    before = copy.deepcopy(body)
    build_children(body, CONFIG)
    assert body == before


def test_label_values_are_valid():
    assert label_value("acme/team a") == "acme-team-a"
    assert len(label_value("x" * 100)) == 63
    assert label_value("-a-") == "a"


def test_crd_yaml_in_the_chart_matches_the_contract_model():
    """helm/crds is generated from tuneforge.contracts.finetunejob: a change to the model without regenerating
    fails here."""
    path = CRD_DIR / "finetunejobs.tuneforge.dev.yaml"
    assert path.read_text() == to_yaml(), "regenerate: python -m tuneforge.operator.crd > " + str(path)
    crd = yaml.safe_load(path.read_text())
    assert crd == json.loads(json.dumps(build_crd()))


def test_crd_shape():
    crd = build_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "finetunejobs.tuneforge.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["ftj"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Method", "Model", "Phase", "Progress", "Age"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    assert schema["spec"]["required"] == ["jobSpec"]
    assert schema["spec"]["properties"]["jobSpec"]["properties"]["progress"]["properties"]["token"]["maxLength"] == 0
    status = schema["status"]["properties"]
    assert {"phase", "conditions", "observedGeneration", "attempts", "startTime", "completionTime", "podNames",
            "activePods", "lastCheckpoint", "progress", "reason", "message"} <= set(status)
    # everything the operator writes is in the schema (the apiserver would drop the rest)
    assert set(OWNED_FIELDS) <= set(status)
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_crd_accepts_what_the_model_dumps_and_types_its_fields():
    """The model and the CRD describe the same resource: every field the model can dump is in the schema."""
    from tuneforge.contracts.finetunejob import FineTuneJobSpec, Scheduling

    props = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(FineTuneJobSpec.model_json_schema(by_alias=True)["properties"]) == set(props)
    assert set(Scheduling.model_json_schema(by_alias=True)["properties"]) == set(props["scheduling"]["properties"])
    assert props["scheduling"]["properties"]["gpus"] == {"maximum": 64, "minimum": 0, "type": "integer",
                                                         "description": "nvidia.com/gpu per pod"}


def test_a_round_one_jobspec_still_becomes_a_job():
    """FineTuneJobs created before JobSpec v2 (flat hyperparameters) are read and run, converted."""
    from tests.operator.helpers import jobspec_v1

    body = cr()
    body["spec"]["jobSpec"] = jobspec_v1("ftjob-abc")
    children = by_kind(build_children(body, CONFIG))
    spec = json.loads(children["ConfigMap"]["data"]["jobspec.json"])
    assert spec["version"] == "tuneforge.dev/v2"
    assert spec["method"]["supervised"]["hyperparameters"]["n_epochs"] == 1
