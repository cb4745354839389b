"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``; never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 400
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.details = details
        if status_code is not None:
            self.status_code = status_code

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code,
        }
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class NotFound(APIError):
    status_code = 404

    def __init__(self, kind: str, ident: str, param: str | None = None) -> None:
        code = kind.replace(" ", "_").replace("-", "_") + "_not_found"
        super().__init__(f"No {kind} found with id '{ident}'.", param=param, code=code)


class Unauthorized(APIError):
    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")


class Conflict(APIError):
    status_code = 409


class TooManyRequests(APIError):
    status_code = 429
    type = "rate_limit_error"


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return _json(exc.status_code, exc.body(), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        text = f"Invalid value for '{param}': {message}" if param else f"Invalid request: {message}"
        details = [
            {"param": ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form")),
             "message": e.get("msg")}
            for e in errors
        ]
        return _json(400, APIError(text, param=param, code="invalid_value", details=details).body())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = APIError(str(exc.detail), code=code, status_code=exc.status_code)
        return _json(exc.status_code, err.body())

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        err = APIError("The server had an error while processing your request.", code="internal_error")
        err.type = "server_error"
        return _json(500, err.body())
