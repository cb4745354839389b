"""Job state machine and the events every transition records."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session

from tuneforge.contracts.status import TERMINAL_STATUSES, JobStatus
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import Job, JobEvent, now

S = JobStatus
ALLOWED: dict[str, set[str]] = {
    S.VALIDATING_FILES: {S.QUEUED, S.FAILED, S.CANCELLED},
    S.QUEUED: {S.RUNNING, S.FAILED, S.CANCELLED},
    # running → queued: interrupted (service restart, preemption) and started again
    S.RUNNING: {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED},
    S.SUCCEEDED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}


class InvalidTransition(Exception):
    pass


class EventNotifier:
    """A counter that moves whenever any job gets a new event, so streams know when to read (in-process: other
    replicas' events are found by the streams' periodic reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0

    def notify(self) -> None:
        with self._lock:
            self._version += 1

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
        if job.status in TERMINAL_STATUSES:
            return False
        raise InvalidTransition(f"{job.id}: {job.status} → {status}")
    job.status = status
    if status == JobStatus.RUNNING:
        job.started_at = job.started_at or now()
    if status in TERMINAL_STATUSES:
        job.finished_at = now()
        job.estimated_finish = None
        job.pid = None
    if error is not None:
        job.error = error
    add_event(session, job, message, level="error" if status == JobStatus.FAILED else level,
              data={"status": status}, commit=False)
    session.commit()
    notifier.notify()
    return True
