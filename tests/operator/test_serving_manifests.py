"""ServingEngine -> Deployment + Service, and the Deployment's state -> plan and status: pure functions, no
cluster. Also the ServingEngine CRD (generated from the contract) and the service's ServingEngine builder."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge.contracts.servingengine import (
    LABEL_SERVINGENGINE,
    ServingEngine,
    crd_manifest,
    engine_name,
)
from tuneforge.contracts.settings import explicit
from tuneforge.operator.config import OperatorSettings
from tuneforge.operator.crd import CRDS, to_yaml
from tuneforge.operator.serving import (
    SPEC_HASH_ANNOTATION,
    CreateServing,
    InvalidServingSpec,
    ReplaceDeployment,
    ScaleDeployment,
    serving_manifests,
    serving_plan,
)
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.domain.serving import Target
from tuneforge.service.executors.serving_cluster import build_servingengine, is_ready

ROOT = Path(__file__).resolve().parents[2]
CONFIG = explicit(OperatorSettings, gpu_type_label="tuneforge.dev/gpu-type", storage_secret="store-creds",
                  serving_image="vllm/vllm-openai:v0.11.0", default_image="tuneforge/trainer:1",
                  fetcher_token_secret="tf-serving")
BASE = "SmolLM2-135M-Instruct"


def engine(generation: int = 1, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "tuneforge.dev/v1alpha1", "kind": "ServingEngine",
        "metadata": {"name": engine_name(BASE), "namespace": "tf", "uid": "uid-1", "generation": generation},
        "spec": {"baseModel": BASE, "weights": {"catalogue": BASE}, "storageUrl": "s3://bucket/tf", "replicas": 1,
                 "vllm": {"maxLoras": 4, "maxLoraRank": 32, "maxModelLen": 2048}, **spec},
    }
    if status is not None:
        body["status"] = status
    return body


def deployment_of(cr: dict[str, Any], replicas: int | None = None, ready: int = 0, generation: int = 1,
                  observed: int = 1, **status: Any) -> dict[str, Any]:
    dep = copy.deepcopy(serving_manifests(cr, CONFIG)[0])
    dep["metadata"]["generation"] = generation
    if replicas is not None:
        dep["spec"]["replicas"] = replicas
    dep["status"] = {"observedGeneration": observed, "replicas": dep["spec"]["replicas"], "readyReplicas": ready,
                     "updatedReplicas": dep["spec"]["replicas"], **status}
    return dep


SERVICE = {"metadata": {"name": "x"}}


# --------------------------------------------------------------------------- manifests


def test_a_serving_engine_becomes_a_vllm_deployment_and_its_service() -> None:
    cr = engine()
    deployment, service = serving_manifests(cr, CONFIG)
    name = engine_name(BASE)
    assert name.startswith("engine-smollm2-135m-instruct-") and len(name) <= 63
    assert (deployment["kind"], deployment["metadata"]["name"]) == ("Deployment", name)
    assert (service["kind"], service["metadata"]["name"]) == ("Service", name)
    for child in (deployment, service):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ServingEngine", "name": name,
                         "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pod_labels[LABEL_SERVINGENGINE] == name
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001}

    pod = spec["template"]["spec"]
    vllm, sidecar = pod["containers"]
    assert vllm["image"] == "vllm/vllm-openai:v0.11.0"
    assert vllm["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = vllm["args"]
    assert args[:2] == ["--model", "/models/base"] and "--enable-lora" in args
    assert args[args.index("--max-loras") + 1] == "4" and args[args.index("--max-lora-rank") + 1] == "32"
    assert args[args.index("--port") + 1] == "8000" and args[args.index("--max-model-len") + 1] == "2048"
    assert args[args.index("--served-model-name") + 1] == BASE
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    assert vllm["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert vllm["startupProbe"]["httpGet"]["path"] == "/health"
    assert vllm["resources"] == {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}

    (init,) = pod["initContainers"]
    assert init["image"] == sidecar["image"] == "tuneforge/trainer:1"
    assert init["command"][:4] == ["python", "-m", "tuneforge.engine.adapter_fetcher", "weights"]
    assert init["command"][-4:] == ["--catalogue", BASE, "--dest", "/models/base"]
    assert sidecar["command"][:4] == ["python", "-m", "tuneforge.engine.adapter_fetcher", "serve"]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8001}
    for container in (init, sidecar):
        assert container["envFrom"] == [{"secretRef": {"name": "store-creds"}}]
    assert "envFrom" not in vllm, "vLLM never sees the store's credentials"
    # the sidecar's bearer token: by reference to the operator's Secret, in the sidecar only
    assert {"name": "TUNEFORGE_FETCHER_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "tf-serving", "key": "fetcher-token"}}} in sidecar["env"]
    for container in (init, vllm):
        assert "TUNEFORGE_FETCHER_TOKEN" not in {e["name"] for e in container["env"]}

    # shared volumes: the init container writes the weights, the sidecar the adapters, vLLM reads both
    def mounts(c: dict[str, Any]) -> dict[str, tuple[str, bool]]:
        return {m["name"]: (m["mountPath"], bool(m.get("readOnly"))) for m in c["volumeMounts"]}

    assert mounts(init)["models"] == ("/models", False) and mounts(vllm)["models"] == ("/models", True)
    assert mounts(sidecar)["adapters"] == ("/adapters", False) and mounts(vllm)["adapters"] == ("/adapters", True)

    # non-root, no API token, nothing writable but the volumes
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in (init, vllm, sidecar):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_weights_from_a_store_prefix_gpu_type_and_options() -> None:
    cr = engine(weights={"prefix": "jobs/ftjob-1/model"}, storageSecret="own-creds", image="my/vllm:1",
                scheduling={"gpus": 2, "gpuType": "h100", "nodeSelector": {"pool": "serve"},
                            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
                resources={"cpu": 8, "memory": "64Gi"}, imagePullSecrets=[{"name": "reg"}],
                vllm={"extraArgs": ["--enforce-eager"], "gpuMemoryUtilization": 0.8})
    deployment, _ = serving_manifests(cr, CONFIG)
    pod = deployment["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"][-4:] == ["--prefix", "jobs/ftjob-1/model", "--dest", "/models/base"]
    assert init["envFrom"] == [{"secretRef": {"name": "own-creds"}}]
    vllm = pod["containers"][0]
    assert vllm["image"] == "my/vllm:1" and vllm["args"][-1] == "--enforce-eager"
    assert vllm["args"][vllm["args"].index("--gpu-memory-utilization") + 1] == "0.8"
    assert vllm["resources"] == {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
                                 "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}}
    assert pod["nodeSelector"] == {"tuneforge.dev/gpu-type": "h100", "pool": "serve"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]  # not added twice
    assert pod["imagePullSecrets"] == [{"name": "reg"}]


def test_manifests_are_deterministic_and_leave_their_input_alone() -> None:
    cr = engine()
    before = copy.deepcopy(cr)
    assert serving_manifests(cr, CONFIG) == serving_manifests(copy.deepcopy(cr), CONFIG)
    assert cr == before
    # replicas alone does not change the template's digest (a scale, not a new template)
    zero = serving_manifests(engine(replicas=0), CONFIG)[0]
    one = serving_manifests(cr, CONFIG)[0]
    assert zero["metadata"]["annotations"] == one["metadata"]["annotations"]
    other = serving_manifests(engine(vllm={"maxLoras": 5}), CONFIG)[0]
    assert other["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != one["metadata"]["annotations"][
        SPEC_HASH_ANNOTATION]


@pytest.mark.parametrize(("spec", "needle"), [
    ({"weights": {"catalogue": BASE, "prefix": "models/x"}}, "spec.weights"),
    ({"weights": {}}, "spec.weights"),
    ({"replicas": 2}, "spec.replicas"),
    ({"vllm": {"maxLoras": 0}}, "spec.vllm.maxLoras"),
    ({"baseModel": ""}, "spec.baseModel"),
])
def test_a_bad_spec_is_refused_with_the_field_named(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidServingSpec) as refused:
        serving_manifests(engine(**spec), CONFIG)
    assert needle in str(refused.value)
    plan = serving_plan(engine(**spec), None, None, CONFIG)
    assert plan.actions == [] and plan.status["phase"] == "Failed" and plan.status["reason"] == "InvalidSpec"


# --------------------------------------------------------------------------- plan


def test_the_fetcher_token_secret_is_the_operators_and_changes_the_template() -> None:
    other = explicit(OperatorSettings, **{**CONFIG.model_dump(), "fetcher_token_secret": "mine",
                                          "fetcher_token_key": "token"})
    deployment = serving_manifests(engine(), other)[0]
    sidecar = deployment["spec"]["template"]["spec"]["containers"][1]
    assert {"name": "TUNEFORGE_FETCHER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mine", "key": "token"}}} in \
        sidecar["env"]
    # another Secret is another pod template: the running engine is replaced, not left with the old reference
    assert deployment["metadata"]["annotations"] != serving_manifests(engine(), CONFIG)[0]["metadata"]["annotations"]


def test_no_engine_is_made_without_a_fetcher_token_secret() -> None:
    """An operator without the Secret would make a sidecar that cannot start (or, before, one anybody could
    use): the ServingEngine fails with the setting named, and nothing is created."""
    unset = explicit(OperatorSettings, **{**CONFIG.model_dump(), "fetcher_token_secret": ""})
    result = serving_plan(engine(), None, None, unset)
    assert result.actions == []
    assert result.status["phase"] == "Failed" and result.status["reason"] == "NoFetcherToken"
    assert "TUNEFORGE_OPERATOR_FETCHER_TOKEN_SECRET" in result.status["message"]
    assert result.events and result.events[0][0] == "Warning"


def test_plan_creates_the_children_first() -> None:
    plan = serving_plan(engine(), None, None, CONFIG)
    (create,) = plan.actions
    assert isinstance(create, CreateServing)
    assert [m["kind"] for m in create.manifests] == ["Deployment", "Service"]
    assert plan.status["phase"] == "Starting" and plan.status["readyReplicas"] == 0
    assert "observedGeneration" not in plan.status
    assert serving_plan(engine(replicas=0), None, None, CONFIG).status["phase"] == "Pending"


def test_plan_scales_and_only_then_reports_the_generation_observed() -> None:
    cr = engine(generation=2, status={"phase": "ScaledToZero", "observedGeneration": 1, "readyReplicas": 0})
    # the Deployment still has 0 replicas and, from before, a status that could look ready: not trusted
    plan = serving_plan(cr, deployment_of(cr, replicas=0, ready=0), SERVICE, CONFIG)
    assert plan.actions == [ScaleDeployment(engine_name(BASE), 1)]
    assert plan.status["observedGeneration"] == 1 and plan.status["phase"] == "Starting"

    # scaled, the controller has not seen the new Deployment generation yet
    plan = serving_plan(cr, deployment_of(cr, ready=1, generation=3, observed=2), SERVICE, CONFIG)
    assert plan.actions == [] and plan.status["phase"] == "Starting" and plan.status["readyReplicas"] == 0
    assert plan.status["observedGeneration"] == 1

    plan = serving_plan(cr, deployment_of(cr, ready=0, generation=3, observed=3), SERVICE, CONFIG)
    assert plan.status["phase"] == "Starting" and plan.status["observedGeneration"] == 2

    ready = deployment_of(cr, ready=1, generation=3, observed=3)
    plan = serving_plan(cr, ready, SERVICE, CONFIG)
    assert plan.actions == [] and plan.status["phase"] == "Ready" and plan.status["readyReplicas"] == 1
    assert plan.patch is not None and plan.patch["phase"] == "Ready"
    assert is_ready({**cr, "status": plan.status})
    # applied: the same state again changes nothing
    again = serving_plan({**cr, "status": plan.status}, ready, SERVICE, CONFIG)
    assert again.patch is None and again.events == []


def test_plan_scales_to_zero_and_reports_it() -> None:
    cr = engine(generation=4, replicas=0)
    plan = serving_plan(cr, deployment_of(cr, replicas=1, ready=1), SERVICE, CONFIG)
    assert plan.actions == [ScaleDeployment(engine_name(BASE), 0)] and plan.status["phase"] == "Stopping"
    stopping = deployment_of(cr, ready=0, generation=2, observed=2)
    stopping["status"]["replicas"] = 1
    assert serving_plan(cr, stopping, SERVICE, CONFIG).status["phase"] == "Stopping"
    plan = serving_plan(cr, deployment_of(cr, generation=2, observed=2), SERVICE, CONFIG)
    assert plan.status["phase"] == "ScaledToZero" and plan.status["observedGeneration"] == 4
    assert not is_ready({**cr, "status": plan.status})


def test_plan_replaces_a_changed_template_and_recreates_a_lost_service() -> None:
    old = engine(vllm={"maxLoras": 2})
    new = engine(generation=2)
    plan = serving_plan(new, deployment_of(old, ready=1), None, CONFIG)
    assert isinstance(plan.actions[0], CreateServing) and plan.actions[0].manifests[0]["kind"] == "Service"
    assert isinstance(plan.actions[1], ReplaceDeployment)
    assert plan.actions[1].manifest["spec"]["template"]["spec"]["containers"][0]["args"][6] == "4"
    assert plan.status["phase"] == "Starting" and plan.status.get("observedGeneration") is None


def test_plan_reports_an_engine_that_does_not_come_up() -> None:
    cr = engine()
    stuck = deployment_of(cr, ready=0, conditions=[{"type": "Progressing", "status": "False",
                                                    "reason": "ProgressDeadlineExceeded",
                                                    "message": "ReplicaSet has timed out progressing."}])
    plan = serving_plan(cr, stuck, SERVICE, CONFIG)
    assert plan.status["phase"] == "Failed" and plan.status["reason"] == "ProgressDeadlineExceeded"
    assert plan.events and plan.events[0][0] == "Warning"
    quota = deployment_of(cr, ready=0, conditions=[{"type": "ReplicaFailure", "status": "True",
                                                    "reason": "FailedCreate", "message": "exceeded quota"}])
    assert serving_plan(cr, quota, SERVICE, CONFIG).status["message"] == "exceeded quota"


def _pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "engine-pod"}, "status": status}


@pytest.mark.parametrize(("pod", "reason", "needle"), [
    (_pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                       "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]),
     "Unschedulable", "Insufficient nvidia.com/gpu"),
    (_pod(containerStatuses=[{"name": "vllm", "image": "my/vllm:nope", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "manifest unknown"}}}]), "ImagePullBackOff", "my/vllm:nope"),
    (_pod(initContainerStatuses=[{"name": "fetch-weights", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                  "lastState": {"terminated": {"exitCode": 1, "message": "log line\ntuneforge: "
                                                               "cannot fetch the base weights: no manifest"}}}]),
     "WeightsFetchFailed", "cannot fetch the base weights: no manifest"),
    (_pod(containerStatuses=[{"name": "vllm", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                              "lastState": {"terminated": {"exitCode": 1, "message": "CUDA out of memory"}}}]),
     "EngineCrashLoop", "CUDA out of memory"),
])
def test_a_starting_engine_says_what_holds_its_pod_back(pod: dict[str, Any], reason: str, needle: str) -> None:
    cr = engine()
    plan = serving_plan(cr, deployment_of(cr, ready=0), SERVICE, CONFIG, [pod])
    assert plan.status["phase"] == "Starting" and plan.status["reason"] == reason
    assert needle in plan.status["message"]
    assert plan.events[0][0] == "Warning"
    # a pod being deleted (the old one of a scale-down) tells nothing about the new one
    gone = {**pod, "metadata": {"name": "old", "deletionTimestamp": "2026-12-01T00:00:00Z"}}
    assert serving_plan(cr, deployment_of(cr, ready=0), SERVICE, CONFIG, [gone]).status["reason"] == "EngineStarting"


# --------------------------------------------------------------------------- the service's side, the CRD


def test_the_service_builds_a_serving_engine_the_operator_accepts(tmp_path: Path) -> None:
    settings = explicit(ServiceSettings, home=tmp_path, storage={"url": "s3://bucket/tf"},
                        executor={"kind": "kubernetes", "kube_namespace": "tf", "kube_image": "tuneforge/trainer:2",
                                  "kube_storage_secret": "creds"},
                        serving={"max_loras": 3, "cluster_gpu_type": "l4", "max_model_len": 4096})
    full = Target("ft:x", base="ftjob-abc", base_ref="jobs/ftjob-abc/model", base_is_prefix=True)
    body = build_servingengine(full, settings)
    assert body["metadata"]["name"] == engine_name("ftjob-abc") and body["metadata"]["namespace"] == "tf"
    assert body["spec"]["weights"] == {"prefix": "jobs/ftjob-abc/model"} and body["spec"]["replicas"] == 1
    ServingEngine.model_validate(body)
    cr = {**body, "metadata": {**body["metadata"], "uid": "u"}}
    deployment, _ = serving_manifests(cr, CONFIG)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"tuneforge.dev/gpu-type": "l4"}
    assert pod["initContainers"][0]["image"] == "tuneforge/trainer:2"
    args = pod["containers"][0]["args"]
    assert args[args.index("--max-loras") + 1] == "3" and args[args.index("--max-model-len") + 1] == "4096"
    base = build_servingengine(Target(BASE, base=BASE, base_ref=BASE, base_is_prefix=False), settings)
    assert base["spec"]["weights"] == {"catalogue": BASE}


@pytest.mark.parametrize("template", ["http://{pod}:8000", "ftp://{service}", "http://{service"])
def test_a_bad_url_template_is_refused(tmp_path: Path, template: str) -> None:
    with pytest.raises(ValueError, match="cluster_url_template"):
        explicit(ServiceSettings, home=tmp_path, serving={"cluster_url_template": template})


def test_crd_files_match_the_contract_models() -> None:
    for name in CRDS:
        for folder in (ROOT / "helm" / "crds", ROOT / "helm" / "tuneforge" / "crds"):
            path = folder / name
            assert path.read_text() == to_yaml(name), (
                f"regenerate: python -m tuneforge.operator.crd --write helm/crds && cp helm/crds/*.yaml "
                f"helm/tuneforge/crds/ ({path})")
    crd = yaml.safe_load((ROOT / "helm" / "crds" / "servingengines.tuneforge.dev.yaml").read_text())
    assert crd == json.loads(json.dumps(crd_manifest()))


def test_serving_engine_crd_shape() -> None:
    crd = crd_manifest()
    (version,) = crd["spec"]["versions"]
    assert crd["metadata"]["name"] == "servingengines.tuneforge.dev" and crd["spec"]["names"]["shortNames"] == ["tfse"]
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas"}
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    assert schema["spec"]["properties"]["replicas"]["maximum"] == 1
    assert set(schema["spec"]["required"]) == {"baseModel", "weights", "storageUrl"}
    from tuneforge.operator.serving import OWNED_FIELDS

    assert set(OWNED_FIELDS) <= set(schema["status"]["properties"])


# --------------------------------------------------------------------------- serving off

_HANDLERS = """
import json, kopf
import tuneforge.operator.handlers
registry = kopf.get_default_registry()
print(json.dumps(sorted({(h.id, h.selector.any_name) for r in (registry._changing, registry._watching,
                                                                registry._spawning) for h in r.get_all_handlers()})))
"""


def _registered(**env: str) -> set[tuple[str, str]]:
    """The kopf handlers ``python -m tuneforge.operator`` registers (its handlers module, imported in a fresh
    process with these settings): (handler id, resource plural)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_OPERATOR_")}
    done = subprocess.run([sys.executable, "-c", _HANDLERS], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return {(h, plural) for h, plural in json.loads(done.stdout.strip().splitlines()[-1])}


def test_with_serving_off_the_operator_registers_no_serving_handlers() -> None:
    on, off = _registered(), _registered(TUNEFORGE_OPERATOR_SERVING_ENABLED="false")
    serving = {h for h in on if h[1] in ("servingengines", "deployments") or h[0].startswith(("on_engine",
                                                                                                "engine_"))}
    assert {p for _, p in serving} == {"servingengines", "deployments", "pods"}  # on: the default
    # off: kopf watches no ServingEngines or Deployments (the chart grants neither) and no engine pods
    assert off == on - serving
    assert not {p for _, p in off} & {"servingengines", "deployments"}
    assert {"on_create", "on_job_event", "on_pod_event", "resync"} <= {h for h, _ in off}
