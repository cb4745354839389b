"""Request metrics middleware and the ``/metrics`` route.

``/metrics`` needs no API key by default (Prometheus scrapes it from inside the cluster or from the same
machine). Set ``TUNEFORGE_METRICS_TOKEN`` (``settings.auth.metrics_token``) to require
``Authorization: Bearer <token>`` on it (Prometheus: ``authorization: {credentials: <token>}`` in the scrape
config).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.service.core.errors import Unauthenticated
from tuneforge.service.observability.metrics import ServiceMetrics

UNMATCHED = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The matched route's template (bounded), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Pure ASGI (streams pass through untouched): counts requests and times them to the first byte."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorded = False
        method = scope.get("method", "GET")

        def record(status: int) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            labels = (route_template(scope), method, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(int(message["status"]))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            record(500)
            raise
        finally:
            self.metrics.in_flight.dec()


router = APIRouter(tags=["observability"])


def _check_token(request: Request, wanted: str) -> None:
    if not wanted:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), wanted.encode()):
        raise Unauthenticated("/metrics needs 'Authorization: Bearer <TUNEFORGE_METRICS_TOKEN>'.")


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            description="No API key needed unless TUNEFORGE_METRICS_TOKEN is set; then send it as a bearer token.",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    state: Any = request.app.state.tuneforge
    _check_token(request, state.settings.auth.metrics_token)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
