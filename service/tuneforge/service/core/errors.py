"""The service's errors: what went wrong and where, for a person (``message``), a program (``code``) and the
request field at fault (``param``). Pure exceptions: the domain and the repository raise them, and only the
API layer knows their HTTP status (:mod:`tuneforge.service.api.errors`)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class; a subclass says what kind of problem it is."""

    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.details = details


class InvalidRequest(ServiceError):
    """The request is wrong (a field, a file, a combination); retrying it unchanged cannot help."""

    default_code = "invalid_value"


class NotFound(ServiceError):
    """No such object for this organization (a foreign id is exactly as missing as an unknown one)."""

    def __init__(self, kind: str, ident: str, param: str | None = None) -> None:
        code = kind.replace(" ", "_").replace("-", "_") + "_not_found"
        super().__init__(f"No {kind} found with id '{ident}'.", param=param, code=code)


class Unauthenticated(ServiceError):
    default_code = "invalid_api_key"


class Forbidden(ServiceError):
    default_code = "forbidden"


class Conflict(ServiceError):
    """The object's current state does not allow this (e.g. cancelling a finished job)."""


class TooLarge(ServiceError):
    default_code = "too_large"


class QuotaExceeded(ServiceError):
    default_code = "quota_exceeded"


class Unavailable(ServiceError):
    """A dependency (engine, cluster, store) cannot serve the request right now; retrying later may work."""

    default_code = "unavailable"
