"""The database sessions of the request being served, so a sync route can close them in its own thread hop.

Closing a session that holds a connection is I/O (its rollback, a round trip on PostgreSQL), so it runs in the
thread pool; a hand-off costs a keyed request more CPU than its queries (``bench/request_costs.py``). A sync
route already runs in a worker thread (``routing.OneHopRoute``), and its sessions are done when it returns
(``deps.SessionDep`` is ``scope="function"``): it closes them there, and the dependency's own exit, finding
nothing to give back, closes on the event loop. A request whose route never ran (a refused key) or is ``async``
still has its session closed by the dependency, in a hop of its own.

The sessions live in a context variable: set on the event loop by the dependency, it is copied into the worker
thread with the rest of the request's context.
"""

from __future__ import annotations

from contextvars import ContextVar

from sqlalchemy.orm import Session

_open: ContextVar[list[Session] | None] = ContextVar("tuneforge_request_sessions", default=None)


def track(session: Session) -> None:
    """Remember ``session`` as one of this request's (called in the request's own context)."""
    sessions = _open.get()
    if sessions is None:
        _open.set([session])
    else:
        sessions.append(session)


def close_tracked() -> None:
    """Close this request's sessions: returns their connections (call it where blocking is allowed)."""
    for session in _open.get() or ():
        session.close()
