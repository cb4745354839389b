"""What a user does to an existing job: cancel it, delete it."""

from __future__ import annotations

from tuneforge.contracts.status import TERMINAL_STATUSES, JobStatus
from tuneforge.contracts.store_layout import job_prefix
from tuneforge.service.core.errors import Conflict
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.executor import Executor
from tuneforge.service.domain.lifecycle import transition
from tuneforge.storage import ObjectStore


def cancel(repo: TenantRepo, executor: Executor | None, job_id: str) -> Job:
    job = repo.get_job(job_id)
    if job.status in TERMINAL_STATUSES:
        raise Conflict(f"Job {job_id} has already {job.status} and cannot be cancelled.", code="job_not_cancellable")
    transition(repo.session, job, JobStatus.CANCELLED, "Fine-tuning job cancelled by the user")
    if executor:
        executor.cancel(job_id)
    return job


def delete(repo: TenantRepo, store: ObjectStore, executor: Executor | None, job_id: str) -> None:
    job = repo.get_job(job_id)
    if job.status not in TERMINAL_STATUSES:
        raise Conflict(f"Job {job_id} is {job.status} and may still write its objects; cancel it and wait until "
                       "it has stopped before deleting it.", code="job_not_deletable")
    # e.g. a cancelled trainer saving a checkpoint on SIGTERM: deleting now would orphan what it writes
    running = executor.running_reason(job_id) if executor is not None else None
    if running:
        raise Conflict(f"Job {job_id} is {job.status}, but {running}; try again in a few seconds.",
                       code="job_not_deletable")
    # objects first: if the store fails, the records stay and the delete can be repeated
    store.delete_prefix(f"{job_prefix(job.id)}/")
    repo.delete_job(job)
    if executor is not None:
        executor.discard(job_id)
