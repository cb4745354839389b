"""``kill -9`` of the service under load loses nothing it acknowledged, on SQLite and PostgreSQL.

Four clients upload files and create jobs as fast as the server answers; the server process is killed with
SIGKILL in the middle. After a restart on the same home and database, every upload and job the server answered
200 for exists, every file's content is exactly what was sent (an upload the kill interrupted is either whole or
absent, never half-stored), and the server answers without a 5xx. Bounded: at most 4 x 40 requests; the kill comes
after 40 acknowledgements, or after 1.5 s once both uploads and jobs were acknowledged, and at the latest at 30 s."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.helpers import chat_row, jsonl
from tests.support.live_server import ProcessServer

CLIENTS = 4
REQUESTS_PER_CLIENT = 40
KILL_AFTER_SECONDS = 1.5
KILL_AFTER_ACKS = 40
MAX_LOAD_SECONDS = 30


def _content(client: int, n: int) -> bytes:
    # unique per request, so a stored file can be matched to what was sent for it
    rows = [chat_row(i) for i in range(3)]
    rows[0]["messages"][0]["content"] = f"client {client} request {n}"
    return jsonl(rows)


class Load:
    def __init__(self, server: ProcessServer, training_file: str) -> None:
        self.server = server
        self.training_file = training_file
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}  # acknowledged file id -> content sent
        self.jobs: set[str] = set()
        self.sent: dict[str, bytes] = {}  # filename -> content, acknowledged or not
        self.server_errors: list[str] = []
        self.refused: list[str] = []  # 4xx answers (none expected)

    def both_kinds_acknowledged(self) -> bool:
        with self.lock:
            return len(self.files) >= 2 and len(self.jobs) >= 2

    def acks(self) -> int:
        with self.lock:
            return len(self.files) + len(self.jobs)

    def run(self, client_no: int, stop: threading.Event) -> None:
        with self.server.client() as client:
            for n in range(REQUESTS_PER_CLIENT):
                if stop.is_set():
                    return
                try:
                    if (n + client_no) % 2 == 0:  # half the clients start with an upload, half with a job
                        name = f"c{client_no}-r{n}.jsonl"
                        content = _content(client_no, n)
                        with self.lock:
                            self.sent[name] = content
                        resp = client.post("/v1/files", data={"purpose": "fine-tune"},
                                           files={"file": (name, content, "application/jsonl")})
                        if resp.status_code == 200:
                            with self.lock:
                                self.files[resp.json()["id"]] = content
                    else:
                        resp = client.post("/v1/fine_tuning/jobs", json={
                            "model": "SmolLM2-135M-Instruct", "training_file": self.training_file,
                            "metadata": {"client": str(client_no), "n": str(n)}})
                        if resp.status_code == 200:
                            with self.lock:
                                self.jobs.add(resp.json()["id"])
                    if 400 <= resp.status_code < 500:
                        self.refused.append(f"{resp.status_code}: {resp.text[:200]}")
                    if resp.status_code >= 500:
                        self.server_errors.append(f"{resp.status_code}: {resp.text[:200]}")
                except httpx.HTTPError:
                    return  # the server is gone: what was not answered was not acknowledged


@pytest.mark.slow
def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path, database_url: str) -> None:
    env = {"TUNEFORGE_EXECUTOR": "none", "TUNEFORGE_MAX_ACTIVE_JOBS": "1000"}
    if database_url:
        env["TUNEFORGE_DATABASE_URL"] = database_url
    home = tmp_path / "home"
    server = ProcessServer(home, env=env).start()
    try:
        with server.client() as client:
            first = client.post("/v1/files", data={"purpose": "fine-tune"},
                                files={"file": ("base.jsonl", _content(99, 0), "application/jsonl")})
            assert first.status_code == 200, first.text
        load = Load(server, first.json()["id"])
        stop = threading.Event()
        threads = [threading.Thread(target=load.run, args=(i, stop), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        while time.monotonic() - started < MAX_LOAD_SECONDS and load.acks() < KILL_AFTER_ACKS and not (
                time.monotonic() - started > KILL_AFTER_SECONDS and load.both_kinds_acknowledged()):
            time.sleep(0.02)
        server.stop("kill")  # SIGKILL: no shutdown handler runs
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    finally:
        server.stop("kill")
    assert load.both_kinds_acknowledged(), (load.files, load.jobs)
    assert not load.server_errors, load.server_errors[:3]
    assert not load.refused, load.refused[:3]

    restarted = ProcessServer(home, port=server.port, env=env).start()
    try:
        with restarted.client() as client:
            for file_id, content in load.files.items():
                meta = client.get(f"/v1/files/{file_id}")
                assert meta.status_code == 200, f"acknowledged file {file_id} lost: {meta.text}"
                assert client.get(f"/v1/files/{file_id}/content").content == content, file_id
            for job_id in load.jobs:
                job = client.get(f"/v1/fine_tuning/jobs/{job_id}")
                assert job.status_code == 200, f"acknowledged job {job_id} lost: {job.text}"
            # whatever the kill interrupted is whole or absent: every stored file is exactly what was sent
            listed: list[dict[str, Any]] = client.get("/v1/files", params={"limit": 100}).json()["data"]
            assert {f["id"] for f in listed} >= set(load.files)
            for meta in listed:
                if meta["filename"] in load.sent:
                    stored = client.get(f"/v1/files/{meta['id']}/content").content
                    assert stored == load.sent[meta["filename"]], meta
                    assert meta["bytes"] == len(stored)
            jobs = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
            assert {j["id"] for j in jobs} >= load.jobs
            assert {j["training_file"] for j in jobs} == {load.training_file}
            assert client.get("/readyz").status_code == 200
    finally:
        restarted.stop()
