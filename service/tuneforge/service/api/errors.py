"""OpenAI-shaped error responses: ``{"error": {"message", "type", "param", "code"}}``, never a stack trace.

The domain raises :mod:`tuneforge.service.core.errors`; this module gives each kind its HTTP status. A
request that fails validation is a 400 whose ``param`` names the field as the client wrote it (pydantic's
union tags are left out of the path) and whose ``details`` list every problem.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.contracts.validation import describe
from tuneforge.service.api.openapi import allowed_methods
from tuneforge.service.core.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    RateLimited,
    ServiceError,
    TooLarge,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS: dict[type[ServiceError], int] = {
    InvalidRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    QuotaExceeded: 429,
    RateLimited: 429,
    Unavailable: 503,
}
#: OpenAI answers "invalid_request_error" even for a wrong key (401); only these differ
ERROR_TYPE = {429: "rate_limit_error"}



def status_of(exc: ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(message: str, *, status: int, param: str | None = None, code: str | None = None,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message, "type": ERROR_TYPE.get(status, "invalid_request_error" if status < 500 else
                                                   "server_error"),
        "param": param, "code": code,
    }
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(exc: ServiceError) -> JSONResponse:
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    body = error_body(exc.message, status=status, param=exc.param, code=exc.code, details=exc.details)
    return JSONResponse(status_code=status, content=body, headers=headers)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    details = describe(list(exc.errors()), getattr(exc, "body", None))
    message = details[0]["message"] if details else "Invalid request."
    param = details[0]["param"] if details else None
    payload = error_body(message, status=400, param=param or None, code="invalid_value",
                         details=list(details))
    return JSONResponse(status_code=400, content=payload)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # RFC 9110: Allow lists every method of the resource (the router names only one route's)
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
        return JSONResponse(status_code=exc.status_code, headers=headers,
                            content=error_body(str(exc.detail), status=exc.status_code, code=code))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(status_code=500, content=error_body(
            "The server had an error while processing your request.", status=500, code="internal_error"))
