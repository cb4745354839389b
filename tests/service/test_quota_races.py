"""Quotas hold under real concurrency, on SQLite and PostgreSQL: 50 creates at once against a quota of 20 leave
exactly 20 active jobs (the check and the insert are one transaction under the organization's lock); the same
for stored bytes, GPUs and the queued-job limit."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.helpers import BASE_MODEL, add_tenant, assert_error, chat_file, upload
from tests.support.live_server import ThreadServer, make_settings
from tests.support.postgres import PostgresServer, find_pg_bin
from tests.support.waiting import free_port
from tuneforge.service.db.repo import TenantRepo

CONCURRENT = 50
QUOTA = 20


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server not installed (.ci/system-deps)")
    server = PostgresServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadServer]:
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg").create_database(f"quota_{free_port()}")
    limits = {"max_active_jobs_per_tenant": QUOTA, "max_stored_bytes_per_tenant": 10 * len(chat_file(3)) + 5}
    srv = ThreadServer(make_settings(tmp_path / "home", free_port(), database_url=url, limits=limits),
                       start_executor=False).start()
    yield srv
    srv.stop()


def _at_once(n: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(call, range(n)))


def _active(server: ThreadServer, tenant: str = "default") -> int:
    with server.state.sessions() as session:
        return TenantRepo(session, tenant).count_active_jobs()


def test_concurrent_creates_never_exceed_the_active_job_quota(server: ThreadServer) -> None:
    with server.client() as client:
        file_id = upload(client, chat_file())["id"]
    body = {"model": BASE_MODEL, "training_file": file_id}

    def create(_: int) -> httpx.Response:
        with server.client() as c:
            return c.post("/v1/fine_tuning/jobs", json=body)

    responses = _at_once(CONCURRENT, create)
    codes = Counter(r.status_code for r in responses)
    assert codes == {200: QUOTA, 429: CONCURRENT - QUOTA}, codes
    for refused in (r for r in responses if r.status_code == 429):
        assert_error(refused, 429, code="quota_exceeded")
    assert _active(server) == QUOTA
    with server.client() as client:
        listed = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        assert len(listed) == QUOTA
        assert client.get("/v1/organization").json()["usage"]["active_jobs"] == QUOTA
        # every created job has exactly its one creation event
        for job in listed[:5]:
            events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
            assert [e["data"]["status"] for e in events] == ["validating_files"]


def test_concurrent_creates_with_one_idempotency_key_make_one_job(server: ThreadServer) -> None:
    with server.client() as client:
        file_id = upload(client, chat_file())["id"]
    body = {"model": BASE_MODEL, "training_file": file_id}

    def create(_: int) -> httpx.Response:
        with server.client() as c:
            return c.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "nightly-run"})

    responses = _at_once(20, create)
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200][:2]
    assert len({r.json()["id"] for r in responses}) == 1
    assert _active(server) == 1


def test_one_organizations_rush_does_not_use_anothers_quota(server: ThreadServer) -> None:
    other = add_tenant(server, "acme", "tf-quota-race-acme-key-0123456789abcdef", "member")
    with server.client() as client:
        mine = upload(client, chat_file())["id"]
    theirs = upload(other, chat_file())["id"]

    def create(i: int) -> httpx.Response:
        key, file_id = (None, mine) if i % 2 else ("tf-quota-race-acme-key-0123456789abcdef", theirs)
        with server.client(key) as c:
            return c.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": file_id})

    responses = _at_once(2 * QUOTA, create)
    assert {r.status_code for r in responses} == {200}
    assert _active(server, "default") == _active(server, "acme") == QUOTA
    other.close()


def test_concurrent_uploads_never_exceed_the_storage_quota(server: ThreadServer) -> None:
    content = chat_file(3)

    def send(i: int) -> httpx.Response:
        with server.client() as c:
            return c.post("/v1/files", files={"file": (f"f{i}.jsonl", content, "application/jsonl")})

    responses = _at_once(16, send)
    codes = Counter(r.status_code for r in responses)
    assert codes == {200: 10, 429: 6}, (codes, [r.text for r in responses if r.status_code not in (200, 429)][:2])
    with server.client() as client:
        files = client.get("/v1/files", params={"limit": 100}).json()["data"]
        assert len(files) == 10 and sum(f["bytes"] for f in files) <= 10 * len(content) + 5
        usage = client.get("/v1/organization").json()["usage"]
        assert usage["stored_bytes"] == 10 * len(content)
        # full: the next upload is refused before its body is read, and deleting makes room
        assert_error(client.post("/v1/files", files={"file": ("x.jsonl", content)}), 429, code="quota_exceeded")
        client.delete(f"/v1/files/{files[0]['id']}")
        assert client.post("/v1/files", files={"file": ("x.jsonl", content)}).status_code == 200
    stored = [p for p in Path(server.state.store.root).rglob("*") if p.is_file() and p.parts[-2] == "files"]
    assert len(stored) == 10, "a refused upload left its object in the store"


@pytest.mark.limits(max_gpus_per_tenant=4, max_queued_jobs_per_tenant=3)
def test_gpu_and_queued_job_quotas(api_server: ThreadServer) -> None:
    with api_server.client() as client:
        file_id = upload(client, chat_file())["id"]

        def create(**resources: Any) -> httpx.Response:
            return client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": file_id,
                                                             "resources": resources})

        assert create(gpus=2, nodes=1).status_code == 200
        error = assert_error(create(gpus=2, nodes=2), 429, code="quota_exceeded", param="resources.gpus")
        assert "asks for 4 GPUs" in error["message"] and "hold 2" in error["message"]
        assert create(gpus=2).status_code == 200
        assert create(gpus=0).status_code == 200  # the local executor counts no GPUs for "0"
        error = assert_error(create(gpus=0), 429, code="quota_exceeded")
        assert "3 jobs waiting" in error["message"]
        assert json.loads(client.get("/v1/organization").text)["usage"] == {
            "active_jobs": 3, "queued_jobs": 3, "gpus": 4, "stored_bytes": len(chat_file())}
