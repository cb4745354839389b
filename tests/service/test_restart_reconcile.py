"""A restart loses no job: jobs left ``running`` are re-queued (or failed once attempts run out).

No training happens here: the trainer is ``/bin/false`` or a tiny shell script, or launching is disabled.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.helpers import chat_file, create_job, load_job, update_job, upload
from tests.support.live_server import ThreadServer, make_settings, wait_for_status
from tests.support.waiting import free_port

Restart = Callable[[], ThreadServer]
RESTART = "The service restarted while this job was running"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _running_job(home: Path, **fields: Any) -> str:
    """Create a job through the API of a first server, mark it running in the DB, and stop that server."""
    first = ThreadServer(make_settings(home, free_port()), start_executor=False).start()
    try:
        with first.client() as client:
            job_id = str(create_job(client, upload(client, chat_file())["id"])["id"])
        update_job(first, job_id, **{"status": "running", "attempts": 1, "started_at": int(time.time()), **fields})
    finally:
        first.stop()
    return job_id


@pytest.fixture
def restarted(home: Path, request: pytest.FixtureRequest) -> Iterator[Restart]:
    """The second start, with its executor; parametrize indirectly with executor settings."""
    params: dict[str, Any] = {"poll_interval_seconds": 0.1, **getattr(request, "param", {})}
    server: ThreadServer | None = None

    def start() -> ThreadServer:
        nonlocal server
        server = ThreadServer(make_settings(home, free_port(), **params)).start()
        return server

    yield start
    if server is not None:
        server.stop()


def _events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                                            params={"order": "asc", "limit": 100}).json()["data"]
    return data


@pytest.mark.parametrize("restarted", [{"max_concurrent_jobs": 0}], indirect=True)
def test_running_job_is_requeued_after_a_restart(home: Path, restarted: Restart) -> None:
    job_id = _running_job(home)
    server = restarted()
    with server.client() as client:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "queued"
        assert job["error"] is None and job["finished_at"] is None
        assert job["attempts"] == 1
        last = _events(client, job_id)[-1]
        assert last["level"] == "warn"
        assert RESTART in last["message"] and "re-queued" in last["message"]
        assert last["data"] == {"status": "queued"}
        # nothing launches it (no free slots): it stays queued, and stays listed
        time.sleep(0.5)
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "queued"
        assert [j["id"] for j in client.get("/v1/fine_tuning/jobs").json()["data"]] == [job_id]


@pytest.mark.parametrize("restarted", [{"max_concurrent_jobs": 0, "max_attempts": 3}], indirect=True)
def test_running_job_fails_clearly_when_attempts_are_exhausted(home: Path, restarted: Restart) -> None:
    job_id = _running_job(home, attempts=3)
    server = restarted()
    with server.client() as client:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "failed"
        assert job["finished_at"] is not None
        assert job["error"]["code"] == "interrupted"
        assert RESTART in job["error"]["message"]
        assert "giving up after 3 attempts" in job["error"]["message"]
        assert "Traceback" not in job["error"]["message"]
        last = _events(client, job_id)[-1]
        assert last["level"] == "error" and RESTART in last["message"]


@pytest.mark.parametrize("restarted", [{"trainer_python": "/bin/false"}], indirect=True)
def test_requeued_job_runs_again_and_a_failing_trainer_fails_it_clearly(home: Path, restarted: Restart) -> None:
    job_id = _running_job(home)
    server = restarted()
    with server.client() as client:
        job = wait_for_status(client, job_id, {"failed", "succeeded", "cancelled"}, timeout=60)
        assert job["status"] == "failed"
        assert job["attempts"] == 2
        assert job["error"] == {"code": "training_error", "message": "The trainer exited with code 1", "param": None}
        messages = [e["message"] for e in _events(client, job_id)]
        assert any(RESTART in m for m in messages)
        assert "Fine-tuning job started (attempt 2)" in messages
        assert messages[-1] == "Fine-tuning failed: The trainer exited with code 1"
    # the spec files (they hold the job's progress token) are gone once the job is over
    assert not list((home / "jobs" / job_id).glob("jobspec-attempt-*.json"))


FAKE_TRAINER = """#!/bin/sh
echo "[tuneforge] loading the base model"
echo "Traceback (most recent call last):" >&2
echo '  File "/opt/trainer/main.py", line 10, in main' >&2
echo '    load(spec)' >&2
echo "RuntimeError: the base model weights are corrupt (bad safetensors header)" >&2
exit 3
"""


@pytest.fixture
def fake_trainer(tmp_path: Path) -> str:
    path = tmp_path / "fake-trainer.sh"
    path.write_text(FAKE_TRAINER)
    path.chmod(0o755)
    return str(path)


def test_trainer_crash_reports_its_error_not_a_traceback(home: Path, fake_trainer: str) -> None:
    job_id = _running_job(home)
    server = ThreadServer(make_settings(home, free_port(), trainer_python=fake_trainer,
                                        poll_interval_seconds=0.1)).start()
    try:
        with server.client() as client:
            job = wait_for_status(client, job_id, {"failed", "succeeded", "cancelled"}, timeout=60)
    finally:
        server.stop()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "training_error"
    assert job["error"]["message"] == "RuntimeError: the base model weights are corrupt (bad safetensors header)"
    assert "Traceback" not in job["error"]["message"] and "File " not in job["error"]["message"]


@pytest.mark.parametrize("restarted", [{"max_concurrent_jobs": 0}], indirect=True)
def test_orphaned_trainer_of_a_killed_service_is_stopped_before_requeue(home: Path, restarted: Restart) -> None:
    orphan = subprocess.Popen(["sleep", "120"], start_new_session=True)
    reaper = threading.Thread(target=orphan.wait, daemon=True)  # reap it at once so its pid really goes away
    reaper.start()
    try:
        job_id = _running_job(home, pid=orphan.pid)
        server = restarted()
        reaper.join(timeout=10)
        assert orphan.returncode == -15  # SIGTERM: the trainer's cue to checkpoint and stop
        assert load_job(server, job_id).status == "queued"
    finally:
        if orphan.poll() is None:
            orphan.kill()


@pytest.mark.parametrize("restarted", [{"max_concurrent_jobs": 0}], indirect=True)
def test_pending_jobs_survive_a_restart_and_are_validated(home: Path, restarted: Restart) -> None:
    first = ThreadServer(make_settings(home, free_port()), start_executor=False).start()
    try:
        with first.client() as client:
            ok_file = upload(client, chat_file())["id"]
            gone_file = upload(client, chat_file(2))["id"]
            ok_job = create_job(client, ok_file)["id"]
            gone_job = create_job(client, gone_file)["id"]
            assert client.delete(f"/v1/files/{gone_file}").status_code == 200
    finally:
        first.stop()
    server = restarted()
    with server.client() as client:
        assert wait_for_status(client, ok_job, {"queued"}, timeout=30)["status"] == "queued"
        failed = wait_for_status(client, gone_job, {"failed"}, timeout=30)
        assert failed["error"]["param"] == "training_file"
        assert gone_file in failed["error"]["message"] and "deleted" in failed["error"]["message"]
