"""The routers every route module uses: a plain ``def`` route runs in the thread pool once, in one hop.

FastAPI runs a sync endpoint in the thread pool and then, in a second hop, validates its return value against the
``response_model``; each hop costs 0.1 ms of CPU in-process and up to 1 ms on this project's virtual machine
(``bench/README.md``, "Control plane"). Wrapping the endpoint in an ``async`` function that makes the one hop
itself lets FastAPI validate on the event loop (microseconds for a model that is already built). The wrapper keeps
``__wrapped__``, so FastAPI reads the parameters, annotations and module globals of the original function; the
route behaves exactly as before. In the same hop, after the route returns, the request's database sessions are
closed (:mod:`.request_sessions`), which would otherwise take a hop of their own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from tuneforge.service.api import request_sessions


def in_one_thread_hop(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` as a coroutine function that runs it in the thread pool (a sync function only)."""

    @functools.wraps(endpoint)  # named as the route: in profiles and thread-pool traces the hop is the route's
    def and_close_sessions(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        finally:
            request_sessions.close_tracked()  # done with them (``SessionDep`` is ``scope="function"``): no extra hop

    @functools.wraps(endpoint)
    async def run(*args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(and_close_sessions, *args, **kwargs)

    return run


class OneHopRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if inspect.isfunction(endpoint) and not (inspect.iscoroutinefunction(endpoint)
                                                 or inspect.isasyncgenfunction(endpoint)
                                                 or inspect.isgeneratorfunction(endpoint)):
            endpoint = in_one_thread_hop(endpoint)
        super().__init__(path, endpoint, **kwargs)


class Router(APIRouter):
    """``APIRouter`` whose sync routes make one thread hop (:class:`OneHopRoute`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("route_class", OneHopRoute)
        super().__init__(**kwargs)
