"""Unit tests of the pure reconcile planner: FineTuneJob + Job + pods -> actions and status (no cluster)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.operator.helpers import finetunejob
from tuneforge.contracts.settings import explicit
from tuneforge.operator.config import OperatorSettings
from tuneforge.operator.status import (
    CreateChildren,
    DeleteJob,
    Plan,
    SuspendJob,
    plan,
    pod_outcome,
    termination_detail,
)

CONFIG = explicit(OperatorSettings, gpu_type_label="tuneforge.dev/gpu-type")
T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
UID = "uid-ftj"


def cr(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body = finetunejob("ftj", **spec)
    body["metadata"].update({"namespace": "ns", "uid": UID, "generation": 1})
    if status is not None:
        body["status"] = status
    return body


def job(*conditions: tuple[str, str], suspend: bool = False, owner: str = UID, deleting: bool = False,
        backoff_limit: int = 2, deadline: int = 3600) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "ftj", "namespace": "ns", "ownerReferences": [{"uid": owner}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    return {
        "metadata": meta,
        "spec": {"suspend": suspend, "backoffLimit": backoff_limit, "activeDeadlineSeconds": deadline,
                 "completions": 1},
        "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": f"{t}: {r}"}
                                  for t, r in conditions]},
    }


def pod(name: str, phase: str = "Running", *, created: str = "2026-11-23T12:00:00Z", node: str | None = "gpu-1",
        exit_code: int | None = None, reason: str | None = None, message: str | None = None,
        waiting: tuple[str, str] | None = None, conditions: list[dict[str, Any]] | None = None,
        deleting: bool = False, pod_reason: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": created}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                                "message": message}}
    elif waiting is not None:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = created
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or [],
                              "containerStatuses": [{"name": "trainer", "state": state}]}
    if phase == "Running":
        status["startTime"] = created
    if pod_reason:
        status["reason"] = pod_reason
    spec: dict[str, Any] = {"containers": [{"name": "trainer", "image": "registry/trainer:1"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": status}


DISRUPTED = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
              "message": "Preempted by a higher-priority pod"}]


def applied(body: dict[str, Any], result: Plan) -> dict[str, Any]:
    """``body`` after the operator wrote ``result``'s status."""
    return {**body, "status": {**(body.get("status") or {}), **result.status}}


def cond(result: Plan, ctype: str) -> dict[str, Any]:
    return next(c for c in result.status["conditions"] if c["type"] == ctype)


def test_new_finetunejob_creates_its_children_once():
    body = cr()
    first = plan(body, None, [], CONFIG, T0)
    (action,) = first.actions
    assert isinstance(action, CreateChildren)
    assert [m["kind"] for m in action.manifests] == ["ConfigMap", "Job"]
    assert (first.status["phase"], first.status["reason"]) == ("Queued", "JobCreated")
    assert first.status["jobName"] == "ftj" and first.status["attempts"] == 0
    assert first.events == [("Normal", "JobCreated", "Job ftj created; waiting for its pod")]
    assert cond(first, "Queued")["status"] == "True" and cond(first, "Running")["status"] == "False"
    # the next look (Job exists now, no pod yet) changes nothing and creates nothing
    again = plan(applied(body, first), job(), [], CONFIG, T0 + dt.timedelta(seconds=5))
    assert again.actions == [] and again.patch is None and again.events == []


