"""The local executor with the real trainer subprocess: cancellation, crashes, bad input, concurrency."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.data import write_chat_file
from tests.support.live_server import ThreadServer, make_settings, wait_for_status
from tests.support.models import register_model
from tests.support.tiny_model import make_tiny_model
from tests.support.waiting import free_port


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("TUNEFORGE_TEST_MODEL_DIR")
    return make_tiny_model(Path(cache) if cache else tmp_path_factory.mktemp("tiny"))


def _upload(client, path: Path) -> str:  # type: ignore[no-untyped-def]
    with open(path, "rb") as fh:
        response = client.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_stops_the_trainer_within_seconds(server: ThreadServer, tiny: Path, tmp_path: Path) -> None:
    client = server.client()
    file_id = _upload(client, write_chat_file(tmp_path / "t.jsonl", rows=32))
    job = client.post("/v1/fine_tuning/jobs", json={
        "model": register_model(server, tiny), "training_file": file_id,
        "hyperparameters": {"n_epochs": 50, "batch_size": 1},  # long enough to still be running
    }).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        if current["status"] == "running" and (current.get("progress") or {}).get("step", 0) >= 1:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"job never started training: {current}")
    executor = server.state.executor
    pid = executor.running[job["id"]].process.pid
    started = time.monotonic()
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    while _pid_alive(pid) and time.monotonic() - started < 15:
        time.sleep(0.1)
        executor.tick()  # reap the child promptly
    elapsed = time.monotonic() - started
    assert not _pid_alive(pid), "trainer still running 15 s after cancel"
    assert elapsed < 15
    time.sleep(1)
    final = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert final["status"] == "cancelled" and final["finished_at"] is not None
    messages = [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                                                 params={"limit": 100}).json()["data"]]
    assert any("cancelled" in m for m in messages)


def test_trainer_crash_fails_the_job_with_its_message(tmp_path: Path, tiny: Path) -> None:
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nprint('loading...')\nraise RuntimeError('CUDA driver exploded')\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {os.sys.executable} {crash}\n")  # type: ignore[attr-defined]
    wrapper.chmod(0o755)
    settings = make_settings(tmp_path / "home", free_port(), trainer_python=str(wrapper), poll_interval_seconds=0.2)
    srv = ThreadServer(settings).start()
    try:
        client = srv.client()
        file_id = _upload(client, write_chat_file(tmp_path / "t.jsonl", rows=8))
        job = client.post("/v1/fine_tuning/jobs",
                          json={"model": register_model(srv, tiny), "training_file": file_id}).json()
        final = wait_for_status(client, job["id"], {"failed", "succeeded"}, timeout=60)
    finally:
        srv.stop()
    assert final["status"] == "failed"
    assert final["error"]["message"] == "RuntimeError: CUDA driver exploded"
    assert "Traceback" not in final["error"]["message"]


def test_bad_model_directory_fails_with_the_trainers_reason(server: ThreadServer, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # no tokenizer, and weights that are not
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    client = server.client()
    file_id = _upload(client, write_chat_file(tmp_path / "t.jsonl", rows=8))
    model = register_model(server, broken, "broken-model")
    job = client.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": file_id}).json()
    final = wait_for_status(client, job["id"], {"failed", "succeeded"}, timeout=120)
    assert final["status"] == "failed"
    assert final["error"]["code"] == "invalid_input", final["error"]
    assert "broken-model" in final["error"]["message"] and "Traceback" not in final["error"]["message"]


def test_jobs_run_one_at_a_time_by_default(server: ThreadServer, tiny: Path, tmp_path: Path) -> None:
    client = server.client()
    file_id = _upload(client, write_chat_file(tmp_path / "t.jsonl", rows=8))
    ids = [client.post("/v1/fine_tuning/jobs", json={
        "model": register_model(server, tiny), "training_file": file_id,
        "hyperparameters": {"n_epochs": 1, "batch_size": 4},
    }).json()["id"] for _ in range(2)]
    seen_running: set[int] = set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        statuses = [client.get(f"/v1/fine_tuning/jobs/{i}").json()["status"] for i in ids]
        seen_running.add(statuses.count("running"))
        if all(s == "succeeded" for s in statuses):
            break
        assert "failed" not in statuses, statuses
        time.sleep(0.1)
    else:
        pytest.fail("jobs did not finish")
    assert max(seen_running) == 1


def test_deleting_a_finished_job_removes_its_objects_logs_and_scratch(
    server: ThreadServer, tiny: Path, tmp_path: Path
) -> None:
    client = server.client()
    file_id = _upload(client, write_chat_file(tmp_path / "t.jsonl", rows=8))
    job = client.post("/v1/fine_tuning/jobs", json={
        "model": register_model(server, tiny), "training_file": file_id,
        "hyperparameters": {"n_epochs": 1, "batch_size": 4},
    }).json()
    assert wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=180)["status"] == "succeeded"
    executor = server.state.executor
    log_path = executor.log_dir / f"{job['id']}.log"
    assert log_path.is_file() and (executor.work_dir / job["id"]).is_dir()
    assert list(server.state.store.list(f"jobs/{job['id']}/"))

    response = client.delete(f"/v1/fine_tuning/jobs/{job['id']}")
    assert response.status_code == 200 and response.json()["deleted"] is True
    assert not log_path.exists() and not (executor.work_dir / job["id"]).exists()
    assert not list(server.state.store.list(f"jobs/{job['id']}/"))
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").status_code == 404
