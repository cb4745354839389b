"""Errors the engine answers with, in OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """A request the engine refuses or cannot serve; ``status`` is the HTTP status of the answer."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class BadRequest(EngineError):
    pass


class NotFound(EngineError):
    status = 404
    type = "not_found_error"


class Overloaded(EngineError):
    status = 503
    type = "server_error"


class EngineFailure(EngineError):
    """The generation loop failed (a bug or out of memory): the request cannot complete."""

    status = 500
    type = "server_error"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
