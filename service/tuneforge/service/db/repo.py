"""The one data-access chokepoint.

Public routes only ever see :class:`TenantRepo`, which filters every query by tenant: a foreign id
behaves exactly like a missing one (404). :class:`SystemRepo` is for the executor and the
trainer's progress route, which address jobs by id and authenticate with a per-job token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tuneforge.contracts.status import ACTIVE_STATUSES, JobStatus
from tuneforge.service.core.errors import NotFound
from tuneforge.service.db.models import ApiKey, Checkpoint, File, Job, JobEvent, Tenant

T = TypeVar("T", File, Job, JobEvent, Checkpoint)


def _page(
    session: Session, stmt: Any, model: type[T], after: str | None, limit: int, newest_first: bool
) -> tuple[list[T], bool]:
    """Cursor pagination on the integer ``seq``; ``after`` is the public id of the last item seen."""
    if after:
        # look the cursor up under the same filters (tenant, job): a foreign id acts like an unknown one
        cursor = session.scalar(stmt.with_only_columns(model.seq).where(model.id == after))
        if cursor is not None:
            stmt = stmt.where(model.seq < cursor if newest_first else model.seq > cursor)
    stmt = stmt.order_by(model.seq.desc() if newest_first else model.seq.asc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return rows[:limit], len(rows) > limit


class TenantRepo:
    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    # -- files --
    def add_file(self, file: File) -> File:
        file.tenant_id = self.tenant_id
        self.session.add(file)
        self.session.commit()
        return file

    def get_file(self, file_id: str, param: str | None = None) -> File:
        row = self.session.scalar(select(File).where(File.id == file_id, File.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("file", file_id, param=param)
        return row

    def list_files(self, after: str | None, limit: int, purpose: str | None = None) -> tuple[list[File], bool]:
        stmt = select(File).where(File.tenant_id == self.tenant_id)
        if purpose:
            stmt = stmt.where(File.purpose == purpose)
        return _page(self.session, stmt, File, after, limit, newest_first=True)

    def delete_file(self, file: File) -> None:
        self.session.delete(file)
        self.session.commit()

    # -- jobs --
    def add_job(self, job: Job) -> Job:
        job.tenant_id = self.tenant_id
        self.session.add(job)
        self.session.commit()
        return job

    def get_job(self, job_id: str) -> Job:
        row = self.session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("fine-tuning job", job_id)
        return row

    def find_job_by_idempotency_key(self, key: str) -> Job | None:
        return self.session.scalar(
            select(Job).where(Job.tenant_id == self.tenant_id, Job.idempotency_key == key)
        )

    def list_jobs(
        self, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> tuple[list[Job], bool]:
        stmt = select(Job).where(Job.tenant_id == self.tenant_id)
        if metadata:
            # metadata is tiny and filtering is rare: filter in Python over the tenant's jobs
            jobs = [
                j for j in self.session.scalars(stmt.order_by(Job.seq.desc()))
                if all((j.job_metadata or {}).get(k) == v for k, v in metadata.items())
            ]
            if after:
                ids = [j.id for j in jobs]
                jobs = jobs[ids.index(after) + 1:] if after in ids else jobs
            return jobs[:limit], len(jobs) > limit
        return _page(self.session, stmt, Job, after, limit, newest_first=True)

    def count_active_jobs(self) -> int:
        return self.session.scalar(
            select(func.count()).select_from(Job).where(
                Job.tenant_id == self.tenant_id, Job.status.in_(ACTIVE_STATUSES)
            )
        ) or 0

    def delete_job(self, job: Job) -> None:
        """The job's records (events, checkpoints, the job) in one transaction."""
        self.session.execute(delete(JobEvent).where(JobEvent.job_id == job.id, JobEvent.tenant_id == self.tenant_id))
        self.session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id,
                                                      Checkpoint.tenant_id == self.tenant_id))
        self.session.delete(job)
        self.session.commit()

    def list_events(
        self, job: Job, after: str | None, limit: int, newest_first: bool = True
    ) -> tuple[list[JobEvent], bool]:
        stmt = select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.tenant_id == self.tenant_id)
        return _page(self.session, stmt, JobEvent, after, limit, newest_first)

    def events_after_seq(self, job: Job, seq: int, limit: int = 500) -> list[JobEvent]:
        stmt = (
            select(JobEvent)
            .where(JobEvent.job_id == job.id, JobEvent.tenant_id == self.tenant_id, JobEvent.seq > seq)
            .order_by(JobEvent.seq.asc())
            .limit(limit)
        )
        return list(self.session.scalars(stmt))

    def list_checkpoints(self, job: Job, after: str | None, limit: int) -> tuple[list[Checkpoint], bool]:
        stmt = select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.tenant_id == self.tenant_id)
        return _page(self.session, stmt, Checkpoint, after, limit, newest_first=True)

    def succeeded_jobs(self) -> Sequence[Job]:
        return list(self.session.scalars(
            select(Job).where(Job.tenant_id == self.tenant_id, Job.status == JobStatus.SUCCEEDED).order_by(Job.seq)
        ))

    def find_model_job(self, fine_tuned_model: str) -> Job | None:
        return self.session.scalar(select(Job).where(
            Job.tenant_id == self.tenant_id, Job.fine_tuned_model == fine_tuned_model,
            Job.status == JobStatus.SUCCEEDED,
        ))

    def find_checkpoint(self, name: str) -> tuple[Checkpoint, Job] | None:
        """A checkpoint by its ``fine_tuned_model_checkpoint`` name, with its job (this tenant's only)."""
        row = self.session.execute(
            select(Checkpoint, Job).join(Job, Job.id == Checkpoint.job_id).where(
                Checkpoint.tenant_id == self.tenant_id, Job.tenant_id == self.tenant_id,
                Checkpoint.fine_tuned_model_checkpoint == name)
        ).first()
        return (row[0], row[1]) if row is not None else None


