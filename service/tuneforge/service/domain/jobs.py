"""What a user does to an existing job: cancel, pause, resume or delete it.

Each is a compare-and-set on the job's status (:func:`lifecycle.transition`), so concurrent requests end in a
state one of them chose, whatever their order: a cancelled job stays cancelled; pause then resume leaves it
queued; a pause that loses to a cancel answers 409.
"""

from __future__ import annotations

from tuneforge.contracts.status import TERMINAL_STATUSES, JobStatus
from tuneforge.contracts.store_layout import job_prefix
from tuneforge.service.core.errors import Conflict, QuotaExceeded
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.budgets import check_budget
from tuneforge.service.domain.executor import Executor
from tuneforge.service.domain.lifecycle import transition
from tuneforge.service.domain.quotas import Limits
from tuneforge.storage import ObjectStore

#: compare-and-set rounds a cancel tries (each lost round means the status really moved meanwhile)
CANCEL_ATTEMPTS = 10
#: statuses a job can be paused from
PAUSABLE = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING})
#: statuses in which resuming changes nothing (the job already runs or waits to)
ALREADY_ACTIVE = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING})


def cancel(repo: TenantRepo, executor: Executor | None, job_id: str) -> Job:
    job = repo.get_job(job_id)
    # the user's word wins: when an executor moved the job meanwhile (queued → running), cancel from there
    for _ in range(CANCEL_ATTEMPTS):
        if job.status in TERMINAL_STATUSES:
            raise Conflict(f"Job {job_id} has already {job.status} and cannot be cancelled.",
                           code="job_not_cancellable")
        if transition(repo.session, job, JobStatus.CANCELLED, "Fine-tuning job cancelled by the user"):
            break
    else:
        raise Conflict(f"Job {job_id} changed status {CANCEL_ATTEMPTS} times while it was being cancelled; "
                       "try again.", code="job_busy")
    if executor:
        executor.cancel(job_id)
    return job


def pause(repo: TenantRepo, executor: Executor | None, job_id: str) -> Job:
    """Pause: a running trainer checkpoints at the next step boundary and stops, freeing its GPU and slot; a
    waiting job is not started. Pausing a paused job changes nothing."""
    job = repo.get_job(job_id)
    while job.status != JobStatus.PAUSED:
        if job.status not in PAUSABLE:
            raise Conflict(f"Job {job_id} is {job.status} and cannot be paused.", code="job_not_pausable")
        was_running = job.status == JobStatus.RUNNING
        message = ("Fine-tuning job paused by the user: the trainer saves a checkpoint at the next step and stops"
                   if was_running else "Fine-tuning job paused by the user")
        if transition(repo.session, job, JobStatus.PAUSED, message):
            if executor:
                executor.pause(job_id)
            break
    return job


def resume(repo: TenantRepo, executor: Executor | None, limits: Limits, job_id: str) -> Job:
    """Resume a paused job: it is queued again and continues from its latest checkpoint (same steps and losses
    as a run that was never paused). Resuming a job that is already waiting or running changes nothing."""
    job = repo.get_job(job_id)
    while job.status == JobStatus.PAUSED:
        check_budget(repo)
        # the check and the status change are one transaction under the organization's quota lock, so
        # concurrent resumes and creates cannot overshoot the active-job quota together
        repo.lock_quotas()
        if repo.count_active_jobs() >= limits.max_active_jobs:
            repo.session.rollback()
            raise QuotaExceeded(f"Quota exceeded: at most {limits.max_active_jobs} active jobs per organization; "
                                "resume it when another has finished.")
        # never handed to an executor (no token yet): validate its files again, as a new job's
        target = JobStatus.QUEUED if job.token_hash else JobStatus.VALIDATING_FILES
        if transition(repo.session, job, target, "Fine-tuning job resumed by the user; it continues from its "
                      "latest checkpoint"):
            if executor:
                executor.resume(job_id)
            return job
    if job.status not in ALREADY_ACTIVE:
        raise Conflict(f"Job {job_id} is {job.status} and cannot be resumed.", code="job_not_resumable")
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
