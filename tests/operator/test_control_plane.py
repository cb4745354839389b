"""The real control plane for the operator tests: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok fake GPU nodes
(tests/support/k8s_testbed.py, binaries from infra/testbed/k8s/build.sh).

Fixtures (one testbed per session) are in conftest.py.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from tests.support.waiting import wait_for


def gpu_job(name: str, gpus: int = 1, gpu_type: str = "h100", **spec: Any) -> k8s.V1Job:
    container = k8s.V1Container(
        name="trainer",
        image="tuneforge/trainer:test",
        resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}),
    )
    pod_spec = k8s.V1PodSpec(
        restart_policy="Never",
        containers=[container],
        node_selector={"tuneforge.dev/gpu-type": gpu_type},
    )
    return k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1JobSpec(
            backoff_limit=spec.pop("backoff_limit", 0),
            template=k8s.V1PodTemplateSpec(spec=pod_spec),
            **spec,
        ),
    )


def job_pods(core, namespace: str, job: str) -> list[k8s.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={job}", _request_timeout=10).items


def job_condition(batch, namespace: str, job: str, ctype: str):
    j = batch.read_namespaced_job_status(job, namespace, _request_timeout=10)
    for c in j.status.conditions or []:
        if c.type == ctype and c.status == "True":
            return c
    return None


def running_pod(core, namespace: str, job: str) -> k8s.V1Pod:
    def check():
        pods = job_pods(core, namespace, job)
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    return wait_for(f"a Running pod of job {job}", check)


def test_gpu_job_scheduled_running_and_complete(testbed, core, batch, gpu_node, namespace):
    batch.create_namespaced_job(namespace, gpu_job("train-ok"), _request_timeout=10)
    pod = running_pod(core, namespace, "train-ok")
    node = core.read_node(pod.spec.node_name, _request_timeout=10)
    assert node.metadata.labels["tuneforge.dev/gpu-type"] == "h100"  # gpu_node, or the operator tests' pool
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert pod.status.container_statuses[0].state.running is not None

    done = testbed.finish_pod(namespace, pod.metadata.name, exit_code=0)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    cond = wait_for("job Complete", lambda: job_condition(batch, namespace, "train-ok", "Complete"))
    assert cond.status == "True"
    assert batch.read_namespaced_job_status("train-ok", namespace).status.succeeded == 1


def test_exit_code_reaches_pod_failure_policy(testbed, core, batch, gpu_node, namespace):
    job = gpu_job(
        "train-bad-input",
        backoff_limit=3,
        pod_failure_policy=k8s.V1PodFailurePolicy(
            rules=[
                k8s.V1PodFailurePolicyRule(
                    action="FailJob",
                    on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                        container_name="trainer", operator="In", values=[3]
                    ),
                )
            ]
        ),
    )
    batch.create_namespaced_job(namespace, job, _request_timeout=10)
    pod = running_pod(core, namespace, "train-bad-input")

    done = testbed.finish_pod(
        namespace, pod.metadata.name, exit_code=3, reason="BadInput", message="line 7: no messages"
    )
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Failed"
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "BadInput", "line 7: no messages")

    cond = wait_for("job Failed", lambda: job_condition(batch, namespace, "train-bad-input", "Failed"))
    assert cond.reason == "PodFailurePolicy"
    assert len(job_pods(core, namespace, "train-bad-input")) == 1  # failed at once, no retry


def test_evicted_pod_is_replaced_without_counting_a_failure(testbed, core, batch, gpu_node, namespace):
    # Eviction (like preemption) adds DisruptionTarget, the fake kubelet ends the pod
    # (exit 143, Failed) and a pod failure policy can ignore it: a new pod takes over.
    job = gpu_job(
        "train-evicted",
        backoff_limit=0,
        pod_failure_policy=k8s.V1PodFailurePolicy(
            rules=[
                k8s.V1PodFailurePolicyRule(
                    action="Ignore",
                    on_pod_conditions=[
                        k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                    ],
                )
            ]
        ),
    )
    batch.create_namespaced_job(namespace, job, _request_timeout=10)
    first = running_pod(core, namespace, "train-evicted")
    core.create_namespaced_pod_eviction(
        first.metadata.name,
        namespace,
        k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name=first.metadata.name, namespace=namespace)),
        _request_timeout=10,
    )

    def replacement():
        pods = [
            p for p in job_pods(core, namespace, "train-evicted") if p.metadata.name != first.metadata.name
        ]
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    second = wait_for("a Running replacement pod", replacement)
    status = batch.read_namespaced_job_status("train-evicted", namespace).status
    assert not status.failed
    testbed.finish_pod(namespace, second.metadata.name, exit_code=0)
    wait_for("job Complete", lambda: job_condition(batch, namespace, "train-evicted", "Complete"))
    wait_for(
        "evicted pod gone",
        lambda: (
            first.metadata.name not in {p.metadata.name for p in job_pods(core, namespace, "train-evicted")}
        ),
    )


def test_no_fitting_gpu_node_is_unschedulable(core, batch, gpu_node, namespace):
    # 8 GPUs of a type no node has: the scheduler must give up with Unschedulable.
    batch.create_namespaced_job(
        namespace, gpu_job("train-nofit", gpus=8, gpu_type="b200"), _request_timeout=10
    )

    def unschedulable():
        for pod in job_pods(core, namespace, "train-nofit"):
            for c in pod.status.conditions or []:
                if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                    return pod, c
        return None

    pod, cond = wait_for("PodScheduled=False/Unschedulable", unschedulable)
    assert pod.spec.node_name is None
    assert "node" in (cond.message or "")


def test_deleted_running_pod_terminates_and_goes_away(testbed, core, gpu_node, namespace):
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="victim"),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            node_name=gpu_node,
            containers=[k8s.V1Container(name="c", image="busybox")],
        ),
    )
    core.create_namespaced_pod(namespace, pod, _request_timeout=10)
    testbed.wait_pod_phase(namespace, "victim", "Running")
    core.delete_namespaced_pod("victim", namespace, grace_period_seconds=30, _request_timeout=10)

    def gone():
        try:
            core.read_namespaced_pod("victim", namespace, _request_timeout=10)
            return False
        except k8s.ApiException as e:
            return e.status == 404

    wait_for("pod deleted", gone)


def test_restart_apiserver(testbed, core, batch, gpu_node, namespace):
    before = {n.metadata.name for n in core.list_node(_request_timeout=10).items}
    testbed.restart_apiserver()
    # State survives (etcd) and the other components reconnect: a new Job runs.
    assert {n.metadata.name for n in core.list_node(_request_timeout=10).items} == before
    batch.create_namespaced_job(namespace, gpu_job("after-restart"), _request_timeout=10)
    pod = running_pod(core, namespace, "after-restart")
    testbed.finish_pod(namespace, pod.metadata.name, exit_code=0)
    wait_for("job Complete", lambda: job_condition(batch, namespace, "after-restart", "Complete"))
