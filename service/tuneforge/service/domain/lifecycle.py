"""Job state machine and the events every transition records.

Every status change is a compare-and-set on the status the writer saw (:meth:`SystemRepo.set_status`):
``UPDATE jobs SET status=… WHERE id=… AND status=<seen>``. A writer that looked at the job before someone else
changed it loses and learns the current status, so a user's cancel can never be overwritten by an executor's
"running" that was decided a moment earlier.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.expression import ClauseElement

from tuneforge.contracts.status import TERMINAL_STATUSES, JobStatus
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import Job, JobEvent, now
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain import usage, webhooks

S = JobStatus
ALLOWED: dict[str, set[str]] = {
    S.VALIDATING_FILES: {S.QUEUED, S.FAILED, S.CANCELLED, S.PAUSED},
    S.QUEUED: {S.RUNNING, S.FAILED, S.CANCELLED, S.PAUSED},
    # running → queued: interrupted (service restart, preemption) and started again
    S.RUNNING: {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED, S.PAUSED},
    # paused → queued (or validating_files, when it was never dispatched): resumed; a trainer that was
    # stopping when the pause came can still finish (succeeded) or fail
    S.PAUSED: {S.QUEUED, S.VALIDATING_FILES, S.SUCCEEDED, S.FAILED, S.CANCELLED},
    S.SUCCEEDED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}


class InvalidTransition(Exception):
    pass


class EventNotifier:
    """Counters that move when a job gets a new event, so each stream reads the database only when its own job
    changed (20 streams of quiet jobs do not all read on every other job's event), plus one that moves for
    everyone (a reconnected PostgreSQL listener, which cannot know what it missed). Other replicas' events come
    through the listener or the streams' periodic reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._everyone = 0
        self._jobs: dict[str, int] = {}

    def notify(self, job_id: str | None = None) -> None:
        with self._lock:
            if job_id is None:
                self._everyone += 1
            else:
                # bounded: a job's counter only has to differ from what its streams saw last
                if len(self._jobs) >= 100_000 and job_id not in self._jobs:
                    self._jobs.clear()
                    self._everyone += 1
                self._jobs[job_id] = self._jobs.get(job_id, 0) + 1

    def version(self, job_id: str) -> tuple[int, int]:
        return self._everyone, self._jobs.get(job_id, 0)


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
        notifier.notify(job.id)
    return event


def transition(
    session: Session,
    job: Job,
    status: str,
    message: str,
    *,
    error: dict[str, Any] | None = None,
    level: str = "info",
    fields: dict[str, Any] | None = None,
) -> bool:
    """Move ``job`` from the status this session saw to ``status``, with ``fields`` written in the same
    compare-and-set (never set them on the row beforehand: a lost race must not write them either).

    Returns False, and changes nothing, when the move is not allowed from a terminal status or when another
    writer changed the status first; ``job`` then holds the current row, so the caller can look again.
    """
    current = job.status
    if current == status:
        return False
    if status not in ALLOWED.get(current, set()):
        if current in TERMINAL_STATUSES:
            return False
        raise InvalidTransition(f"{job.id}: {current} → {status}")
    with session.no_autoflush:  # reading the row must never write this writer's stale copy of it
        resources, started_at = job.resources, job.started_at
    values: dict[str, Any] = {"status": status, **usage.running_time_fields(current, status, resources),
                              **(fields or {})}
    if status == JobStatus.RUNNING:
        # the first start counts (a re-queued job keeps it), whatever this session's copy says
        started_at = started_at or now()
        values["started_at"] = func.coalesce(Job.started_at, started_at)
    if status in TERMINAL_STATUSES:
        values.update(finished_at=now(), estimated_finish=None, pid=None)
    if error is not None:
        values["error"] = error
    repo = SystemRepo(session)
    if not repo.set_status(job.id, current, values):
        session.expire(job)  # drop what this writer believed (and any change it made to the row meanwhile)
        session.refresh(job)
        return False
    if status in TERMINAL_STATUSES:
        # counted once, by the one writer that ended the job, in the same transaction
        seconds = max(0, values["finished_at"] - started_at) if started_at else 0
        repo.add_finished_usage(job.tenant_id, status, usage.method_type(job.method), seconds,
                                seconds * usage.gpu_count(job.resources))
    computed = [key for key, value in values.items() if isinstance(value, ClauseElement) and key != "started_at"]
    for key, value in {**values, "started_at": started_at}.items():
        if key not in computed:
            set_committed_value(job, key, value)  # what the database now holds; nothing left to flush
    if computed:
        session.expire(job, computed)  # computed by the database (GPU time): read back when next used
    event = add_event(session, job, message, level="error" if status == JobStatus.FAILED else level,
                      data={"status": status}, commit=False)
    webhooks.enqueue_job_event(session, job, current, status, event.created_at)
    session.commit()
    notifier.notify(job.id)
    return True
