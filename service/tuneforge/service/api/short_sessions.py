"""Dependencies for requests that wait (event streams, uploads): they hold no database connection meanwhile.

FastAPI closes a request-scoped dependency (``deps.RepoDep``'s session) only after the response has been
sent. A session that has run a query keeps its connection until then: for an event stream that is the whole
stream, for an upload the whole body, and a few dozen of them exhaust the pool. These dependencies check the
key in a session that is closed before the response starts (``scope="function"``) or at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tuneforge.service.api.deps import StateDep, get_tenant_repo
from tuneforge.service.db.repo import TenantRepo


def _short_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


def _short_repo(request: Request,
                session: Annotated[Session, Depends(_short_session, scope="function")]) -> TenantRepo:
    return get_tenant_repo(request, session)


#: the tenant repository, its session closed as soon as the route function returns
ShortRepoDep = Annotated[TenantRepo, Depends(_short_repo, scope="function")]


def _tenant_id(request: Request, state: StateDep) -> str:
    with state.sessions() as session:
        return get_tenant_repo(request, session).tenant_id


#: the caller's tenant (401 for a missing or wrong key); no session is left open
TenantIdDep = Annotated[str, Depends(_tenant_id)]
