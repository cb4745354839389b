"""Unit tests of the service side of cluster mode without a cluster: the FineTuneJob the service writes and how
FineTuneJob statuses map onto jobs (KubernetesExecutor.apply_status, fed plain dicts)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.helpers import chat_file, upload
from tests.support.live_server import ThreadServer
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.lifecycle import transition
from tuneforge.service.executors.kubernetes import KubernetesExecutor, build_finetunejob, progress_text


@pytest.fixture
def client(api_server: ThreadServer) -> Iterator[httpx.Client]:
    with api_server.client() as c:
        yield c


@pytest.fixture
def executor(api_server: ThreadServer) -> KubernetesExecutor:
    state = api_server.state
    return KubernetesExecutor(state.settings, state.sessions, state.store)  # not started: no cluster


def new_job(client: httpx.Client, status: str = "queued", **body: Any) -> str:
    file = upload(client, chat_file(3))
    resp = client.post("/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": file["id"],
                                                     **body})
    assert resp.status_code == 200, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def move(server: ThreadServer, job_id: str, *statuses: str) -> None:
    with server.state.sessions() as session:
        job = SystemRepo(session).job(job_id)
        for status in statuses:
            transition(session, job, status, f"test: {status}")


def cr(job_id: str, phase: str, reason: str, message: str = "", attempts: int = 1, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": job_id}, "spec": {},
            "status": {"phase": phase, "reason": reason, "message": message or f"{phase}/{reason}",
                       "attempts": attempts, **extra}}


def apply(server: ThreadServer, executor: KubernetesExecutor, body: dict[str, Any]) -> Job:
    with server.state.sessions() as session:
        job = SystemRepo(session).job(body["metadata"]["name"])
        executor.apply_status(session, job, body)
        session.refresh(job)
        session.expunge(job)
        return job


def event_lines(client: httpx.Client, job_id: str) -> list[str]:
    data = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100, "order": "asc"}).json()["data"]
    return [f"{e['level']}: {e['message']}" for e in data]


def test_finetunejob_manifest(api_server: ThreadServer, client):
    job_id = new_job(client, resources={"gpus": 2, "gpu_type": "h100"}, suffix="x")
    base = api_server.state.settings
    settings = base.model_copy(update={"executor": base.executor.model_copy(update={
        "kube_namespace": "ml", "kube_storage_secret": "s3-creds", "kube_queue_name": "team-a", "max_attempts": 3})})
    with api_server.state.sessions() as session:
        job = SystemRepo(session).job(job_id)
        body = build_finetunejob(job, settings)
    assert body["metadata"]["name"] == job_id and body["metadata"]["namespace"] == "ml"
    assert body["metadata"]["labels"] == {"tuneforge.dev/job-id": job_id, "tuneforge.dev/tenant": "default",
                                          "app.kubernetes.io/managed-by": "tuneforge-service"}
    spec = body["spec"]
    assert spec["jobSpec"]["job_id"] == job_id and spec["jobSpec"]["progress"]["token"] == ""
    assert spec["jobSpec"]["progress"]["url"] == settings.server.base_url
    assert spec["scheduling"] == {"gpus": 2, "gpuType": "h100", "nodes": 1, "queueName": "team-a"}
    assert spec["progressTokenSecret"] == {"name": f"{job_id}-progress-token", "key": "token"}
    assert spec["storageSecret"] == "s3-creds" and spec["backoffLimit"] == 2
    # no GPU count in the request: the cluster default (1)
    plain = new_job(client)
    with api_server.state.sessions() as session:
        assert build_finetunejob(SystemRepo(session).job(plain), settings)["spec"]["scheduling"]["gpus"] == 1


def test_queued_running_requeued_and_warnings(api_server, client, executor):
    job_id = new_job(client)
    move(api_server, job_id, "queued")
    apply(api_server, executor, cr(job_id, "Queued", "Unschedulable", "No node can run pod p yet: 0/1 nodes"))
    apply(api_server, executor, cr(job_id, "Queued", "Unschedulable", "No node can run pod p yet: 0/1 nodes"))
    job = apply(api_server, executor, cr(job_id, "Running", "PodRunning", "Pod p is running on node n"))
    assert job.status == "running" and job.attempts == 1
    job = apply(api_server, executor, cr(job_id, "Queued", "Preempted", "Pod p was preempted (x)", attempts=1))
    assert job.status == "queued"
    job = apply(api_server, executor, cr(job_id, "Running", "Resumed", "Pod q is running (attempt 2)", attempts=2))
    assert job.status == "running" and job.attempts == 2
    lines = event_lines(client, job_id)
    assert lines.count("warn: No node can run pod p yet: 0/1 nodes") == 1  # replayed statuses add nothing
    assert "info: Fine-tuning job started: Pod p is running on node n" in lines
    assert "warn: Pod p was preempted (x)" in lines
    assert "info: Fine-tuning job resumed: Pod q is running (attempt 2)" in lines


def test_a_fresh_executor_does_not_repeat_warnings(api_server, client, executor):
    job_id = new_job(client)
    move(api_server, job_id, "queued")
    body = cr(job_id, "Queued", "ImagePullBackOff", "Cannot pull the trainer image x")
    apply(api_server, executor, body)
    state = api_server.state
    restarted = KubernetesExecutor(state.settings, state.sessions, state.store)
    apply(api_server, restarted, body)
    assert event_lines(client, job_id).count("warn: Cannot pull the trainer image x") == 1


@pytest.mark.parametrize(("reason", "code"), [
    ("OOMKilled", "out_of_memory"), ("DeadlineExceeded", "deadline_exceeded"),
    ("Unschedulable", "unschedulable"), ("InvalidSpec", "executor_error"), ("PodFailed", "training_error"),
])
def test_failures_carry_the_clusters_reason(api_server, client, executor, reason, code):
    job_id = new_job(client)
    move(api_server, job_id, "queued", "running")
    job = apply(api_server, executor, cr(job_id, "Failed", reason, f"it failed: {reason}", exitCode=None))
    assert job.status == "failed"
    assert job.error == {"code": code, "message": f"it failed: {reason}"}


def test_trainer_exit_codes_use_the_trainers_own_report(api_server, client, executor):
    job_id = new_job(client)
    move(api_server, job_id, "queued")  # never seen running: the status jumped straight to Failed
    job = apply(api_server, executor, cr(job_id, "Failed", "BadInput", "The trainer rejected its input: line 2",
                                         exitCode=65))
    assert job.status == "failed" and job.error["code"] == "invalid_training_file"
    assert job.error["message"] == "The trainer rejected its input: line 2"


def test_success_needs_the_published_model(api_server, client, executor):
    ok, missing = new_job(client), new_job(client)
    move(api_server, ok, "queued", "running")
    move(api_server, missing, "queued", "running")
    store = api_server.state.store
    store.put_bytes(f"jobs/{ok}/model/manifest.json",
                    b'{"files": [{"name": "adapter_model.safetensors", "bytes": 1, "sha256": "00"}]}')
    assert apply(api_server, executor, cr(ok, "Succeeded", "Completed")).status == "succeeded"
    job = apply(api_server, executor, cr(missing, "Succeeded", "Completed"))
    assert job.status == "failed" and "manifest" in job.error["message"]


def test_cancelled_and_terminal_jobs(api_server, client, executor):
    job_id = new_job(client)
    move(api_server, job_id, "queued", "running")
    assert apply(api_server, executor, cr(job_id, "Cancelled", "Cancelled")).status == "cancelled"
    # a job cancelled while the cluster was unreachable: its still-running FineTuneJob gets cancelled
    other = new_job(client)
    move(api_server, other, "queued", "cancelled")
    apply(api_server, executor, cr(other, "Running", "PodRunning"))
    assert executor._cancels == {other}
    # validating jobs are the submit loop's business
    fresh = new_job(client)
    assert apply(api_server, executor, cr(fresh, "Running", "PodRunning")).status == "validating_files"


def test_progress_text():
    assert progress_text({"step": 30, "total_steps": 120}) == "30/120 (25%)"
    assert progress_text({"step": 7}) == "step 7"
    assert progress_text({}) is None and progress_text(None) is None


class _OneFineTuneJob:
    """Stands in for CustomObjectsApi.get_namespaced_custom_object: answers one FineTuneJob, or raises."""

    def __init__(self, answer: dict[str, Any] | BaseException) -> None:
        self.answer = answer

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_a_delete_waits_for_the_pods_of_a_cancelled_job(executor):
    from kubernetes.client.exceptions import ApiException

    def reason(answer: dict[str, Any] | BaseException) -> str | None:
        executor.custom = _OneFineTuneJob(answer)  # type: ignore[assignment]
        return executor.running_reason("ftjob-1")

    assert reason(cr("ftjob-1", "Running", "PodRunning", activePods=1)) == "the job's pods are still stopping"
    assert reason(cr("ftjob-1", "Cancelled", "Cancelled", activePods=1)) == "the job's pods are still stopping"
    assert reason(cr("ftjob-1", "Cancelled", "Cancelled", activePods=0)) is None
    assert reason(cr("ftjob-1", "Failed", "OOMKilled")) is None  # from an operator before activePods
    assert reason({"metadata": {"name": "ftjob-1"}, "spec": {}}) is None  # not handled yet: no pods
    assert reason(ApiException(status=404)) is None
    assert "cannot be reached" in str(reason(ApiException(status=503)))
    assert "cannot be reached" in str(reason(ConnectionRefusedError()))
