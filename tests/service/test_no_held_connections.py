"""No request holds a database connection while it waits on a client (fault 1 of issue 13).

Each test opens more stalled requests of one kind than the connection pool has connections (5 + 10 overflow):
event streams whose client reads nothing, downloads (file content, signed artifact links) whose client stops
reading, uploads whose body stops half-way. Meanwhile another tenant's requests and ``/readyz`` must answer at
once, and the pool must be (nearly) idle. Before the fix every stalled download kept its request's session,
and the 16th made every other request wait 30 s for a connection and fail with a 500.

The stalled clients are raw sockets with a small receive buffer, so the server really blocks on them.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service.helpers import add_tenant, chat_file, create_job, update_job, upload
from tests.support.live_server import ThreadServer
from tests.support.waiting import wait_for
from tuneforge.contracts.store_layout import MANIFEST_NAME, job_model_prefix
from tuneforge.service.db.models import File, now
from tuneforge.service.db.repo import TenantRepo

pytestmark = pytest.mark.timeout(240)

#: more than the pool's 15 connections
STALLED = 20
#: a body no socket buffer on loopback swallows whole (the client's receive buffer is 4 KiB)
BIG = 24 << 20
OTHER_KEY = "tf-held-connections-other-tenant-0123456789"


def _send(server: ThreadServer, head: str, body: bytes = b"") -> socket.socket:
    """Send a request (or its beginning) and return the socket; the caller then stops reading or writing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.settings.server.port))
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def _get(server: ThreadServer, target: str, key: str | None) -> str:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"


def _read_status(sock: socket.socket) -> bytes:
    """The first bytes of the answer (its status line): the request was authenticated and answered."""
    sock.settimeout(60)
    data = sock.recv(64)
    assert data.startswith(b"HTTP/1.1 200"), data
    return data


def _big_file(server: ThreadServer) -> str:
    """A large stored file (written through the store and the repository: uploading 24 MB through the
    validator would only slow the test down)."""
    content = b"x" * BIG
    file_id = "file-heldconnectionsbigfile0"
    server.state.store.put_stream(f"files/{file_id}", io.BytesIO(content))
    with server.state.sessions() as session:
        TenantRepo(session, "default").add_file(File(
            id=file_id, filename="big.jsonl", purpose="fine-tune", bytes=BIG, key=f"files/{file_id}",
            sha256=hashlib.sha256(content).hexdigest(), format="chat", rows=1, tokens=1, created_at=now()))
    return file_id


def _succeeded_job_with_a_big_artifact(server: ThreadServer, client: httpx.Client) -> str:
    job_id = create_job(client, upload(client, chat_file())["id"])["id"]
    prefix = job_model_prefix(job_id)
    content = b"w" * BIG
    server.state.store.put_stream(f"{prefix}/adapter_model.safetensors", io.BytesIO(content))
    manifest = {"files": [{"name": "adapter_model.safetensors", "bytes": BIG,
                           "sha256": hashlib.sha256(content).hexdigest()}]}
    server.state.store.put_stream(f"{prefix}/{MANIFEST_NAME}", io.BytesIO(json.dumps(manifest).encode()))
    update_job(server, job_id, status="succeeded", fine_tuned_model=f"ft:x:default::{job_id[6:18]}")
    return job_id


def _stall_downloads_of_file_content(server: ThreadServer, client: httpx.Client) -> list[socket.socket]:
    file_id = _big_file(server)
    socks = [_send(server, _get(server, f"/v1/files/{file_id}/content", server.api_key)) for _ in range(STALLED)]
    for sock in socks:
        _read_status(sock)
    return socks


def _stall_artifact_downloads(server: ThreadServer, client: httpx.Client) -> list[socket.socket]:
    job_id = _succeeded_job_with_a_big_artifact(server, client)
    links = client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts").json()["data"]
    url = urlsplit(next(a["url"] for a in links if a["name"] == "adapter_model.safetensors"))
    socks = [_send(server, _get(server, f"{url.path}?{url.query}", None)) for _ in range(STALLED)]
    for sock in socks:
        _read_status(sock)
    return socks


