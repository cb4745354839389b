"""Decide a job's outcome when its trainer stops (shared by every executor)."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from tuneforge.contracts.exit_codes import ExitCode
from tuneforge.contracts.status import JobStatus
from tuneforge.contracts.store_layout import MANIFEST_NAME, job_model_prefix
from tuneforge.service.db.models import Job
from tuneforge.service.domain.job_requests import fine_tuned_model_name
from tuneforge.service.domain.lifecycle import transition
from tuneforge.storage import ObjectStore


def requeue_or_fail(session: Session, job: Job, max_attempts: int, reason: str) -> None:
    """An interrupted job runs again (resuming from its latest checkpoint) until attempts run out."""
    if job.status != JobStatus.RUNNING:
        return
    if job.attempts < max_attempts:
        transition(session, job, JobStatus.QUEUED,
                   f"{reason}; re-queued, it resumes from its latest checkpoint (attempt {job.attempts + 1})",
                   level="warn")
    else:
        transition(session, job, JobStatus.FAILED, f"{reason}; giving up after {job.attempts} attempts",
                   error={"code": "interrupted", "message": f"{reason}; giving up after {job.attempts} attempts"})


def _manifest_ok(store: ObjectStore, job: Job) -> bool:
    try:
        manifest = json.loads(store.get_bytes(f"{job_model_prefix(job.id)}/{MANIFEST_NAME}"))
    except Exception:
        return False
    return bool(manifest.get("files"))


def finish_job(
    session: Session,
    job: Job,
    store: ObjectStore,
    *,
    exit_code: int,
    cancelled: bool,
    max_attempts: int,
    fallback_message: str | None,
) -> None:
    if job.status != JobStatus.RUNNING or cancelled:
        return  # cancelled (or already decided): nothing to do
    if exit_code == ExitCode.OK:
        if _manifest_ok(store, job):
            job.fine_tuned_model = fine_tuned_model_name(job)
            transition(session, job, JobStatus.SUCCEEDED, f"The job has successfully completed: {job.fine_tuned_model}")
            return
        message = "The trainer exited without publishing a model (no manifest.json)."
        transition(session, job, JobStatus.FAILED, message, error={"code": "training_error", "message": message})
        return
    if exit_code == ExitCode.PREEMPTED:
        requeue_or_fail(session, job, max_attempts, "The trainer was preempted after saving a checkpoint")
        return
    reported = job.trainer_error or {}
    if exit_code == ExitCode.BAD_INPUT:
        code = reported.get("code") or "invalid_training_file"
        message = reported.get("message") or fallback_message or "The training input is invalid."
    elif exit_code < 0:
        code = "training_error"
        message = reported.get("message") or f"The trainer was killed by signal {-exit_code}"
        if -exit_code == 9:
            message += " (SIGKILL: possibly out of memory)"
    else:
        code = reported.get("code") or "training_error"
        message = reported.get("message") or fallback_message or f"The trainer exited with code {exit_code}"
    transition(session, job, JobStatus.FAILED, f"Fine-tuning failed: {message}",
               error={"code": code, "message": message, "param": reported.get("param")})
