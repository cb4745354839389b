"""Every request gets an id: ``x-request-id`` on every response (errors, 404s and streams included), in every
log line written while the request is handled, and in the audit log.

A client's own ``x-request-id`` is kept when it is sane (1-128 characters of letters, digits and ``-_.:``) so a
request can be followed across services; anything else is replaced by a new ``req_…`` id. The middleware also
sends headers that dependencies set for the response (``api.deps.add_response_headers``: the rate-limit
headers) and writes one access-log line per request (logger ``tuneforge.access``).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: the id of the request being handled (None outside requests); logging's records pick it up
request_id_var: ContextVar[str | None] = ContextVar("tuneforge_request_id", default=None)
access_log = logging.getLogger("tuneforge.access")


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SANE.fullmatch(text) else new_request_id()
    return new_request_id()


class RequestContextMiddleware:
    """Pure ASGI (a stream passes through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers") or [])
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                extra = {REQUEST_ID_HEADER: request_id, **state.get("response_headers", {})}
                present = {name.lower() for name, _ in headers}
                headers += [(k.encode(), v.encode("latin-1")) for k, v in extra.items() if k.encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            principal = state.get("principal")
            access_log.info(
                "%s %s %s", scope.get("method"), scope.get("path"), status,
                extra={"http_method": scope.get("method"), "path": scope.get("path"), "status": status,
                       "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                       "organization_id": getattr(principal, "tenant_id", None),
                       "api_key_id": getattr(principal, "key_id", None)})
            request_id_var.reset(token)
