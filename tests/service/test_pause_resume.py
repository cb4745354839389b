"""Pause and resume through the API (no executor: jobs stay where the API leaves them): transitions, refusals,
other tenants' ids, and pause/cancel/resume racing each other."""

from __future__ import annotations

import itertools
import random
import threading

import httpx
import pytest

from tests.service.helpers import add_tenant, assert_error, chat_file, create_job, load_job, update_job, upload
from tests.support.live_server import ThreadServer
from tuneforge.service.domain.lifecycle import ALLOWED


@pytest.fixture
def client(api_server: ThreadServer) -> httpx.Client:
    return api_server.client()


@pytest.fixture
def job(client: httpx.Client) -> dict:
    return create_job(client, upload(client, chat_file())["id"])


def _statuses(client: httpx.Client, job_id: str) -> list[str]:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100, "order": "asc"}).json()["data"]
    return [e["data"]["status"] for e in events if (e.get("data") or {}).get("status")]


def test_pause_and_resume_a_waiting_job(client: httpx.Client, job: dict) -> None:
    paused = client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    # pausing again changes nothing
    again = client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert again.status_code == 200 and again.json()["status"] == "paused"
    resumed = client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()
    # never handed to an executor: its files are validated again, like a new job's
    assert resumed["status"] == "validating_files"
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "validating_files"
    assert _statuses(client, job["id"]) == ["validating_files", "paused", "validating_files"]


def test_a_dispatched_job_resumes_to_queued(api_server: ThreadServer, client: httpx.Client, job: dict) -> None:
    update_job(api_server, job["id"], status="running", token_hash="x" * 64)
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()["status"] == "paused"
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "queued"


def test_finished_jobs_cannot_be_paused_or_resumed(api_server: ThreadServer, client: httpx.Client, job: dict) -> None:
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause"), 409, code="job_not_pausable")
    assert_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume"), 409, code="job_not_resumable")
    for status in ("succeeded", "failed"):
        other = create_job(client, job["training_file"])
        update_job(api_server, other["id"], status=status)
        assert_error(client.post(f"/v1/fine_tuning/jobs/{other['id']}/pause"), 409, code="job_not_pausable")
        assert_error(client.post(f"/v1/fine_tuning/jobs/{other['id']}/resume"), 409, code="job_not_resumable")


def test_a_paused_job_can_be_cancelled(client: httpx.Client, job: dict) -> None:
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None


def test_paused_jobs_do_not_count_against_the_active_quota(api_server: ThreadServer, client: httpx.Client) -> None:
    # the default quota is 20 active jobs: pausing one frees a place, resuming it needs one
    file_id = upload(client, chat_file())["id"]
    jobs = [create_job(client, file_id) for _ in range(20)]
    assert_error(client.post("/v1/fine_tuning/jobs", json={"model": jobs[0]["model"], "training_file": file_id}),
                 429)
    client.post(f"/v1/fine_tuning/jobs/{jobs[0]['id']}/pause")
    create_job(client, file_id)
    assert_error(client.post(f"/v1/fine_tuning/jobs/{jobs[0]['id']}/resume"), 429)
    assert load_job(api_server, jobs[0]["id"]).status == "paused"


def test_another_tenants_job_is_a_missing_job(api_server: ThreadServer, client: httpx.Client, job: dict) -> None:
    other = add_tenant(api_server, "org-other", "tf-other-key")
    for action in ("pause", "resume"):
        foreign = other.post(f"/v1/fine_tuning/jobs/{job['id']}/{action}")
        missing = other.post(f"/v1/fine_tuning/jobs/ftjob-doesnotexist000000000000/{action}")
        assert_error(foreign, 404)
        assert foreign.content == missing.content.replace(b"ftjob-doesnotexist000000000000", job["id"].encode())
    assert load_job(api_server, job["id"]).status == "validating_files"


def _valid_history(statuses: list[str]) -> bool:
    return all(b in ALLOWED[a] for a, b in itertools.pairwise(statuses))


def test_pause_cancel_resume_races_end_consistently(api_server: ThreadServer, client: httpx.Client) -> None:
    """Three clients hammer one job with pause, resume and cancel in random order: every answer is 200 or 409,
    every recorded change is an allowed transition, and once a cancel succeeded the job stays cancelled."""
    file_id = upload(client, chat_file())["id"]
    rng = random.Random(1234)
    for _ in range(8):
        job = create_job(client, file_id)
        answers: list[tuple[str, int, str]] = []
        lock = threading.Lock()

        def hammer(actions: list[str], job_id: str = job["id"], answers: list = answers,
                   lock: threading.Lock = lock) -> None:
            with api_server.client() as own:
                for action in actions:
                    resp = own.post(f"/v1/fine_tuning/jobs/{job_id}/{action}")
                    with lock:
                        answers.append((action, resp.status_code, resp.json().get("status", "")))

        threads = [threading.Thread(target=hammer, args=([rng.choice(["pause", "resume", "pause", "cancel"])
                                                          for _ in range(5)],)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert all(code in (200, 409) for _, code, _ in answers), answers
        statuses = _statuses(client, job["id"])
        assert _valid_history(statuses), statuses
        final = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"]
        assert final == statuses[-1]
        if any(action == "cancel" and code == 200 for action, code, _ in answers):
            assert final == "cancelled" and statuses.count("cancelled") == 1, (answers, statuses)
        else:
            assert final in ("paused", "validating_files")
