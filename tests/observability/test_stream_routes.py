"""The event stream's two routes (``…/events/stream`` and ``…/events?stream=true``), their OpenAPI entries,
and what a waiting stream holds: no database connection, however many streams are open."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.observability.test_stream_and_metrics import OTHER_KEY, _post, _running_job
from tests.support.live_server import ThreadServer
from tuneforge.service.core.security import hash_secret
from tuneforge.service.db.repo import SystemRepo

pytestmark = pytest.mark.timeout(120)


def _events_url(server: ThreadServer, job_id: str) -> str:
    return f"{server.url}/v1/fine_tuning/jobs/{job_id}/events"


def _read(server: ThreadServer, url: str, params: dict[str, Any], headers: dict[str, str] | None = None,
          count: int | None = None) -> tuple[list[str], str | None]:
    """Event ids until ``count`` of them or ``event: end`` (then its status)."""
    ids: list[str] = []
    with httpx.Client(timeout=httpx.Timeout(20, read=20)) as client, connect_sse(
            client, "GET", url, params={"heartbeat": 0.5, **params},
            headers={"Authorization": f"Bearer {server.api_key}", **(headers or {})}) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            if sse.event == "end":
                return ids, sse.json()["status"]
            if sse.data:
                assert sse.json()["id"] == sse.id
                ids.append(sse.id)
                if count is not None and len(ids) == count:
                    break
    return ids, None


def test_the_events_list_streams_with_stream_true(api_server: ThreadServer) -> None:
    with api_server.client() as client:
        job_id = _running_job(api_server, client)
        for step in (1, 2, 3):
            _post(api_server, job_id, step, step=step, train_loss=2.0)
        listing = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "asc", "limit": 100}).json()
        everything = [e["id"] for e in listing["data"]]
        url = _events_url(api_server, job_id)

        first, end = _read(api_server, url, {"stream": "true"}, count=2)
        assert end is None and first == everything[:2]
        # resume by ?after= (the list's own cursor parameter) and by Last-Event-ID: the same events, once
        by_after, _ = _read(api_server, url, {"stream": "true", "after": first[-1]}, count=len(everything) - 2)
        by_header, _ = _read(api_server, url, {"stream": "true"}, {"Last-Event-ID": first[-1]},
                             count=len(everything) - 2)
        assert by_after == by_header == everything[2:]

        assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
        rest, end = _read(api_server, url, {"stream": "true"}, {"Last-Event-ID": everything[-1]})
        assert end == "cancelled" and len(rest) == 1  # the cancellation event, then the end

        # stream=false (and no stream) is the JSON page, unchanged
        for params in ({"stream": "false"}, {}):
            page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "asc", **params})
            assert page.headers["content-type"] == "application/json"
            assert [e["id"] for e in page.json()["data"]][:3] == everything[:3]
        bad = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"stream": "maybe"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream"


def test_stream_true_is_tenant_scoped_and_authenticated(api_server: ThreadServer) -> None:
    with api_server.client() as client:
        job_id = _running_job(api_server, client)
    with api_server.state.sessions() as session:
        SystemRepo(session).add_api_key("acme", hash_secret(OTHER_KEY))
    url = _events_url(api_server, job_id)
    assert httpx.get(url, params={"stream": "true"}).status_code == 401
    foreign = httpx.get(url, params={"stream": "true"}, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    missing = httpx.get(_events_url(api_server, "ftjob-nope"), params={"stream": "true"},
                        headers={"Authorization": f"Bearer {api_server.api_key}"})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"] == "fine_tuning_job_not_found"


def test_openapi_documents_both_shapes_of_the_events_route(api_server: ThreadServer) -> None:
    paths = httpx.get(f"{api_server.url}/openapi.json").json()["paths"]
    listing = paths["/v1/fine_tuning/jobs/{job_id}/events"]["get"]
    content = listing["responses"]["200"]["content"]
    assert "ListObject" in content["application/json"]["schema"]["$ref"]
    assert "text/event-stream" in content
    params = {p["name"]: p for p in listing["parameters"]}
    assert {"stream", "after", "limit", "order", "heartbeat", "last-event-id"} <= set(params)
    assert params["stream"]["schema"]["type"] == "boolean"
    stream = paths["/v1/fine_tuning/jobs/{job_id}/events/stream"]["get"]
    assert list(stream["responses"]["200"]["content"]) == ["text/event-stream"]


def test_waiting_streams_hold_no_database_connection(api_server: ThreadServer) -> None:
    """More open streams than the connection pool has connections (5 + 10 overflow): each one got its key
    and job checked, and none keeps a connection while it waits; other requests are served meanwhile."""
    with api_server.client() as client:
        job_id = _running_job(api_server, client)
    engine = api_server.state.engine
    streams = 20
    url = f"{api_server.url}/v1/fine_tuning/jobs/{job_id}/events/stream"
    backlog: set[int] = set()  # the streams that got their first event
    stop = threading.Event()

    def listen(index: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(30, read=30)) as client, connect_sse(
                client, "GET", url, params={"heartbeat": 0.5},
                headers={"Authorization": f"Bearer {api_server.api_key}"}) as source:
            for sse in source.iter_sse():
                if sse.data:
                    backlog.add(index)
                if stop.is_set():
                    return

    threads = [threading.Thread(target=listen, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(backlog) < streams and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(backlog) == streams, f"only {len(backlog)} of {streams} streams got their first event"
        samples = []
        for _ in range(20):
            samples.append(engine.pool.checkedout())
            time.sleep(0.05)
        # no stream keeps a connection: only their short re-reads are in flight, and never more of those than
        # the streams' share of the pool (server.stream_db_readers), however many re-read at once
        assert sorted(samples)[len(samples) // 2] <= 1, samples
        assert max(samples) <= api_server.settings.server.stream_db_readers, samples
        started = time.monotonic()
        with api_server.client() as client:
            assert client.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        _post(api_server, job_id, 1, step=1)  # wakes every stream, which then sees stop and hangs up
        for thread in threads:
            thread.join(timeout=20)
