"""The one data-access chokepoint.

Public routes only ever see :class:`TenantRepo`, which filters every query by tenant: a foreign id
behaves exactly like a missing one (404). :class:`SystemRepo` is for the executor and the
trainer's progress route, which address jobs by id and authenticate with a per-job token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from tuneforge.contracts.status import ACTIVE_STATUSES, JobStatus
from tuneforge.service.core.errors import NotFound
from tuneforge.service.core.ids import new_key_id
from tuneforge.service.db.models import ApiKey, AuditLog, Checkpoint, File, Job, JobEvent, Tenant

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

    # -- quotas: reserve inside one transaction that starts with lock_quotas() --
    def lock_quotas(self) -> None:
        """Serialize this organization's quota reservations until the transaction ends: the UPDATE takes the
        tenant row's lock on PostgreSQL and SQLite's write lock (pysqlite begins the transaction with it), so
        the usage read next cannot be stale."""
        self.session.execute(update(Tenant).where(Tenant.id == self.tenant_id)
                             .values(quota_version=Tenant.quota_version + 1))

    def active_job_usage(self) -> list[tuple[str, dict[str, Any]]]:
        """(status, resources) of every active job (bounded by the active-job quota)."""
        rows = self.session.execute(select(Job.status, Job.resources).where(
            Job.tenant_id == self.tenant_id, Job.status.in_(ACTIVE_STATUSES)))
        return [(str(status), resources or {}) for status, resources in rows]

    def stored_bytes(self) -> int:
        return int(self.session.scalar(select(func.coalesce(func.sum(File.bytes), 0))
                                       .where(File.tenant_id == self.tenant_id)) or 0)

    def organization(self) -> Tenant:
        row = self.session.get(Tenant, self.tenant_id)
        if row is None:
            raise NotFound("organization", self.tenant_id)
        return row

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


class SystemRepo:
    """Cross-tenant access for the control loop; never reachable from a public route."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def tenant_for_key_hash(self, key_hash: str) -> str | None:
        return self.session.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == key_hash,
                                                                  ApiKey.revoked_at.is_(None)))

    def key_for_hash(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        """The key with this hash (revoked ones too: the caller says why it is refused) and its organization:
        one indexed query per request, never cached, so a revocation applies to the very next request."""
        row = self.session.execute(select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
                                   .where(ApiKey.key_hash == key_hash)).first()
        return None if row is None else (row[0], row[1])

    def key_is_active(self, key_id: str) -> bool:
        return self.session.scalar(select(func.count()).select_from(ApiKey).where(
            ApiKey.public_id == key_id, ApiKey.revoked_at.is_(None))) == 1

    def touch_key(self, key_id: str, at: int, resolution: int) -> None:
        """Record a use, unless one was recorded less than ``resolution`` seconds ago (also by another replica)."""
        self.session.execute(update(ApiKey).where(
            ApiKey.public_id == key_id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= at - resolution),
        ).values(last_used_at=at))
        self.session.commit()

    def ensure_tenant(self, tenant_id: str, name: str = "") -> None:
        if self.session.get(Tenant, tenant_id) is None:
            self.session.add(Tenant(id=tenant_id, name=name or tenant_id))
            self.session.commit()

    def add_api_key(self, tenant_id: str, key_hash: str, name: str = "", *, role: str = "admin",
                    public_id: str | None = None, redacted_value: str = "tf-…") -> bool:
        """Register a key unless its hash is known already; returns whether it was added."""
        self.ensure_tenant(tenant_id)
        existing = self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        if existing is not None:
            if existing.redacted_value in ("", "tf-…"):  # a key from before redacted values were kept
                existing.redacted_value = redacted_value
                self.session.commit()
            return False
        self.session.add(ApiKey(tenant_id=tenant_id, key_hash=key_hash, name=name, role=role,
                                public_id=public_id or new_key_id(), redacted_value=redacted_value))
        self.session.commit()
        return True

    def job(self, job_id: str) -> Job | None:
        return self.session.scalar(select(Job).where(Job.id == job_id))

    def claim_launch(self, job_id: str, runner: str) -> bool:
        """Take the right to start the next attempt of a queued job that no replica has claimed; False when
        another replica (or an earlier tick) took it first. One conditional UPDATE, committed at once; the claim
        (``runner``) is released when the job is queued again."""
        result = self.session.execute(update(Job).where(
            Job.id == job_id, Job.status == JobStatus.QUEUED, Job.runner.is_(None),
        ).values(attempts=Job.attempts + 1, runner=runner))
        self.session.commit()
        return bool(getattr(result, "rowcount", 0) == 1)

    def release_claims(self, runner: str) -> int:
        """Claims of queued jobs this replica took but never started (it stopped in between)."""
        result = self.session.execute(update(Job).where(Job.runner == runner, Job.status == JobStatus.QUEUED)
                                      .values(runner=None))
        self.session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        """Current statuses of these jobs (a deleted job is missing)."""
        if not job_ids:
            return {}
        return {str(i): str(s) for i, s in self.session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))}

    def running_jobs_of(self, runner: str) -> list[Job]:
        """Jobs marked running by this replica's executor (or by one from before replicas were recorded)."""
        return list(self.session.scalars(select(Job).where(
            Job.status == JobStatus.RUNNING, or_(Job.runner == runner, Job.runner.is_(None))).order_by(Job.seq)))

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


