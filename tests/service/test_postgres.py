"""The service on a real PostgreSQL server (cluster mode's database), not only SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live_server import ThreadServer, make_settings
from tests.support.postgres import PostgresServer, find_pg_bin
from tests.support.waiting import free_port

pytestmark = pytest.mark.skipif(find_pg_bin() is None, reason="PostgreSQL server not installed (.ci/system-deps)")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(free_port()).start()
    yield server
    server.stop()


def _chat_file(path: Path, rows: int) -> Path:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n" for i in range(rows)))
    return path


def test_api_on_postgres(postgres: PostgresServer, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", free_port(), database_url=postgres.url)
    srv = ThreadServer(settings, start_executor=False).start()
    try:
        client = srv.client()
        with open(_chat_file(tmp_path / "t.jsonl", 5), "rb") as fh:
            file = client.post("/v1/files", files={"file": ("t.jsonl", fh)}).json()
        assert file["rows"] == 5
        ids = []
        for i in range(3):
            job = client.post("/v1/fine_tuning/jobs", json={
                "model": "SmolLM2-135M-Instruct", "training_file": file["id"], "metadata": {"n": str(i)},
            }, headers={"Idempotency-Key": f"k{i}"})
            assert job.status_code == 200, job.text
            ids.append(job.json()["id"])
        again = client.post("/v1/fine_tuning/jobs", headers={"Idempotency-Key": "k1"},
                            json={"model": "SmolLM2-135M-Instruct", "training_file": file["id"]})
        assert again.json()["id"] == ids[1]
        page = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
        rest = client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": page["last_id"]}).json()
        assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
        cancelled = client.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel").json()
        assert cancelled["status"] == "cancelled"
        events = client.get(f"/v1/fine_tuning/jobs/{ids[0]}/events", params={"order": "asc"}).json()["data"]
        assert [e["data"]["status"] for e in events] == ["validating_files", "cancelled"]
        assert client.get("/v1/fine_tuning/jobs/ftjob-missing").status_code == 404
    finally:
        srv.stop()
