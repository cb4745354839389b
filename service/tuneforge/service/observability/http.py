"""Request metrics middleware and the ``/metrics`` route.

``/metrics`` answers everyone with the fleet-wide series (requests, jobs by status and method, the queue), and
a scrape that sends the metrics token (``Authorization: Bearer <token>``) with everything, including the series
that name organizations and jobs (``tuneforge_tenant_*``, per-job ``tuneforge_job_*``). The token is
``TUNEFORGE_METRICS_TOKEN`` or, when that is unset, one generated at first start in ``$TUNEFORGE_HOME/metrics_token``
(Prometheus: ``authorization: {credentials_file: <that file>}``). A wrong token is a 401, so a misconfigured
scrape is noticed.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
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


def _authorized(request: Request, wanted: str) -> bool:
    """True for the metrics token, False for no credentials; a 401 for wrong ones."""
    header = request.headers.get("authorization", "")
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not wanted or not secrets.compare_digest(token.strip().encode(), wanted.encode()):
        raise Unauthenticated("Wrong credentials for /metrics: send 'Authorization: Bearer <metrics token>' "
                              "(TUNEFORGE_METRICS_TOKEN, or the file metrics_token in the service's home), or none "
                              "for the fleet-wide series only.")
    return True


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            description="Fleet-wide series for anyone; with the metrics token as a bearer token, also the series "
            "that name organizations and jobs.",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    state: Any = request.app.state.tuneforge
    private = _authorized(request, state.metrics_token)
    return Response(state.metrics.exposition(private=private), media_type=CONTENT_TYPE_LATEST)
