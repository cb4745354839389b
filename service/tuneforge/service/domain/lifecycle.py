"""Job state machine and the events every transition records."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session

from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import Job, JobEvent, now

ALLOWED: dict[str, set[str]] = {
    "validating_files": {"queued", "failed", "cancelled"},
    "queued": {"running", "failed", "cancelled"},
    # running → queued: interrupted (service restart, preemption) and started again
    "running": {"succeeded", "failed", "cancelled", "queued"},
    "succeeded": set(),
    "failed": set(),
    "cancelled": set(),
}

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class InvalidTransition(Exception):
    pass


class EventNotifier:
    """Wakes streaming readers when any job gets a new event (in-process; one service replica)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._version = 0

    def notify(self) -> None:
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        with self._cond:
            if self._version == seen:
                self._cond.wait(timeout)
            return self._version

    @property
    def version(self) -> int:
        return self._version


notifier = EventNotifier()


def add_event(
    session: Session,
    job: Job,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
    commit: bool = True,
) -> JobEvent:
    event = JobEvent(
        id=new_id("ftevent"), job_id=job.id, tenant_id=job.tenant_id, level=level, type=type,
        message=message, data=data, created_at=now(),
    )
    session.add(event)
    if commit:
        session.commit()
        notifier.notify()
    return event


def transition(
    session: Session,
    job: Job,
    status: str,
    message: str,
    *,
    error: dict[str, Any] | None = None,
    level: str = "info",
) -> bool:
    """Move ``job`` to ``status``; returns False (and changes nothing) when the job is already terminal."""
    if job.status == status:
        return False
    if status not in ALLOWED.get(job.status, set()):
        if job.status in TERMINAL:
            return False
        raise InvalidTransition(f"{job.id}: {job.status} → {status}")
    job.status = status
    if status == "running":
        job.started_at = job.started_at or now()
    if status in TERMINAL:
        job.finished_at = now()
        job.estimated_finish = None
        job.pid = None
    if error is not None:
        job.error = error
    add_event(session, job, message, level="error" if status == "failed" else level,
              data={"status": status}, commit=False)
    session.commit()
    notifier.notify()
    return True
