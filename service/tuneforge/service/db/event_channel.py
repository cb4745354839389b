"""Job events across replicas: PostgreSQL's LISTEN/NOTIFY.

Revision 0005_orgs puts a trigger on ``job_events`` that runs ``pg_notify('tuneforge_job_events', job_id)`` for
every new row, whichever replica (or tool) wrote it; the notification is delivered when that transaction
commits. Each replica keeps one connection of its own (outside the pool) listening on the channel and calls
``on_event`` for every notification, so event streams on every replica wake up at once instead of at their
next periodic read. After a lost connection it reconnects with back-off and calls ``on_event`` once (events
may have arrived meanwhile). SQLite has no such channel: embedded mode is one process, whose own writes wake
its streams directly.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import Engine

log = logging.getLogger(__name__)

CHANNEL = "tuneforge_job_events"
MAX_BACKOFF = 5.0


def supports_notifications(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def libpq_url(engine: Engine) -> str:
    """The engine's URL as libpq reads it (SQLAlchemy's ``postgresql+psycopg://`` without the driver)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class EventChannelListener:
    def __init__(self, engine: Engine, on_event: Callable[[str | None], None], poll_seconds: float = 1.0) -> None:
        self.url = libpq_url(engine)
        self.on_event = on_event
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set while the LISTEN is in place (tests wait on it)
        self.listening = threading.Event()
        self.received = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tuneforge-event-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.listening.clear()

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    backoff = 0.2
                    self.on_event(None)  # whatever arrived while nobody listened: every stream reads
                    while not self._stop.is_set():
                        for notification in conn.notifies(timeout=self.poll_seconds):
                            self.received += 1
                            self.on_event(notification.payload or None)  # the job's id
            except Exception as exc:  # the database restarted or the network broke: listen again
                self.listening.clear()
                if self._stop.is_set():
                    return
                log.warning("event notifications lost (%s); listening again in %.1fs", exc, backoff)
                with contextlib.suppress(Exception):
                    self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
