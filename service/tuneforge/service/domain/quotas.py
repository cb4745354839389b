"""Per-organization quotas, checked and consumed atomically.

A check that reads the usage and then inserts in a separate step lets concurrent creates all see the same
usage and all pass (50 concurrent creates once left 21-29 jobs active under a quota of 20). Here the check and
the insert are one transaction that begins by taking the organization's quota lock
(:meth:`TenantRepo.lock_quotas`): reservations of one organization queue behind each other, those of different
organizations do not, and readers never wait.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from tuneforge.contracts.status import JobStatus
from tuneforge.service.core.config import LimitSettings
from tuneforge.service.core.errors import QuotaExceeded
from tuneforge.service.db.models import File, Job
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.lifecycle import add_event, notifier

WAITING = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED})


@dataclass(frozen=True)
class Limits:
    """The limits in force for one organization (its overrides over the service's settings); 0: no limit
    where the field says so."""

    max_active_jobs: int
    max_queued_jobs: int
    max_gpus: int
    max_stored_bytes: int
    max_upload_bytes: int
    requests_per_minute: int


LIMIT_FIELDS = tuple(f.name for f in fields(Limits))


def effective_limits(defaults: LimitSettings, overrides: dict[str, Any] | None) -> Limits:
    base = {
        "max_active_jobs": defaults.max_active_jobs_per_tenant,
        "max_queued_jobs": defaults.max_queued_jobs_per_tenant,
        "max_gpus": defaults.max_gpus_per_tenant,
        "max_stored_bytes": defaults.max_stored_bytes_per_tenant,
        "max_upload_bytes": defaults.max_upload_bytes,
        "requests_per_minute": defaults.requests_per_minute,
    }
    for name, value in (overrides or {}).items():
        if name in base and value is not None:
            base[name] = int(value)
    return Limits(**base)


@dataclass(frozen=True)
class Usage:
    active_jobs: int
    queued_jobs: int
    gpus: int
    stored_bytes: int


def job_gpus(resources: dict[str, Any], default_gpus: int) -> int:
    """GPUs a job holds: per node (0 asks for the cluster's default) times nodes."""
    per_node = int(resources.get("gpus") or 0) or default_gpus
    return per_node * int(resources.get("nodes") or 1)


def usage(repo: TenantRepo, default_gpus: int) -> Usage:
    jobs = repo.active_job_usage()
    return Usage(
        active_jobs=len(jobs),
        queued_jobs=sum(1 for status, _ in jobs if status in WAITING),
        gpus=sum(job_gpus(resources, default_gpus) for _, resources in jobs),
        stored_bytes=repo.stored_bytes(),
    )


def _check_job(limits: Limits, used: Usage, gpus: int) -> None:
    if used.active_jobs + 1 > limits.max_active_jobs:
        raise QuotaExceeded(f"Quota exceeded: this organization has {used.active_jobs} active jobs, at most "
                            f"{limits.max_active_jobs} are allowed. Wait for one to finish or cancel one.")
    if limits.max_queued_jobs and used.queued_jobs + 1 > limits.max_queued_jobs:
        raise QuotaExceeded(f"Quota exceeded: this organization has {used.queued_jobs} jobs waiting to start, at "
                            f"most {limits.max_queued_jobs} are allowed.")
    if limits.max_gpus and used.gpus + gpus > limits.max_gpus:
        raise QuotaExceeded(f"Quota exceeded: this job asks for {gpus} GPUs and this organization's active jobs "
                            f"hold {used.gpus}, at most {limits.max_gpus} are allowed.", param="resources.gpus")


def admit_job(repo: TenantRepo, limits: Limits, job: Job, *, default_gpus: int, created_message: str,
              idempotency_key: str | None = None) -> Job:
    """Store ``job`` (and its creation event) if it fits the organization's quotas, atomically.

    Under the lock an ``Idempotency-Key`` is looked up again: a concurrent request with the same key that
    committed first is returned instead of a second job."""
    session = repo.session
    try:
        repo.lock_quotas()
        if idempotency_key:
            existing = repo.find_job_by_idempotency_key(idempotency_key)
            if existing is not None:
                session.commit()
                return existing
        _check_job(limits, usage(repo, default_gpus), job_gpus(job.resources or {}, default_gpus))
        job.tenant_id = repo.tenant_id
        session.add(job)
        add_event(session, job, created_message, data={"status": job.status}, commit=False)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    notifier.notify(job.id)
    return job


def check_upload_room(repo: TenantRepo, limits: Limits) -> None:
    """Refuse an upload before its body is read when the organization's storage is already full."""
    if limits.max_stored_bytes and repo.stored_bytes() >= limits.max_stored_bytes:
        raise QuotaExceeded(f"Quota exceeded: this organization's files take {repo.stored_bytes()} bytes, at most "
                            f"{limits.max_stored_bytes} are allowed. Delete files to make room.")


def admit_file(repo: TenantRepo, limits: Limits, row: File) -> None:
    """Store the file's row if the organization's files still fit, atomically (the object is stored already;
    the caller deletes it when this raises)."""
    session = repo.session
    try:
        repo.lock_quotas()
        used = repo.stored_bytes()
        if limits.max_stored_bytes and used + row.bytes > limits.max_stored_bytes:
            raise QuotaExceeded(f"Quota exceeded: this file has {row.bytes} bytes and this organization's files "
                                f"take {used}, at most {limits.max_stored_bytes} are allowed. Delete files to make "
                                "room.", param="file")
        row.tenant_id = repo.tenant_id
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        raise
