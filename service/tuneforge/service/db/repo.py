"""The one data-access chokepoint.

Public routes only ever see :class:`TenantRepo`, which filters every query by tenant: a foreign id
behaves exactly like a missing one (404). :class:`SystemRepo` is for the executor and the
trainer's progress route, which address jobs by id and authenticate with a per-job token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from tuneforge.contracts.status import ACTIVE_STATUSES, JobStatus
from tuneforge.service.core.errors import NotFound
from tuneforge.service.db.models import (
    ApiKey,
    Checkpoint,
    Eval,
    EvalOutputItem,
    EvalRun,
    File,
    Job,
    JobEvent,
    Tenant,
)

T = TypeVar("T", File, Job, JobEvent, Checkpoint, Eval, EvalRun, EvalOutputItem)


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


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (a CursorResult's; typed as a plain Result by SQLAlchemy's stubs)."""
    return int(result.rowcount)


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

    # -- evals --
    def add_eval(self, row: Eval) -> Eval:
        row.tenant_id = self.tenant_id
        self.session.add(row)
        self.session.commit()
        return row

    def get_eval(self, eval_id: str) -> Eval:
        row = self.session.scalar(select(Eval).where(Eval.id == eval_id, Eval.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("eval", eval_id)
        return row

    def list_evals(self, after: str | None, limit: int, newest_first: bool) -> tuple[list[Eval], bool]:
        return _page(self.session, select(Eval).where(Eval.tenant_id == self.tenant_id), Eval, after, limit,
                     newest_first)

    def save(self) -> None:
        self.session.commit()

    def delete_eval(self, row: Eval) -> None:
        """The eval with its runs and their output items, in one transaction."""
        runs = select(EvalRun.id).where(EvalRun.eval_id == row.id, EvalRun.tenant_id == self.tenant_id)
        self.session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id.in_(runs),
                                                          EvalOutputItem.tenant_id == self.tenant_id))
        self.session.execute(delete(EvalRun).where(EvalRun.eval_id == row.id, EvalRun.tenant_id == self.tenant_id))
        self.session.delete(row)
        self.session.commit()

    def add_eval_run(self, row: EvalRun) -> EvalRun:
        row.tenant_id = self.tenant_id
        self.session.add(row)
        self.session.commit()
        return row

    def get_eval_run(self, eval_id: str, run_id: str) -> EvalRun:
        row = self.session.scalar(select(EvalRun).where(
            EvalRun.id == run_id, EvalRun.eval_id == eval_id, EvalRun.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("eval run", run_id)
        return row

    def list_eval_runs(self, eval_id: str, after: str | None, limit: int, newest_first: bool,
                       status: str | None = None) -> tuple[list[EvalRun], bool]:
        stmt = select(EvalRun).where(EvalRun.eval_id == eval_id, EvalRun.tenant_id == self.tenant_id)
        if status:
            stmt = stmt.where(EvalRun.status == status)
        return _page(self.session, stmt, EvalRun, after, limit, newest_first)

    def cancel_eval_run(self, run: EvalRun, finished_at: int) -> bool:
        """Marks the run canceled unless it has finished meanwhile (one conditional UPDATE: no race with the
        runner's own final write); True when it was canceled now."""
        done = _rowcount(self.session.execute(update(EvalRun).where(
            EvalRun.id == run.id, EvalRun.tenant_id == self.tenant_id, EvalRun.status.in_(("queued", "in_progress"))
        ).values(status="canceled", finished_at=finished_at)))
        self.session.commit()
        self.session.refresh(run)
        return bool(done)

    def delete_eval_run(self, run: EvalRun) -> None:
        self.session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id == run.id,
                                                          EvalOutputItem.tenant_id == self.tenant_id))
        self.session.delete(run)
        self.session.commit()

    def get_output_item(self, run: EvalRun, item_id: str) -> EvalOutputItem:
        row = self.session.scalar(select(EvalOutputItem).where(
            EvalOutputItem.id == item_id, EvalOutputItem.run_id == run.id, EvalOutputItem.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("eval run output item", item_id)
        return row

    def list_output_items(self, run: EvalRun, after: str | None, limit: int, newest_first: bool,
                          status: str | None = None) -> tuple[list[EvalOutputItem], bool]:
        stmt = select(EvalOutputItem).where(EvalOutputItem.run_id == run.id,
                                            EvalOutputItem.tenant_id == self.tenant_id)
        if status:
            stmt = stmt.where(EvalOutputItem.status == status)
        return _page(self.session, stmt, EvalOutputItem, after, limit, newest_first)


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

    # -- eval runs (the service's background runner) --
    def eval_run(self, run_id: str) -> tuple[EvalRun, Eval] | None:
        row = self.session.execute(select(EvalRun, Eval).join(Eval, Eval.id == EvalRun.eval_id)
                                   .where(EvalRun.id == run_id)).first()
        return (row[0], row[1]) if row is not None else None

    def unfinished_eval_runs(self) -> list[str]:
        return list(self.session.scalars(select(EvalRun.id).where(EvalRun.status.in_(("queued", "in_progress")))
                                         .order_by(EvalRun.seq)))

    def run_items(self, run_id: str) -> list[EvalOutputItem]:
        return list(self.session.scalars(select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)))

    def set_eval_run(self, run_id: str, *, only_if: tuple[str, ...] = ("queued", "in_progress"),
                     **values: Any) -> bool:
        """Updates the run while it is in one of ``only_if`` (a canceled run stays canceled); True if it was."""
        done = _rowcount(self.session.execute(update(EvalRun).where(EvalRun.id == run_id,
                                                                    EvalRun.status.in_(only_if)).values(**values)))
        self.session.commit()
        return bool(done)

    def add_output_item(self, item: EvalOutputItem, run_values: dict[str, Any]) -> bool:
        """Stores a graded item and the run's new counts together, only while the run is in progress (an item
        finishing after a cancel is dropped); True if stored."""
        done = _rowcount(self.session.execute(update(EvalRun).where(
            EvalRun.id == item.run_id, EvalRun.status == "in_progress").values(**run_values)))
        if not done:
            self.session.rollback()
            return False
        self.session.add(item)
        self.session.commit()
        return True

    def eval_runs_by_status(self) -> list[tuple[str, int]]:
        rows = self.session.execute(select(EvalRun.status, func.count()).group_by(EvalRun.status))
        return [(str(status), int(count)) for status, count in rows]