def test_unschedulable_image_pull_and_config_errors_are_explained():
    body = cr(status={"phase": "Queued", "reason": "JobCreated"})
    unsched = pod("ftj-a", "Pending", node=None, conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    result = plan(body, job(), [unsched], CONFIG, T0)
    assert (result.status["phase"], result.status["reason"]) == ("Queued", "Unschedulable")
    assert "3 Insufficient nvidia.com/gpu" in result.status["message"]
    assert result.events[0][0] == "Warning"

    pulling = pod("ftj-a", "Pending", waiting=("ImagePullBackOff", 'Back-off pulling image "registry/trainer:1"'))
    result = plan(body, job(), [pulling], CONFIG, T0)
    assert (result.status["phase"], result.status["reason"]) == ("Queued", "ImagePullBackOff")
    assert "registry/trainer:1" in result.status["message"]

    config = pod("ftj-a", "Pending", waiting=("CreateContainerConfigError", 'secret "ftj-progress-token" not found'))
    result = plan(body, job(), [config], CONFIG, T0)
    assert result.status["reason"] == "ContainerConfigError" and "not found" in result.status["message"]

    starting = pod("ftj-a", "Pending", waiting=("ContainerCreating", ""))
    assert plan(body, job(), [starting], CONFIG, T0).status["reason"] == "PodStarting"


def test_running_pod():
    result = plan(cr(status={"phase": "Queued"}), job(), [pod("ftj-a")], CONFIG, T0)
    assert (result.status["phase"], result.status["reason"]) == ("Running", "PodRunning")
    assert result.status["message"] == "Pod ftj-a is running on node gpu-1"
    assert result.status["startTime"] == "2026-11-23T12:00:00Z"
    assert result.status["attempts"] == 1 and result.status["podNames"] == ["ftj-a"]
    assert cond(result, "Running")["status"] == "True"


def test_preempted_pod_then_resumed_on_a_new_pod():
    body = cr(status={"phase": "Running", "reason": "PodRunning", "attempts": 1, "podNames": ["ftj-a"]})
    leaving = pod("ftj-a", "Running", conditions=DISRUPTED, deleting=True)
    between = plan(body, job(), [leaving], CONFIG, T0)
    assert (between.status["phase"], between.status["reason"]) == ("Queued", "Preempted")
    assert "PreemptionByScheduler: Preempted by a higher-priority pod" in between.status["message"]
    assert "resume from the latest checkpoint" in between.status["message"]
    assert between.actions == []  # the Job controller replaces the pod (pod failure policy: Ignore)

    # the evicted pod is gone already (deleted), the replacement runs
    body = applied(body, between)
    resumed = plan(body, job(), [pod("ftj-b", created="2026-11-23T12:01:00Z")], CONFIG, T0)
    assert (resumed.status["phase"], resumed.status["reason"]) == ("Running", "Resumed")
    assert resumed.status["attempts"] == 2 and resumed.status["podNames"] == ["ftj-a", "ftj-b"]
    assert "(attempt 2)" in resumed.status["message"] and "PreemptionByScheduler" in resumed.status["message"]


def test_exit_75_is_a_preemption_and_the_retry_resumes():
    body = cr(status={"phase": "Running", "attempts": 1, "podNames": ["ftj-a"]})
    pods = [pod("ftj-a", "Failed", exit_code=75),
            pod("ftj-b", created="2026-11-23T12:01:00Z")]
    result = plan(body, job(), pods, CONFIG, T0)
    assert (result.status["phase"], result.status["reason"]) == ("Running", "Resumed")
    assert "exit 75" in result.status["message"]
    outcome = pod_outcome(pods[0])
    assert outcome.preempted and outcome.reason == "Preempted"


def test_bad_input_fails_at_once_with_the_trainers_message():
    body = cr(status={"phase": "Running", "attempts": 1})
    failed = pod("ftj-a", "Failed", exit_code=65,
                 message="Traceback (most recent call last):\n  ...\ntuneforge: line 7: no 'messages' field\n")
    # the pod failure policy (FailJob) decides it even before the Job controller reports it
    early = plan(body, job(), [failed], CONFIG, T0)
    assert (early.status["phase"], early.status["reason"], early.status["exitCode"]) == ("Failed", "BadInput", 65)
    assert early.status["message"] == "The trainer rejected its input: line 7: no 'messages' field"
    late = plan(body, job(("FailureTarget", "PodFailurePolicy"), ("Failed", "PodFailurePolicy")), [failed],
                CONFIG, T0)
    assert (late.status["phase"], late.status["reason"]) == ("Failed", "BadInput")
    assert late.status["completionTime"] == "2026-11-23T12:00:00Z"
    assert cond(late, "Failed")["status"] == "True" and late.events[0][0] == "Warning"


def test_oom_killed_without_retries_left():
    body = cr(status={"phase": "Running", "attempts": 1})
    oom = pod("ftj-a", "Failed", exit_code=137, reason="OOMKilled")
    result = plan(body, job(backoff_limit=0), [oom], CONFIG, T0)
    assert (result.status["phase"], result.status["reason"], result.status["exitCode"]) == ("Failed", "OOMKilled", 137)
    assert "ran out of memory" in result.status["message"]
    # with retries left it is retried
    retry = plan(body, job(backoff_limit=2), [oom], CONFIG, T0)
    assert (retry.status["phase"], retry.status["reason"]) == ("Queued", "Retrying")


def test_backoff_limit_exceeded_reports_the_last_failure_and_count():
    pods = [pod(f"ftj-{i}", "Failed", exit_code=1, message=f"tuneforge: boom {i}",
                created=f"2026-11-23T12:0{i}:00Z") for i in range(3)]
    result = plan(cr(status={"phase": "Queued"}), job(("Failed", "BackoffLimitExceeded")), pods, CONFIG, T0)
    assert (result.status["phase"], result.status["reason"]) == ("Failed", "TrainerError")
    assert result.status["message"] == "The trainer exited with code 1: boom 2 (failed 3 times; backoffLimit=2)"
    assert result.status["attempts"] == 3


def test_deadline_exceeded():
    result = plan(cr(status={"phase": "Running"}), job(("Failed", "DeadlineExceeded"), deadline=600), [],
                  CONFIG, T0)
    assert (result.status["phase"], result.status["reason"]) == ("Failed", "DeadlineExceeded")
    assert "activeDeadlineSeconds=600" in result.status["message"]


def test_success_and_then_nothing_more():
    body = cr(status={"phase": "Running", "attempts": 1, "podNames": ["ftj-a"]})
    done = plan(body, job(("Complete", "CompletionsReached")), [pod("ftj-a", "Succeeded", exit_code=0)], CONFIG, T0)
    assert (done.status["phase"], done.status["reason"], done.status["exitCode"]) == ("Succeeded", "Completed", 0)
    assert cond(done, "Succeeded")["status"] == "True" and done.status["completionTime"]
    # terminal: later looks (even with the Job gone after its TTL) change nothing and create nothing
    later = plan(applied(body, done), None, [], CONFIG, T0 + dt.timedelta(days=2))
    assert later.actions == [] and later.patch is None


def test_cancel_deletes_the_job_in_the_foreground_once():
    body = cr(status={"phase": "Running"}, cancel=True)
    result = plan(body, job(), [pod("ftj-a")], CONFIG, T0)
    assert result.actions == [DeleteJob("ftj", "Foreground")]
    assert (result.status["phase"], result.status["reason"]) == ("Cancelled", "Cancelled")
    assert cond(result, "Failed")["reason"] == "Cancelled"
    again = plan(applied(body, result), job(deleting=True), [pod("ftj-a", deleting=True)], CONFIG, T0)
    assert again.actions == [] and again.patch is None


def test_cancelled_job_counts_its_pods_until_they_are_gone():
    body = cr(status={"phase": "Running", "attempts": 1, "podNames": ["ftj-a"], "activePods": 1}, cancel=True)
    result = plan(body, job(), [pod("ftj-a")], CONFIG, T0)
    assert result.actions == [DeleteJob("ftj", "Foreground")]
    assert (result.status["phase"], result.status["reason"], result.status["activePods"]) == \
        ("Cancelled", "Cancelled", 1)
    assert result.status["message"] == "Cancelled: the Job is being deleted; 1 pod is still stopping"
    assert result.events == [("Normal", "Cancelled", result.status["message"])]
    body = applied(body, result)
    # terminating (the trainer checkpoints on SIGTERM), then stopped but not yet removed: still counted
    for pods in ([pod("ftj-a", deleting=True)], [pod("ftj-a", "Failed", exit_code=143, deleting=True)]):
        steady = plan(body, job(deleting=True), pods, CONFIG, T0 + dt.timedelta(seconds=5))
        assert steady.actions == [] and steady.patch is None
    # the pod is gone (and with it the Job): the status says so, without a new phase, reason or event
    gone = plan(body, None, [], CONFIG, T0 + dt.timedelta(seconds=30))
    assert gone.actions == [] and gone.events == []
    assert gone.patch is not None and set(gone.patch) == {"activePods", "message", "conditions"}
    assert (gone.status["phase"], gone.status["reason"], gone.status["activePods"]) == ("Cancelled", "Cancelled", 0)
    assert gone.status["message"] == "Cancelled: the Job and its pods are deleted"
    assert gone.status["completionTime"] == body["status"]["completionTime"] == "2026-11-23T12:00:00Z"
    assert cond(gone, "Failed")["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    assert cond(gone, "Failed")["message"] == gone.status["message"]
    assert plan(applied(body, gone), None, [], CONFIG, T0 + dt.timedelta(minutes=1)).patch is None


def test_cancelled_job_without_pods():
    body = cr(status={"phase": "Queued", "reason": "JobCreated", "attempts": 0, "activePods": 0}, cancel=True)
    result = plan(body, job(), [], CONFIG, T0)
    assert result.actions == [DeleteJob("ftj", "Foreground")]
    assert (result.status["phase"], result.status["activePods"]) == ("Cancelled", 0)
    assert result.status["message"] == "Cancelled: the Job and its pods are deleted"
    again = plan(applied(body, result), job(deleting=True), [], CONFIG, T0)
    assert again.actions == [] and again.patch is None


def test_active_pods_counts_pods_that_may_still_run():
    body = cr(status={"phase": "Running", "attempts": 2, "podNames": ["ftj-a", "ftj-b"]})
    pods = [pod("ftj-a", "Failed", exit_code=75), pod("ftj-b", created="2026-11-23T12:01:00Z")]
    assert plan(body, job(), pods, CONFIG, T0).status["activePods"] == 1
    pending = pod("ftj-c", "Pending", node=None, created="2026-11-23T12:02:00Z")
    assert plan(body, job(), [*pods, pending], CONFIG, T0).status["activePods"] == 2
    # finished pods the Job keeps do not count; a final phase with none active is settled
    done = plan(body, job(("Complete", "CompletionsReached")), [pods[0], pod("ftj-b", "Succeeded", exit_code=0)],
                CONFIG, T0)
    assert (done.status["phase"], done.status["activePods"]) == ("Succeeded", 0)
    # a deadline: the Job controller deletes the running pod, which still counts while it stops
    failed = plan(body, job(("Failed", "DeadlineExceeded")), [pods[0], pod("ftj-b", deleting=True)], CONFIG, T0)
    assert (failed.status["phase"], failed.status["activePods"]) == ("Failed", 1)
    later = plan(applied(body, failed), None, [pods[0]], CONFIG, T0 + dt.timedelta(seconds=30))
    assert later.patch == {"activePods": 0}


def test_cancel_before_the_job_exists_creates_nothing():
    result = plan(cr(cancel=True), None, [], CONFIG, T0)
    assert result.actions == [] and result.status["phase"] == "Cancelled"


def test_suspend_and_resume():
    body = cr(status={"phase": "Running", "attempts": 1, "podNames": ["ftj-a"]}, suspend=True)
    result = plan(body, job(), [pod("ftj-a")], CONFIG, T0)
    assert result.actions == [SuspendJob("ftj", True)]
    assert result.status["phase"] == "Suspended" and cond(result, "Suspended")["status"] == "True"
    steady = plan(applied(body, result), job(suspend=True), [], CONFIG, T0)
    assert steady.actions == [] and steady.status["phase"] == "Suspended"
    body = applied(body, steady)
    body["spec"]["suspend"] = False
    resumed = plan(body, job(suspend=True), [], CONFIG, T0)
    assert resumed.actions == [SuspendJob("ftj", False)]
    assert (resumed.status["phase"], resumed.status["reason"]) == ("Queued", "Resuming")


def test_kueue_owns_the_suspend_flag_of_queued_jobs():
    body = cr(status={"phase": "Queued"}, scheduling={"gpus": 1, "queueName": "team-a"})
    result = plan(body, job(suspend=True), [], CONFIG, T0)
    assert result.actions == []  # Kueue unsuspends it when admitted
    assert (result.status["phase"], result.status["reason"]) == ("Queued", "WaitingForAdmission")
    assert "team-a" in result.status["message"]


def test_a_job_of_an_earlier_finetunejob_with_the_same_name_is_left_alone():
    result = plan(cr(), job(owner="someone-else"), [], CONFIG, T0)
    assert result.actions == []
    assert (result.status["phase"], result.status["reason"]) == ("Pending", "WaitingForOldJob")


def test_max_pending_seconds_gives_up():
    unsched = pod("ftj-a", "Pending", node=None, created="2026-11-23T11:58:00Z", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available"}])
    body = cr(status={"phase": "Queued"}, scheduling={"gpus": 1, "maxPendingSeconds": 300})
    assert plan(body, job(), [unsched], CONFIG, T0).status["phase"] == "Queued"
    result = plan(body, job(), [unsched], CONFIG, T0 + dt.timedelta(minutes=4))
    assert result.actions == [DeleteJob("ftj", "Background")]
    assert (result.status["phase"], result.status["reason"]) == ("Failed", "Unschedulable")
    assert "gave up after 300s" in result.status["message"]


def test_job_deleted_behind_our_back_is_recreated():
    body = cr(status={"phase": "Running", "jobName": "ftj", "attempts": 1, "podNames": ["ftj-a"]})
    result = plan(body, None, [], CONFIG, T0)
    assert isinstance(result.actions[0], CreateChildren)
    assert (result.status["phase"], result.status["reason"]) == ("Queued", "JobRecreated")


def test_invalid_spec_fails_without_creating_anything():
    body = cr()
    body["spec"]["jobSpec"]["method"] = {"type": "supervised", "algorithm": "sgd"}
    result = plan(body, None, [], CONFIG, T0)
    assert result.actions == []
    assert (result.status["phase"], result.status["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.jobSpec.method.algorithm: Unknown parameter" in result.status["message"]


def test_condition_times_only_move_on_transitions():
    body = cr(status={"phase": "Queued"})
    first = plan(body, job(), [pod("ftj-a")], CONFIG, T0)
    body = applied(body, first)
    later = plan(body, job(), [pod("ftj-a")], CONFIG, T0 + dt.timedelta(minutes=5))
    assert later.patch is None
    assert cond(later, "Running")["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    done = plan(body, job(("Complete", "CompletionsReached")), [pod("ftj-a", "Succeeded", exit_code=0)],
                CONFIG, T0 + dt.timedelta(minutes=9))
    assert cond(done, "Running")["lastTransitionTime"] == "2026-11-23T12:09:00Z"  # True -> False
    assert cond(done, "Queued")["lastTransitionTime"] == "2026-11-23T12:00:00Z"  # stayed False


def test_termination_detail():
    assert termination_detail("a\nb\ntuneforge: the reason\n  trailing") == "the reason"
    assert termination_detail("just the last line\n") == "just the last line"
    assert termination_detail(None) == "" and len(termination_detail("x" * 1000)) == 400
