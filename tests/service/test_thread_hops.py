"""A keyed request hands off to the thread pool only where it does I/O.

Each hand-off costs a keyed request more CPU than its queries (``bench/request_costs.py``); a keyed get made seven
(the session's enter and exit, three dependencies without I/O, the route, and FastAPI's validation of the route's
return value), then three (the key lookup, the route, the session's close), now two: the route closes its
session in its own hop.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio.to_thread
import httpx
import pytest

from tests.service.helpers import chat_file, create_job, upload
from tests.support.live_server import ThreadServer


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch, api_server: ThreadServer) -> Iterator[list[str]]:
    """The functions the server hands to the thread pool, recorded from the server's event loop thread only."""
    seen: list[str] = []
    server_loop_thread = api_server.thread
    original = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is server_loop_thread:
            named = func.func if isinstance(func, functools.partial) else func
            seen.append(getattr(named, "__qualname__", repr(named)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    yield seen


def test_a_keyed_get_makes_two_thread_hops(api_server: ThreadServer, client: httpx.Client, hops: list[str]) -> None:
    job = create_job(client, upload(client, chat_file())["id"])
    hops.clear()
    resp = client.get(f"/v1/fine_tuning/jobs/{job['id']}")
    assert resp.status_code == 200, resp.text
    # the key lookup, then the route itself, once: it closes its session at its end, and its return value is
    # validated on the event loop
    assert hops == ["get_principal", "get_job"], hops
    assert api_server.state.engine.pool.checkedout() == 0  # the connection went back all the same


def test_healthz_and_readyz_make_one_thread_hop_each(api_server: ThreadServer, client: httpx.Client,
                                                     hops: list[str]) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200  # its session is closed in the route's hop
    assert hops == ["healthz", "readyz"], hops
    assert api_server.state.engine.pool.checkedout() == 0


def test_a_failing_route_still_closes_its_session(api_server: ThreadServer, client: httpx.Client,
                                                  hops: list[str]) -> None:
    resp = client.get("/v1/fine_tuning/jobs/ftjob-missing")  # the route raises (404) after its query
    assert resp.status_code == 404
    assert hops == ["get_principal", "get_job"], hops
    assert api_server.state.engine.pool.checkedout() == 0


def test_a_refused_key_still_closes_its_session(api_server: ThreadServer, hops: list[str]) -> None:
    resp = httpx.get(f"{api_server.url}/v1/fine_tuning/jobs", headers={"Authorization": "Bearer sk-wrong"})
    assert resp.status_code == 401
    assert hops[0] == "get_principal" and hops[-1].endswith("close"), hops
    assert api_server.state.engine.pool.checkedout() == 0
