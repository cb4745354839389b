"""Dependencies for requests that wait (event streams, uploads): they hold no database connection meanwhile.

Every session dependency is closed when the route function returns (``deps.SessionDep`` and ``deps.RepoDep`` are
``scope="function"``), so ``ShortRepoDep`` is the usual tenant repository under the name the streaming routes
have always used. An upload must not even open its session while the body streams in: ``TenantIdDep`` checks
the key in a session of its own, closed at once, and the upload writes its row in another short session.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tuneforge.service.api.deps import RepoDep, StateDep, authenticate
from tuneforge.service.core.roles import Principal

#: the tenant repository, its session closed as soon as the route function returns
ShortRepoDep = RepoDep


def _principal(request: Request, state: StateDep) -> Principal:
    with state.sessions() as session:
        return authenticate(request, session)


#: the caller (401 for a missing or wrong key, 403 for a role without the route's permission); no session is
#: left open
ShortPrincipalDep = Annotated[Principal, Depends(_principal)]


async def _tenant_id(principal: ShortPrincipalDep) -> str:
    return principal.tenant_id


#: the caller's tenant, as :data:`ShortPrincipalDep` checks it
TenantIdDep = Annotated[str, Depends(_tenant_id)]
