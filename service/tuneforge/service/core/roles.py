"""API-key roles and what each may do: one table, so a new role is one line.

A route needs one :class:`Permission`. Reading routes (GET, HEAD) need ``read`` and every other method
``write`` unless the route declares otherwise in its ``openapi_extra`` (``requires(Permission.MANAGE)``), which
also shows the permission in the OpenAPI document. The check itself is one dependency
(:func:`tuneforge.service.api.deps.authenticate`); routes never check roles themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Permission(StrEnum):
    #: list and retrieve files, jobs, events, checkpoints, models, the organization
    READ = "read"
    #: upload and delete files; create, cancel and delete jobs
    WRITE = "write"
    #: the organization's API keys and audit log (and, for the operator's organization, every organization)
    MANAGE = "manage"
    #: fetch items to rate and submit feedback (the feedback campaigns of issue #16)
    RATE = "rate"


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    READ_ONLY = "read_only"
    RATER = "rater"


P = Permission
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset({P.READ, P.WRITE, P.MANAGE}),
    Role.MEMBER: frozenset({P.READ, P.WRITE}),
    Role.READ_ONLY: frozenset({P.READ}),
    Role.RATER: frozenset({P.RATE}),
}

#: the ``openapi_extra`` key a route declares its permission under
PERMISSION_KEY = "x-tuneforge-permission"
READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

WHAT_IT_ALLOWS = {
    P.READ: "read files, jobs and models",
    P.WRITE: "upload or delete files and create, cancel or delete jobs",
    P.MANAGE: "manage the organization (API keys, audit log, organizations)",
    P.RATE: "rate feedback items",
}


def requires(permission: Permission) -> dict[str, Any]:
    """A route's ``openapi_extra`` for a permission other than its method's default."""
    return {PERMISSION_KEY: permission.value}


def permission_for(method: str, openapi_extra: dict[str, Any] | None) -> Permission:
    declared = (openapi_extra or {}).get(PERMISSION_KEY)
    if declared:
        return Permission(declared)
    return P.READ if method.upper() in READING_METHODS else P.WRITE


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key (never its secret), its organization and role."""

    key_id: str
    tenant_id: str
    role: Role
    redacted_value: str
    #: the organization's limit overrides (``None`` values: the service's defaults)
    org_limits: dict[str, Any] = field(default_factory=dict)
    #: an admin of the operator's organization: may manage every organization
    instance_admin: bool = False

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]