def _stall_event_streams(server: ThreadServer, client: httpx.Client) -> list[socket.socket]:
    job_id = create_job(client, upload(client, chat_file())["id"])["id"]
    targets = [f"/v1/fine_tuning/jobs/{job_id}/events/stream?heartbeat=0.5",
               f"/v1/fine_tuning/jobs/{job_id}/events?stream=true&heartbeat=0.5"]
    socks = [_send(server, _get(server, targets[i % 2], server.api_key)) for i in range(STALLED)]
    for sock in socks:
        _read_status(sock)
    return socks


def _stall_uploads(server: ThreadServer, client: httpx.Client) -> list[socket.socket]:
    boundary = "heldconnections"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.jsonl\"\r\n\r\n"
            .encode() + chat_file(50))
    head = (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.api_key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(part) + 10_000}\r\n")
    socks = [_send(server, head, part) for _ in range(STALLED)]
    in_flight = server.state.metrics.in_flight
    wait_for("every upload to be in flight", lambda: in_flight._value.get() >= STALLED, timeout=60)
    time.sleep(1.0)  # each has been authenticated and is waiting for the rest of its body
    return socks


STALLERS: dict[str, Callable[[ThreadServer, httpx.Client], list[socket.socket]]] = {
    "file-content-downloads": _stall_downloads_of_file_content,
    "artifact-downloads": _stall_artifact_downloads,
    "event-streams": _stall_event_streams,
    "uploads": _stall_uploads,
}


@pytest.fixture
def other(api_server: ThreadServer) -> Iterator[httpx.Client]:
    with add_tenant(api_server, "other-org", OTHER_KEY) as client:
        yield client


@pytest.mark.parametrize("kind", list(STALLERS))
def test_stalled_requests_hold_no_connection_and_others_answer_fast(
        api_server: ThreadServer, client: httpx.Client, other: httpx.Client, kind: str) -> None:
    file_id = upload(other, chat_file(), "theirs.jsonl")["id"]
    socks = STALLERS[kind](api_server, client)
    try:
        engine = api_server.state.engine
        samples = []
        for _ in range(20):
            samples.append(engine.pool.checkedout())
            time.sleep(0.05)
        # no connection per stalled request: a held connection shows in every sample, while a stream's short reads
        # (its replay on opening, then its periodic poll) come and go; on a loaded machine a few of those overlap,
        # so the typical sample is near zero and none reaches half the stalled requests
        assert sorted(samples)[len(samples) // 2] <= 2, samples
        assert max(samples) <= STALLED // 2, samples
        if kind == "event-streams":
            # the streams' reads share a few tokens (server.stream_db_readers), so even streams opened together
            # and re-reading in step never hold more connections than that (CI once saw 14 of 20 at once)
            readers = api_server.settings.server.stream_db_readers
            assert max(samples) <= readers + 2, (samples, readers)

        # another tenant, a few of its requests at once, and the readiness probe: all answer at once
        with httpx.Client(base_url=api_server.url, timeout=httpx.Timeout(20)) as anonymous:
            for request in (lambda: other.get("/v1/files"), lambda: other.get(f"/v1/files/{file_id}"),
                            lambda: other.get("/v1/fine_tuning/jobs"),
                            lambda: other.post("/v1/fine_tuning/jobs", json={
                                "model": "SmolLM2-135M-Instruct", "training_file": file_id}),
                            lambda: anonymous.get("/readyz")):
                started = time.monotonic()
                response = request()
                elapsed = time.monotonic() - started
                assert response.status_code == 200, response.text
                # the fault was a 30 s wait for a pooled connection, then a 500; 10 s leaves room for a busy machine
                assert elapsed < 10, f"{response.request.url} took {elapsed:.1f} s with {STALLED} {kind} stalled"
    finally:
        for sock in socks:
            sock.close()
