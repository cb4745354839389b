"""FastAPI dependencies: state, DB session, and the tenant-scoped repository."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tuneforge.service.api.state import AppState
from tuneforge.service.core.errors import Unauthenticated
from tuneforge.service.core.security import hash_secret
from tuneforge.service.db.repo import SystemRepo, TenantRepo


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.tuneforge
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthenticated("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Malformed Authorization header: expected 'Bearer <key>'.")
    return token.strip()


def get_tenant_repo(request: Request, session: SessionDep) -> TenantRepo:
    key = bearer_token(request)
    tenant = SystemRepo(session).tenant_for_key_hash(hash_secret(key))
    if tenant is None:
        shown = key[:6] + "…" if len(key) > 8 else "…"
        raise Unauthenticated(f"Incorrect API key provided: {shown}")
    request.state.tenant_id = tenant
    return TenantRepo(session, tenant)


RepoDep = Annotated[TenantRepo, Depends(get_tenant_repo)]
