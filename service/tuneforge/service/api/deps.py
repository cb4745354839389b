"""FastAPI dependencies: state, DB session, the caller (API key, organization, role) and the tenant-scoped
repository.

:func:`authenticate` is the one place every keyed request goes through: it finds the key (no cache, so a
revoked key is refused on the very next request), counts the request against the key's rate limit, checks
that the key's role has the permission the route needs (``core.roles``), and notes when the key was used (at
most once per ``last_used_resolution_seconds``). Routes never check roles themselves.

Every session here is closed as soon as the route function returns (``scope="function"``), before the response
is sent: a request never holds a database connection while it waits on its client (a slow download, a stream,
a client that stops reading). Routes therefore turn rows into response objects before they return (the
presenters), and a streaming response reads only the object store, never the database.

Why some dependencies are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in the
thread pool, one hand-off each (0.1 ms of CPU in-process, up to 1 ms on this project's virtual machine:
``bench/README.md``, "Control plane"); the ones that do no I/O run on the event loop instead. The session is
created on the loop (a ``Session`` connects only at its first query) and closed by the sync route that used it, in
the route's own thread hop (:mod:`.request_sessions`), or else in a hop of its own, shielded like FastAPI's own
exits.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tuneforge.service.api import request_sessions
from tuneforge.service.api.state import AppState
from tuneforge.service.core.errors import Forbidden, Unauthenticated
from tuneforge.service.core.roles import WHAT_IT_ALLOWS, Principal, Role, permission_for
from tuneforge.service.core.security import hash_secret
from tuneforge.service.db.models import now
from tuneforge.service.db.repo import OrganizationRepo, SystemRepo, TenantRepo
from tuneforge.service.domain.quotas import Limits, effective_limits

log = logging.getLogger(__name__)


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.tuneforge
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[Session]:
    session = state.sessions()
    request_sessions.track(session)  # a sync route closes it at its end, in its own thread hop
    try:
        yield session
    finally:
        if not session.in_transaction():
            session.close()  # holds no connection (never used, or closed by its route): no I/O
        else:
            # in a worker thread (closing returns the connection: a rollback, a round trip on PostgreSQL), shielded
            # so a cancelled request still closes it, with a limiter of its own so a full thread pool cannot
            # deadlock it
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthenticated("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Malformed Authorization header: expected 'Bearer <key>'.")
    return token.strip()


def add_response_headers(request: Request, headers: dict[str, str]) -> None:
    """Headers for this request's response, whatever it turns out to be (an error or a stream included); the
    request-context middleware sends them."""
    request.state.response_headers = {**getattr(request.state, "response_headers", {}), **headers}


def authenticate(request: Request, session: Session) -> Principal:
    """The caller, once per request (a second call returns the first result)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    state: AppState = request.app.state.tuneforge
    key = bearer_token(request)
    found = SystemRepo(session).key_for_hash(hash_secret(key))
    if found is None:
        shown = key[:6] + "…" if len(key) > 8 else "…"
        raise Unauthenticated(f"Incorrect API key provided: {shown}")
    row, org = found
    if row.revoked_at is not None:
        raise Unauthenticated(f"The API key {row.redacted_value} has been revoked.", code="api_key_revoked")
    principal = Principal(
        key_id=row.public_id, tenant_id=row.tenant_id, role=Role(row.role), redacted_value=row.redacted_value,
        org_limits=dict(org.limits or {}),
        instance_admin=row.role == Role.ADMIN and row.tenant_id == state.settings.auth.default_tenant,
    )
    request.state.principal = principal
    request.state.tenant_id = principal.tenant_id
    _rate_limit(request, state, principal)
    _authorize(request, principal)
    _note_use(state, session, row.public_id, row.last_used_at)
    return principal


def limits_of(state: AppState, principal: Principal) -> Limits:
    return effective_limits(state.settings.limits, principal.org_limits)


def _rate_limit(request: Request, state: AppState, principal: Principal) -> None:
    per_minute = limits_of(state, principal).requests_per_minute
    if not per_minute or state.rate_limiter is None:
        return
    decision = state.rate_limiter.hit(principal.key_id, per_minute)
    add_response_headers(request, decision.headers)
    if not decision.allowed:
        raise decision.error(per_minute)


def _authorize(request: Request, principal: Principal) -> None:
    route: Any = request.scope.get("route")
    needed = permission_for(request.method, getattr(route, "openapi_extra", None))
    if not principal.can(needed):
        raise Forbidden(f"This API key's role '{principal.role.value}' cannot {WHAT_IT_ALLOWS[needed]}: that needs "
                        f"the '{needed.value}' permission.", code="insufficient_permissions")


def _note_use(state: AppState, session: Session, key_id: str, last_used_at: int | None) -> None:
    at, resolution = now(), state.settings.auth.last_used_resolution_seconds
    if last_used_at is not None and last_used_at > at - resolution:
        return  # recorded recently enough: no write on this request
    try:
        SystemRepo(session).touch_key(key_id, at, resolution)
    except Exception:  # bookkeeping only: never fail the request for it
        session.rollback()
        log.warning("could not record the use of API key %s", key_id, exc_info=True)


def get_principal(request: Request, session: SessionDep) -> Principal:
    return authenticate(request, session)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_tenant_repo(principal: PrincipalDep, session: SessionDep) -> TenantRepo:
    return TenantRepo(session, principal.tenant_id)


RepoDep = Annotated[TenantRepo, Depends(get_tenant_repo, scope="function")]


async def get_org_repo(principal: PrincipalDep, session: SessionDep) -> OrganizationRepo:
    return OrganizationRepo(session, principal.tenant_id, instance_admin=principal.instance_admin)


OrgRepoDep = Annotated[OrganizationRepo, Depends(get_org_repo, scope="function")]
