"""A keyed request hands off to the thread pool only where it does I/O.

Each hand-off costs about 0.1 ms of CPU (``bench/README.md``, "Control plane"); a keyed get made seven (the
session's enter and exit, three dependencies without I/O, the route, and FastAPI's validation of the route's
return value), now three: the key lookup, the route, and the session's close.
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


def test_a_keyed_get_makes_three_thread_hops(client: httpx.Client, hops: list[str]) -> None:
    job = create_job(client, upload(client, chat_file())["id"])
    hops.clear()
    resp = client.get(f"/v1/fine_tuning/jobs/{job['id']}")
    assert resp.status_code == 200, resp.text
    assert len(hops) == 3, hops
    assert hops[0] == "get_principal"
    assert hops[1] == "get_job"  # the route itself, once: its return value is validated on the event loop
    assert hops[2].endswith("close")


def test_healthz_makes_one_thread_hop(client: httpx.Client, hops: list[str]) -> None:
    assert client.get("/healthz").status_code == 200
    assert hops == ["healthz"]


def test_a_refused_key_still_closes_its_session(api_server: ThreadServer, hops: list[str]) -> None:
    resp = httpx.get(f"{api_server.url}/v1/fine_tuning/jobs", headers={"Authorization": "Bearer sk-wrong"})
    assert resp.status_code == 401
    assert hops[0] == "get_principal" and hops[-1].endswith("close"), hops
    assert api_server.state.engine.pool.checkedout() == 0
