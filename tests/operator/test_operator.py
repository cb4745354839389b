"""The operator on the real control plane, driven through FineTuneJob objects (no service involved).

kwok plays the kubelets: trainer pods go Running at once and end when a test calls ``finish_pod``.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.operator.helpers import OperatorProcess, finetunejob
from tests.support.k8s_testbed import K8sTestbed
from tests.support.waiting import wait_for
from tuneforge.contracts.finetunejob import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.usefixtures("running_operator")


def create(custom: k8s.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, _request_timeout=10)


def get(custom: k8s.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, _request_timeout=10)


def patch(custom: k8s.CustomObjectsApi, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body,
                                                 _request_timeout=10)


def wait_phase(custom: k8s.CustomObjectsApi, namespace: str, name: str, phase: str,
               timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(custom, namespace, name)
        return obj if (obj.get("status") or {}).get("phase") == phase else None

    try:
        return wait_for(f"{name} phase {phase}", check, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstatus: {json.dumps(get(custom, namespace, name).get('status'))}") from None


def pods_of(core: k8s.CoreV1Api, namespace: str, name: str) -> list[k8s.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"tuneforge.dev/finetunejob={name}",
                                    _request_timeout=10).items
    return sorted(pods, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))


def running_pod(core: k8s.CoreV1Api, namespace: str, name: str, exclude: set[str] = frozenset()) -> k8s.V1Pod:
    def check() -> k8s.V1Pod | None:
        pods = [p for p in pods_of(core, namespace, name)
                if p.metadata.name not in exclude and p.status.phase == "Running"
                and not p.metadata.deletion_timestamp]
        return pods[-1] if pods else None

    return wait_for(f"a Running pod of {name}", check, 30)


def kubectl(testbed: K8sTestbed, *args: str) -> str:
    out = subprocess.run([str(testbed.bin_dir / "kubectl"), "--kubeconfig", str(testbed.kubeconfig_path), *args],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == ctype)


def test_crd_columns_short_name_and_validation(testbed, custom, namespace, gpu_pool):
    create(custom, namespace, finetunejob("ftj-cols"))
    wait_phase(custom, namespace, "ftj-cols", "Running")
    out = kubectl(testbed, "get", "ftj", "-n", namespace)
    header, row = out.splitlines()[0].split(), out.splitlines()[1].split()
    assert header == ["NAME", "METHOD", "MODEL", "PHASE", "PROGRESS", "AGE"]
    assert row[:4] == ["ftj-cols", "supervised", "SmolLM2-135M-Instruct", "Running"]
    wide = kubectl(testbed, "get", "finetunejobs.tuneforge.dev", "-n", namespace, "-o", "wide").splitlines()
    assert wide[0].split() == ["NAME", "METHOD", "MODEL", "PHASE", "PROGRESS", "REASON", "ATTEMPTS", "PODS", "AGE"]
    assert wide[1].split()[4:7] == ["PodRunning", "1", "1"]

    # a progress token must never be stored in the custom resource
    leaky = finetunejob("ftj-leaky")
    leaky["spec"]["jobSpec"]["progress"]["token"] = "s3cr3t"
    with pytest.raises(k8s.ApiException) as err:
        create(custom, namespace, leaky)
    assert err.value.status == 422 and "token" in err.value.body
    # the JobSpec is immutable, and a cancel cannot be taken back
    with pytest.raises(k8s.ApiException) as err:
        patch(custom, namespace, "ftj-cols", {"spec": {"jobSpec": {"seed": 7}}})
    assert err.value.status == 422 and "immutable" in err.value.body
    patch(custom, namespace, "ftj-cols", {"spec": {"cancel": True}})
    with pytest.raises(k8s.ApiException) as err:
        patch(custom, namespace, "ftj-cols", {"spec": {"cancel": False}})
    assert err.value.status == 422 and "un-cancelled" in err.value.body


def test_reconciles_into_a_job_and_reports_success(testbed, custom, core, batch, namespace, gpu_pool):
    cr = create(custom, namespace, finetunejob("ftj-ok", gpus=2, podAnnotations={"team": "nlp"}))
    obj = wait_phase(custom, namespace, "ftj-ok", "Running")
    pod = running_pod(core, namespace, "ftj-ok")
    status = obj["status"]
    assert status["attempts"] == 1 and status["podNames"] == [pod.metadata.name]
    assert status["jobName"] == "ftj-ok" and status["observedGeneration"] == 1 and status["startTime"]
    assert condition(obj, "Running")["status"] == "True"
    assert condition(obj, "Queued")["status"] == "False"

    job = batch.read_namespaced_job("ftj-ok", namespace, _request_timeout=10)
    assert job.metadata.owner_references[0].uid == cr["metadata"]["uid"]
    assert job.metadata.owner_references[0].controller is True
    assert job.spec.backoff_limit == 2 and job.spec.ttl_seconds_after_finished and job.spec.active_deadline_seconds
    rules = job.spec.pod_failure_policy.rules
    assert [(r.action, r.on_exit_codes.values if r.on_exit_codes else None) for r in rules] == [
        ("FailJob", [65]), ("Ignore", [75]), ("Ignore", None)]
    assert rules[2].on_pod_conditions[0].type == "DisruptionTarget"
    tpl = pod.spec
    assert tpl.restart_policy == "Never" and tpl.automount_service_account_token is False
    assert tpl.security_context.run_as_non_root is True
    assert tpl.node_selector == {"tuneforge.dev/gpu-type": "h100"}
    assert pod.metadata.annotations["team"] == "nlp"
    container = tpl.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    assert container.security_context.read_only_root_filesystem is True
    assert container.command == ["python", "-m", "tuneforge.trainer", "--spec", "/etc/tuneforge/jobspec.json"]
    token_env = next(e for e in container.env if e.name == "TUNEFORGE_PROGRESS_TOKEN")
    assert token_env.value_from.secret_key_ref.name == "ftj-ok-progress-token"
    configmap = core.read_namespaced_config_map("ftj-ok-jobspec", namespace, _request_timeout=10)
    spec = json.loads(configmap.data["jobspec.json"])
    assert spec["job_id"] == "ftj-ok" and spec["progress"]["token"] == ""

    testbed.finish_pod(namespace, pod.metadata.name, exit_code=0)
    obj = wait_phase(custom, namespace, "ftj-ok", "Succeeded")
    assert obj["status"]["reason"] == "Completed" and obj["status"]["completionTime"]
    assert condition(obj, "Succeeded")["status"] == "True"

    # reconcile posts a phase change's events after it patches the status (a client can see one before the other)
    def reasons() -> set[str]:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=ftj-ok",
                                            _request_timeout=10).items
        return {e.reason for e in events}

    wait_for("the job's events", lambda: {"JobCreated", "PodRunning", "Completed"} <= reasons(), 30)


def test_oom_killed_and_deadline_exceeded_are_explained(testbed, custom, core, namespace, gpu_pool):
    create(custom, namespace, finetunejob("ftj-oom", backoffLimit=0))
    create(custom, namespace, finetunejob("ftj-slow", activeDeadlineSeconds=2))
    pod = running_pod(core, namespace, "ftj-oom")
    testbed.finish_pod(namespace, pod.metadata.name, exit_code=137, reason="OOMKilled")
    obj = wait_phase(custom, namespace, "ftj-oom", "Failed")
    assert obj["status"]["reason"] == "OOMKilled" and obj["status"]["exitCode"] == 137
    assert "out of memory" in obj["status"]["message"]
    obj = wait_phase(custom, namespace, "ftj-slow", "Failed", timeout=40)
    assert obj["status"]["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds=2" in obj["status"]["message"]


def test_invalid_jobspec_fails_with_the_field(custom, namespace):
    body = finetunejob("ftj-invalid")
    body["spec"]["jobSpec"]["method"]["supervised"]["hyperparameters"]["n_epochs"] = 0  # at least 1
    create(custom, namespace, body)
    obj = wait_phase(custom, namespace, "ftj-invalid", "Failed")
    assert obj["status"]["reason"] == "InvalidSpec"
    assert "hyperparameters.n_epochs" in obj["status"]["message"]


def test_suspend_and_resume(testbed, custom, core, namespace, gpu_pool):
    create(custom, namespace, finetunejob("ftj-pause"))
    first = running_pod(core, namespace, "ftj-pause")
    patch(custom, namespace, "ftj-pause", {"spec": {"suspend": True}})
    obj = wait_phase(custom, namespace, "ftj-pause", "Suspended")
    assert condition(obj, "Suspended")["status"] == "True"
    wait_for("suspended pod gone", lambda: not [p for p in pods_of(core, namespace, "ftj-pause")
                                                if p.status.phase in ("Pending", "Running")
                                                and not p.metadata.deletion_timestamp])
    patch(custom, namespace, "ftj-pause", {"spec": {"suspend": False}})
    second = running_pod(core, namespace, "ftj-pause", exclude={first.metadata.name})
    obj = wait_phase(custom, namespace, "ftj-pause", "Running")
    assert obj["status"]["attempts"] == 2
    assert obj["status"]["podNames"] == [first.metadata.name, second.metadata.name]


def test_operator_restart_creates_no_duplicate_and_keeps_state(
    testbed, custom, core, batch, namespace, gpu_pool, running_operator: OperatorProcess
):
    create(custom, namespace, finetunejob("ftj-restart"))
    pod = running_pod(core, namespace, "ftj-restart")
    before = wait_phase(custom, namespace, "ftj-restart", "Running")
    job_uid = batch.read_namespaced_job("ftj-restart", namespace, _request_timeout=10).metadata.uid

    running_operator.kill()  # SIGKILL: no cleanup, like a lost node
    # meanwhile: the trainer finishes and a new FineTuneJob arrives
    testbed.finish_pod(namespace, pod.metadata.name, exit_code=0)
    create(custom, namespace, finetunejob("ftj-while-down"))
    running_operator.start()

    after = wait_phase(custom, namespace, "ftj-restart", "Succeeded")
    jobs = batch.list_namespaced_job(namespace, label_selector="tuneforge.dev/finetunejob=ftj-restart",
                                     _request_timeout=10).items
    assert [j.metadata.uid for j in jobs] == [job_uid]  # the same Job, not a second one
    assert [p.metadata.name for p in pods_of(core, namespace, "ftj-restart")] == [pod.metadata.name]
    assert after["status"]["attempts"] == 1
    assert after["status"]["startTime"] == before["status"]["startTime"]
    running_pod(core, namespace, "ftj-while-down")
    wait_phase(custom, namespace, "ftj-while-down", "Running")

    # a second restart while everything is steady changes nothing either
    running_operator.stop()
    offset = running_operator.log_path.stat().st_size
    running_operator.start()

    def resumed() -> bool:
        text = running_operator.log_path.read_bytes()[offset:].decode(errors="replace")
        return f"[{namespace}/ftj-while-down]" in text and f"[{namespace}/ftj-restart]" in text

    wait_for("the restarted operator to look at both FineTuneJobs again", resumed, 20)
    assert len(batch.list_namespaced_job(namespace, _request_timeout=10).items) == 2
    assert len(pods_of(core, namespace, "ftj-while-down")) == 1


def test_deleting_the_finetunejob_garbage_collects_job_and_pods(custom, core, batch, namespace, gpu_pool):
    create(custom, namespace, finetunejob("ftj-gc"))
    running_pod(core, namespace, "ftj-gc")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ftj-gc", _request_timeout=10)

    def all_gone() -> bool:
        jobs = batch.list_namespaced_job(namespace, _request_timeout=10).items
        cms = [c for c in core.list_namespaced_config_map(namespace, _request_timeout=10).items
               if c.metadata.name.startswith("ftj-gc")]
        return not jobs and not pods_of(core, namespace, "ftj-gc") and not cms

    wait_for("Job, pods and ConfigMap garbage-collected", all_gone, 60)
    with pytest.raises(k8s.ApiException) as err:
        get(custom, namespace, "ftj-gc")
    assert err.value.status == 404


def test_peering_keeps_one_operator_active(testbed, custom, batch, core, operator_kubeconfig, gpu_pool,
                                           tmp_path: Path):
    """Two replicas with kopf peering (KopfPeering of helm/crds, RBAC of docs/cluster/rbac.yaml): only the
    higher-priority one acts. (A namespace outside the session operator's 'tfop-*'.)"""
    namespace = f"peer-{uuid.uuid4().hex[:8]}"
    testbed.create_namespace(namespace)
    custom.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", {
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "tuneforge"}}, _request_timeout=10)
    active = OperatorProcess(operator_kubeconfig, tmp_path / "active.log", namespace, peering=("tuneforge", 100))
    standby = OperatorProcess(operator_kubeconfig, tmp_path / "standby.log", namespace, peering=("tuneforge", 0))
    try:
        active.start()
        standby.start()

        def peers() -> int:
            peering = custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "tuneforge",
                                                          _request_timeout=10)
            return len(peering.get("status") or {})

        wait_for("both operators in the KopfPeering", lambda: peers() == 2, 20)
        create(custom, namespace, finetunejob("ftj-peer"))
        wait_phase(custom, namespace, "ftj-peer", "Running")
        assert len(batch.list_namespaced_job(namespace, _request_timeout=10).items) == 1
        assert "created Job" in active.log_tail(400)
        assert "created Job" not in standby.log_tail(400)
    finally:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ftj-peer", {"spec": {"cancel": True}},
                                              _request_timeout=10)
        wait_phase(custom, namespace, "ftj-peer", "Cancelled")
        standby.stop()
        active.stop()
        core.delete_namespace(namespace, _request_timeout=10)