class SystemRepo:
    """Cross-tenant access for the control loop; never reachable from a public route."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def tenant_for_key_hash(self, key_hash: str) -> str | None:
        return self.session.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == key_hash))

    def ensure_tenant(self, tenant_id: str) -> None:
        if self.session.get(Tenant, tenant_id) is None:
            self.session.add(Tenant(id=tenant_id))
            self.session.commit()

    def add_api_key(self, tenant_id: str, key_hash: str, name: str = "") -> None:
        self.ensure_tenant(tenant_id)
        if self.tenant_for_key_hash(key_hash) is None:
            self.session.add(ApiKey(tenant_id=tenant_id, key_hash=key_hash, name=name))
            self.session.commit()

    def job(self, job_id: str) -> Job | None:
        return self.session.scalar(select(Job).where(Job.id == job_id))

    def jobs_with_status(self, *statuses: str) -> list[Job]:
        return list(self.session.scalars(select(Job).where(Job.status.in_(statuses)).order_by(Job.seq)))

    def count_by_status_and_method(self) -> list[tuple[str, Any, int]]:
        """(status, stored method object, count) groups."""
        rows = self.session.execute(select(Job.status, Job.method, func.count()).group_by(Job.status, Job.method))
        return [(str(status), method, int(count)) for status, method, count in rows]

    def queued_since(self) -> list[int]:
        """Creation times of the queued jobs."""
        return [int(t) for t in self.session.scalars(select(Job.created_at).where(Job.status == JobStatus.QUEUED))]

    def running_progress(self) -> list[tuple[str, str, Any, dict[str, Any], int | None]]:
        """(job id, tenant, method, live progress, started_at) of every running job."""
        rows = self.session.execute(select(Job.id, Job.tenant_id, Job.method, Job.progress, Job.started_at)
                                    .where(Job.status == JobStatus.RUNNING))
        return [(str(i), str(t), m, p or {}, s) for i, t, m, p, s in rows]

    def usage_rows(self) -> list[tuple[str, str, Any, int | None, int | None]]:
        """(tenant, status, resources, started_at, finished_at) of every job, for usage metrics."""
        rows = self.session.execute(select(Job.tenant_id, Job.status, Job.resources, Job.started_at,
                                           Job.finished_at))
        return [(str(t), str(st), r, s, f) for t, st, r, s, f in rows]

    def delete_checkpoints(self, job: Job, steps: list[int]) -> None:
        """Forget checkpoints that retention removed from the store (not committed: part of the caller's batch)."""
        self.session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id,
                                                      Checkpoint.step_number.in_(steps)))

    def latest_checkpoint(self, job: Job) -> Checkpoint | None:
        return self.session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id)
                                   .order_by(Checkpoint.step_number.desc()).limit(1))

    def recent_events(self, job: Job, limit: int = 50) -> list[JobEvent]:
        return list(self.session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)
                                         .order_by(JobEvent.seq.desc()).limit(limit)))
