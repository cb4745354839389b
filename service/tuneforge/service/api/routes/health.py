"""Liveness and readiness (no API key needed)."""

from __future__ import annotations

from sqlalchemy import text

from tuneforge.service import __version__
from tuneforge.service.api.deps import SessionDep
from tuneforge.service.api.routing import Router

router = Router(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/readyz", summary="Readiness: the database answers")
def readyz(session: SessionDep) -> dict[str, str]:
    session.execute(text("SELECT 1"))
    return {"status": "ready"}
