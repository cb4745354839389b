"""``POST /internal/v1/jobs/{id}/progress``: the trainer's channel, authenticated with the per-job token.

The executor mints the token when it launches a trainer; here the test sets its hash in the DB instead.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.service.helpers import assert_error, chat_file, create_job, load_job, update_job, upload
from tests.support.live_server import ThreadServer
from tuneforge.service.core.security import hash_secret

TOKEN = "t"


@pytest.fixture
def job_id(client: httpx.Client, api_server: ThreadServer) -> str:
    job_id = str(create_job(client, upload(client, chat_file())["id"], suffix="prog")["id"])
    update_job(api_server, job_id, status="running", token_hash=hash_secret(TOKEN))
    return job_id


def post(server: ThreadServer, job_id: str, events: list[dict[str, Any]], token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{server.url}/internal/v1/jobs/{job_id}/progress", json={"events": events}, headers=headers)


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                                            params={"order": "asc", "limit": 100}).json()["data"]
    return data


METRICS = {"kind": "metrics", "seq": 1, "data": {"step": 3, "total_steps": 10, "train_loss": 2.5, "epoch": 0.3,
                                                  "learning_rate": 1e-4, "tokens_per_second": 120.0,
                                                  "eta_seconds": 60}}


@pytest.mark.parametrize("token", [None, "wrong", "tf-not-the-token"])
def test_bad_token_is_401(api_server: ThreadServer, client: httpx.Client, job_id: str, token: str | None) -> None:
    assert_error(post(api_server, job_id, [METRICS], token), 401, code="invalid_api_key")
    assert len(events(client, job_id)) == 1
    assert load_job(api_server, job_id).progress == {}


def test_job_that_was_never_launched_accepts_no_token(api_server: ThreadServer, client: httpx.Client) -> None:
    job_id = create_job(client, upload(client, chat_file())["id"])["id"]  # token_hash is empty until launch
    assert_error(post(api_server, job_id, [METRICS], token="anything"), 401, code="invalid_api_key")


def test_unknown_job_is_404(api_server: ThreadServer) -> None:
    assert_error(post(api_server, "ftjob-doesnotexist", [METRICS]), 404, code="fine_tuning_job_not_found")


def test_malformed_payload_is_400(api_server: ThreadServer, job_id: str) -> None:
    assert_error(post(api_server, job_id, [{"kind": "teleport", "seq": 1}]), 400)


def test_metrics_update_progress_and_become_metrics_events(api_server: ThreadServer, client: httpx.Client,
                                                           job_id: str) -> None:
    resp = post(api_server, job_id, [METRICS])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"accepted": 1}

    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    progress = job["progress"]
    assert (progress["step"], progress["total_steps"], progress["train_loss"]) == (3, 10, 2.5)
    assert progress["tokens_per_second"] == 120.0 and progress["eta_seconds"] == 60
    assert job["estimated_finish"] is not None and job["estimated_finish"] >= job["created_at"] + 60

    metric_events = [e for e in events(client, job_id) if e["type"] == "metrics"]
    assert len(metric_events) == 1
    assert metric_events[0]["data"]["step"] == 3 and metric_events[0]["data"]["train_loss"] == 2.5
    assert "Step 3/10" in metric_events[0]["message"] and "2.5" in metric_events[0]["message"]

    # a later step replaces the live values and keeps the ones it does not report
    later = {"kind": "metrics", "seq": 2, "data": {"step": 4, "train_loss": 2.0}}
    assert post(api_server, job_id, [later]).json() == {"accepted": 1}
    progress = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["progress"]
    assert (progress["step"], progress["total_steps"], progress["train_loss"]) == (4, 10, 2.0)


def test_duplicate_and_older_seq_are_ignored(api_server: ThreadServer, client: httpx.Client, job_id: str) -> None:
    assert post(api_server, job_id, [METRICS]).json() == {"accepted": 1}
    count = len(events(client, job_id))
    assert post(api_server, job_id, [METRICS]).json() == {"accepted": 0}  # a retried batch
    older = {**METRICS, "seq": 1, "data": {"step": 1, "train_loss": 9.0}}
    assert post(api_server, job_id, [older]).json() == {"accepted": 0}
    assert len(events(client, job_id)) == count
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["progress"]["step"] == 3

    # a batch out of order: applied in seq order, duplicates inside it dropped
    batch = [{"kind": "log", "seq": 5, "message": "five"}, {"kind": "log", "seq": 4, "message": "four"},
             {"kind": "log", "seq": 4, "message": "four again"}]
    assert post(api_server, job_id, batch).json() == {"accepted": 2}
    assert [e["message"] for e in events(client, job_id)][-2:] == ["four", "five"]


def test_checkpoint_event_creates_a_checkpoint(api_server: ThreadServer, client: httpx.Client, job_id: str) -> None:
    checkpoint = {"kind": "checkpoint", "seq": 1, "data": {
        "step": 5, "prefix": f"jobs/{job_id}/checkpoints/step-5", "metrics": {"train_loss": 1.25, "valid_loss": 1.5}}}
    assert post(api_server, job_id, [checkpoint]).json() == {"accepted": 1}
    second = {"kind": "checkpoint", "seq": 2, "data": {"step": 10, "prefix": f"jobs/{job_id}/checkpoints/step-10",
                                                       "metrics": {"train_loss": 0.75}}}
    assert post(api_server, job_id, [second]).json() == {"accepted": 1}

    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()
    assert listed["object"] == "list" and listed["has_more"] is False
    newest, oldest = listed["data"]
    assert newest["object"] == "fine_tuning.job.checkpoint"
    assert newest["id"].startswith("ftckpt-")
    assert (newest["step_number"], oldest["step_number"]) == (10, 5)
    assert oldest["metrics"] == {"step": 5, "train_loss": 1.25, "valid_loss": 1.5}
    assert oldest["fine_tuning_job_id"] == job_id
    assert oldest["fine_tuned_model_checkpoint"].startswith("ft:SmolLM2-135M-Instruct:default:prog:")
    assert oldest["fine_tuned_model_checkpoint"].endswith(":ckpt-step-5")
    assert isinstance(oldest["created_at"], int)

    page = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 1}).json()
    assert page["has_more"] is True and page["data"][0]["id"] == newest["id"]
    assert any("Checkpoint saved at step 5" in e["message"] for e in events(client, job_id))


def test_status_result_and_error_events(api_server: ThreadServer, client: httpx.Client, job_id: str) -> None:
    batch = [
        {"kind": "status", "seq": 1, "data": {"phase": "running", "total_steps": 12}},
        {"kind": "result", "seq": 2, "data": {"trained_tokens": 4321, "model_prefix": f"jobs/{job_id}/model"}},
        {"kind": "error", "seq": 3, "message": "CUDA out of memory", "data": {"code": "out_of_memory"}},
        {"kind": "log", "seq": 4, "level": "warn", "message": "slow disk"},
    ]
    assert post(api_server, job_id, batch).json() == {"accepted": 4}
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["progress"]["total_steps"] == 12
    assert job["trained_tokens"] == 4321
    # the trainer's error is kept for when its process exits; the job is still running until then
    assert job["status"] == "running"
    assert load_job(api_server, job_id).trainer_error == {"code": "out_of_memory", "message": "CUDA out of memory"}
    levels = {e["message"]: e["level"] for e in events(client, job_id)}
    assert levels["CUDA out of memory"] == "error"
    assert levels["slow disk"] == "warn"


def test_retention_removes_checkpoints_from_the_listing(api_server) -> None:  # type: ignore[no-untyped-def]
    """The trainer deletes old checkpoints from the store; the checkpoints API follows."""
    from tuneforge.service.core.security import hash_secret
    from tuneforge.service.db.repo import SystemRepo

    client = api_server.client()
    lines = "".join('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
                    for _ in range(3))
    file_id = client.post("/v1/files", files={"file": ("t.jsonl", lines.encode())}).json()["id"]
    job_id = client.post("/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct",
                                                       "training_file": file_id}).json()["id"]
    with api_server.state.sessions() as session:
        job = SystemRepo(session).job(job_id)
        job.token_hash = hash_secret("tok")
        session.commit()
    events = [
        {"kind": "checkpoint", "seq": i,
         "data": {"step": step, "prefix": f"jobs/{job_id}/checkpoints/step-{step}", "metrics": {"train_loss": 1.0}}}
        for i, step in enumerate((10, 20, 30), start=1)
    ]
    events.append({"kind": "log", "seq": 4, "message": "Removed old checkpoints: steps 10, 20",
                   "data": {"deleted_checkpoint_steps": [10, 20]}})
    response = client.post(f"/internal/v1/jobs/{job_id}/progress", json={"events": events},
                           headers={"Authorization": "Bearer tok"})
    assert response.status_code == 200, response.text
    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in listed] == [30]