class OrganizationRepo:
    """Organizations, their API keys and audit log, as an admin sees them: an organization admin sees their
    own organization only (another one is a 404 exactly like a missing one); an instance admin sees all."""

    def __init__(self, session: Session, tenant_id: str, *, instance_admin: bool) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.instance_admin = instance_admin

    def _visible(self, org_id: str) -> bool:
        return self.instance_admin or org_id == self.tenant_id

    def get_org(self, org_id: str) -> Tenant:
        row = self.session.get(Tenant, org_id) if self._visible(org_id) else None
        if row is None:
            raise NotFound("organization", org_id)
        return row

    def lock(self, org_id: str) -> None:
        """Serialize changes that check the organization's keys (e.g. keeping its last admin key)."""
        self.session.execute(update(Tenant).where(Tenant.id == org_id).values(quota_version=Tenant.quota_version + 1))

    def org_exists(self, org_id: str) -> bool:
        return self.session.get(Tenant, org_id) is not None

    def list_orgs(self, after: str | None, limit: int) -> tuple[list[Tenant], bool]:
        stmt = select(Tenant)
        if not self.instance_admin:
            stmt = stmt.where(Tenant.id == self.tenant_id)
        if after:
            stmt = stmt.where(Tenant.id > after)
        rows = list(self.session.scalars(stmt.order_by(Tenant.id).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def add_org(self, org: Tenant) -> None:
        self.session.add(org)

    def keys(self, org_id: str, after: str | None, limit: int,
             include_revoked: bool = False) -> tuple[list[ApiKey], bool]:
        """Newest first; ``after`` is the public id of the last key seen."""
        stmt = select(ApiKey).where(ApiKey.tenant_id == self.get_org(org_id).id)
        if not include_revoked:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        if after:
            cursor = self.session.scalar(stmt.with_only_columns(ApiKey.id).where(ApiKey.public_id == after))
            if cursor is not None:
                stmt = stmt.where(ApiKey.id < cursor)
        rows = list(self.session.scalars(stmt.order_by(ApiKey.id.desc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def get_key(self, org_id: str, key_id: str) -> ApiKey:
        row = self.session.scalar(select(ApiKey).where(ApiKey.tenant_id == self.get_org(org_id).id,
                                                       ApiKey.public_id == key_id))
        if row is None:
            raise NotFound("API key", key_id)
        return row

    def add_key(self, key: ApiKey) -> None:
        self.session.add(key)

    def count_admin_keys(self, org_id: str) -> int:
        return int(self.session.scalar(select(func.count()).select_from(ApiKey).where(
            ApiKey.tenant_id == org_id, ApiKey.role == "admin", ApiKey.revoked_at.is_(None))) or 0)

    def add_audit(self, entry: AuditLog) -> None:
        """Added to the caller's transaction: the action and its record are committed together."""
        self.session.add(entry)

    def audit_logs(self, org_id: str, after: str | None, limit: int, types: list[str] | None = None,
                   actor_key_ids: list[str] | None = None) -> tuple[list[AuditLog], bool]:
        stmt = select(AuditLog).where(AuditLog.tenant_id == self.get_org(org_id).id)
        if types:
            stmt = stmt.where(AuditLog.type.in_(types))
        if actor_key_ids:
            stmt = stmt.where(AuditLog.actor_key_id.in_(actor_key_ids))
        if after:
            cursor = self.session.scalar(stmt.with_only_columns(AuditLog.seq).where(AuditLog.id == after))
            if cursor is not None:
                stmt = stmt.where(AuditLog.seq < cursor)
        rows = list(self.session.scalars(stmt.order_by(AuditLog.seq.desc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()
