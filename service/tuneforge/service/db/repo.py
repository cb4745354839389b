"""The one data-access chokepoint.

Public routes only ever see :class:`TenantRepo`, which filters every query by tenant: a foreign id
behaves exactly like a missing one (404). :class:`SystemRepo` is for the executor and the
trainer's progress route, which address jobs by id and authenticate with a per-job token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneforge.contracts.status import ACTIVE_STATUSES, TERMINAL_STATUSES, JobStatus
from tuneforge.service.core.errors import Conflict, NotFound
from tuneforge.service.core.ids import new_id, new_key_id
from tuneforge.service.db.models import (
    ApiKey,
    AuditLog,
    Budget,
    Checkpoint,
    Eval,
    EvalOutputItem,
    EvalRun,
    FeedbackCampaign,
    FeedbackEvent,
    FeedbackItem,
    FeedbackLabel,
    FeedbackLabelHistory,
    FeedbackRater,
    FeedbackRound,
    File,
    Job,
    JobEvent,
    JobUsage,
    Tenant,
    WebhookDelivery,
    WebhookEndpoint,
    now,
)

T = TypeVar("T", File, Job, JobEvent, Checkpoint, WebhookEndpoint, WebhookDelivery, Eval, EvalRun, EvalOutputItem,
            FeedbackCampaign, FeedbackRound, FeedbackEvent)
#: the most jobs' (seq, metadata) pairs read by one query while a metadata-filtered list fills its page
METADATA_SCAN_BATCH = 2000
UNFINISHED_STATUSES = tuple(sorted(set(JobStatus) - TERMINAL_STATUSES))


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


def webhook_endpoints_of(session: Session, tenant_id: str) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
                                .order_by(WebhookEndpoint.seq)))


def usage_jobs_of(session: Session, tenant_id: str) -> list[Job]:
    """The organization's jobs that have spent or are spending GPU time."""
    return list(session.scalars(select(Job).where(
        Job.tenant_id == tenant_id, (Job.gpu_seconds > 0) | Job.running_since.is_not(None))))


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (a CursorResult's; typed as a plain Result by SQLAlchemy's stubs)."""
    return int(result.rowcount)


#: Statements of the two queries every keyed request makes, built once: building a select and its cache key costs
#: more CPU than SQLite answering it (0.72 -> 0.41 ms for both, ``bench/README.md``, "Control plane").
_KEY_BY_HASH = (select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(ApiKey.key_hash == bindparam("key_hash")))
_TENANT_JOB = select(Job).where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))


class TunedModelRow(NamedTuple):
    """The columns of a succeeded job that describe its model (``TenantRepo.tuned_models``)."""

    id: str
    fine_tuned_model: str | None
    model: str
    method: dict[str, Any]
    tenant_id: str
    created_at: int
    finished_at: int | None


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
        """Insert the job (with whatever the session holds pending: its first event); when a concurrent request
        with the same ``Idempotency-Key`` inserted its job first, nothing is written and that job is returned."""
        job.tenant_id = self.tenant_id
        self.session.add(job)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            existing = self.find_job_by_idempotency_key(job.idempotency_key) if job.idempotency_key else None
            if existing is None:
                raise
            return existing
        return job

    def get_job(self, job_id: str) -> Job:
        row = self.session.scalar(_TENANT_JOB, {"job_id": job_id, "tenant_id": self.tenant_id})
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
        if metadata:
            return self._list_jobs_matching(after, limit, metadata)
        return _page(self.session, select(Job).where(Job.tenant_id == self.tenant_id), Job, after, limit,
                     newest_first=True)

    def _list_jobs_matching(self, after: str | None, limit: int, metadata: dict[str, str]) -> tuple[list[Job], bool]:
        """A page of the jobs whose metadata holds every pair of ``metadata``, newest first.

        Matched in Python (the same on SQLite and PostgreSQL, for any key), over (seq, metadata) pairs read newest
        first in batches through the (tenant, seq) index until the page is full: a page costs the rows down to its
        last match, not the tenant's whole history, and only the page's jobs are loaded whole."""
        def matches(value: dict[str, Any] | None) -> bool:
            return all((value or {}).get(k) == v for k, v in metadata.items())

        pairs = select(Job.seq, Job.job_metadata).where(Job.tenant_id == self.tenant_id)
        below: int | None = None
        if after:  # a cursor outside the filtered list (unknown, another tenant's, not matching) is ignored
            cursor = self.session.execute(pairs.where(Job.id == after)).first()
            if cursor is not None and matches(cursor[1]):
                below = cursor[0]
        found: list[int] = []
        # a first batch that a common filter fills the page from, then doubling batches for a rare one
        size = min(4 * (limit + 1), METADATA_SCAN_BATCH)
        while len(found) <= limit:
            batch_stmt = pairs.order_by(Job.seq.desc()).limit(size)
            batch = self.session.execute(batch_stmt if below is None else batch_stmt.where(Job.seq < below)).all()
            found += [seq for seq, value in batch if matches(value)]
            if len(batch) < size:
                break
            below = batch[-1][0]
            size = min(size * 2, METADATA_SCAN_BATCH)
        rows = list(self.session.scalars(select(Job).where(Job.seq.in_(found[:limit + 1])).order_by(Job.seq.desc())))
        return rows[:limit], len(rows) > limit

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

    def tuned_models(self) -> Sequence[TunedModelRow]:
        """What ``/v1/models`` shows of each succeeded job: these columns only (a whole job row carries its spec,
        progress and result as JSON, and an organization with hundreds of tuned models paid for parsing them)."""
        rows = self.session.execute(
            select(Job.id, Job.fine_tuned_model, Job.model, Job.method, Job.tenant_id, Job.created_at,
                   Job.finished_at)
            .where(Job.tenant_id == self.tenant_id, Job.status == JobStatus.SUCCEEDED).order_by(Job.seq)
        )
        return [TunedModelRow(*row) for row in rows]

    def find_model_job(self, fine_tuned_model: str) -> Job | None:
        return self.session.scalar(select(Job).where(
            Job.tenant_id == self.tenant_id, Job.fine_tuned_model == fine_tuned_model,
            Job.status == JobStatus.SUCCEEDED,
        ))

    def find_checkpoint(self, name: str) -> tuple[Checkpoint, Job] | None:
        """A checkpoint of this organization by its ``fine_tuned_model_checkpoint``, with its job."""
        row = self.session.execute(select(Checkpoint, Job).join(Job, Job.id == Checkpoint.job_id).where(
            Checkpoint.tenant_id == self.tenant_id, Job.tenant_id == self.tenant_id,
            Checkpoint.fine_tuned_model_checkpoint == name).order_by(Checkpoint.seq.desc()).limit(1)).first()
        return None if row is None else (row[0], row[1])

    def unfinished_jobs(self) -> list[Job]:
        """Jobs that may still start or run (what a spent budget pauses)."""
        return list(self.session.scalars(select(Job).where(
            Job.tenant_id == self.tenant_id,
            Job.status.in_((JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING))).order_by(Job.seq)))

    def budget(self) -> Budget | None:
        return self.session.get(Budget, self.tenant_id)

    # -- webhooks --
    def add_webhook(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        endpoint.tenant_id = self.tenant_id
        self.session.add(endpoint)
        self.session.commit()
        return endpoint

    def count_webhooks(self) -> int:
        return self.session.scalar(select(func.count()).select_from(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == self.tenant_id)) or 0

    def get_webhook(self, endpoint_id: str) -> WebhookEndpoint:
        row = self.session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                                WebhookEndpoint.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("webhook endpoint", endpoint_id)
        return row

    def list_webhooks(self, after: str | None, limit: int) -> tuple[list[WebhookEndpoint], bool]:
        stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == self.tenant_id)
        return _page(self.session, stmt, WebhookEndpoint, after, limit, newest_first=True)

    def save(self) -> None:
        self.session.commit()

    def delete_webhook(self, endpoint: WebhookEndpoint) -> None:
        self.session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id,
                                                           WebhookDelivery.tenant_id == self.tenant_id))
        self.session.delete(endpoint)
        self.session.commit()

    def list_deliveries(self, endpoint: WebhookEndpoint, after: str | None, limit: int
                        ) -> tuple[list[WebhookDelivery], bool]:
        stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id,
                                             WebhookDelivery.tenant_id == self.tenant_id)
        return _page(self.session, stmt, WebhookDelivery, after, limit, newest_first=True)

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

    def all_output_items(self, run: EvalRun) -> list[EvalOutputItem]:
        """Every graded item of a run (at most the run's item limit), by the item's place in the data source."""
        return list(self.session.scalars(select(EvalOutputItem).where(
            EvalOutputItem.run_id == run.id, EvalOutputItem.tenant_id == self.tenant_id)
            .order_by(EvalOutputItem.datasource_item_id)))

    # -- feedback campaigns (issue #16) --
    def add_campaign(self, row: FeedbackCampaign, items: list[FeedbackItem]) -> FeedbackCampaign:
        """The campaign with its gold items, in one transaction."""
        row.tenant_id = self.tenant_id
        self.session.add(row)
        self.session.flush()
        for item in items:
            item.tenant_id = self.tenant_id
        self.session.add_all(items)
        self.session.commit()
        return row

    def get_campaign(self, campaign_id: str) -> FeedbackCampaign:
        row = self.session.scalar(select(FeedbackCampaign).where(FeedbackCampaign.id == campaign_id,
                                                                 FeedbackCampaign.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("feedback campaign", campaign_id)
        return row

    def get_assigned_campaign(self, campaign_id: str, key_id: str) -> FeedbackCampaign:
        """The campaign if the rater key is assigned to it; otherwise the same 404 as a missing campaign."""
        row = self.session.scalar(select(FeedbackCampaign).join(
            FeedbackRater, FeedbackRater.campaign_id == FeedbackCampaign.id).where(
            FeedbackCampaign.id == campaign_id, FeedbackCampaign.tenant_id == self.tenant_id,
            FeedbackRater.key_id == key_id, FeedbackRater.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("feedback campaign", campaign_id)
        return row

    def list_campaigns(self, after: str | None, limit: int, newest_first: bool) -> tuple[list[FeedbackCampaign], bool]:
        return _page(self.session, select(FeedbackCampaign).where(FeedbackCampaign.tenant_id == self.tenant_id),
                     FeedbackCampaign, after, limit, newest_first)

    def delete_campaign(self, row: FeedbackCampaign) -> None:
        """The campaign with its raters, items, labels and their history, in one transaction."""
        for model in (FeedbackLabelHistory, FeedbackLabel, FeedbackItem, FeedbackRater, FeedbackRound,
                      FeedbackEvent):
            self.session.execute(delete(model).where(model.campaign_id == row.id,
                                                     model.tenant_id == self.tenant_id))
        self.session.delete(row)
        self.session.commit()

    def cancel_campaign(self, row: FeedbackCampaign, finished_at: int) -> bool:
        """Marks the campaign cancelled unless it has finished meanwhile; True when it was cancelled now."""
        done = _rowcount(self.session.execute(update(FeedbackCampaign).where(
            FeedbackCampaign.id == row.id, FeedbackCampaign.tenant_id == self.tenant_id,
            FeedbackCampaign.status.in_(("pending", "sampling", "collecting"))
        ).values(status="cancelled", finished_at=finished_at)))
        self.session.commit()
        self.session.refresh(row)
        return bool(done)

    def rater_keys(self, key_ids: list[str]) -> dict[str, ApiKey]:
        """This organization's keys among ``key_ids`` (a foreign key id is simply absent)."""
        rows = self.session.scalars(select(ApiKey).where(ApiKey.public_id.in_(key_ids),
                                                         ApiKey.tenant_id == self.tenant_id))
        return {row.public_id: row for row in rows}

    def add_raters(self, row: FeedbackCampaign, key_ids: list[str], at: int) -> None:
        known = set(self.campaign_raters(row.id))
        for key_id in key_ids:
            if key_id not in known:
                known.add(key_id)
                self.session.add(FeedbackRater(campaign_id=row.id, tenant_id=self.tenant_id, key_id=key_id,
                                               created_at=at))
        self.session.commit()

    def list_campaign_events(self, campaign_id: str, after: str | None, limit: int,
                             newest_first: bool) -> tuple[list[FeedbackEvent], bool]:
        return _page(self.session, select(FeedbackEvent).where(FeedbackEvent.campaign_id == campaign_id,
                                                               FeedbackEvent.tenant_id == self.tenant_id),
                     FeedbackEvent, after, limit, newest_first)

    def add_campaign_event(self, campaign: FeedbackCampaign, message: str, *, level: str = "info",
                           data: dict[str, Any] | None = None) -> None:
        self.session.add(FeedbackEvent(id=new_id("fbevent"), campaign_id=campaign.id, tenant_id=self.tenant_id,
                                       level=level, message=message, data=data, created_at=now()))
        self.session.commit()

    # -- rounds of the feedback loop --
    def add_round(self, row: FeedbackRound) -> FeedbackRound:
        row.tenant_id = self.tenant_id
        self.session.add(row)
        self.session.commit()
        return row

    def get_round(self, campaign_id: str, round_id: str) -> FeedbackRound:
        row = self.session.scalar(select(FeedbackRound).where(
            FeedbackRound.id == round_id, FeedbackRound.campaign_id == campaign_id,
            FeedbackRound.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("feedback round", round_id)
        return row

    def list_rounds(self, campaign_id: str, after: str | None, limit: int,
                    newest_first: bool) -> tuple[list[FeedbackRound], bool]:
        return _page(self.session, select(FeedbackRound).where(FeedbackRound.campaign_id == campaign_id,
                                                               FeedbackRound.tenant_id == self.tenant_id),
                     FeedbackRound, after, limit, newest_first)

    def set_round(self, round_id: str, *, only_if: str = "running", **values: Any) -> bool:
        """Updates a round while it has status ``only_if`` (a cancelled round stays cancelled); True if it did."""
        done = _rowcount(self.session.execute(update(FeedbackRound).where(
            FeedbackRound.id == round_id, FeedbackRound.tenant_id == self.tenant_id,
            FeedbackRound.status == only_if).values(**values)))
        self.session.commit()
        return bool(done)

    def campaign_raters(self, campaign_id: str) -> list[str]:
        return list(self.session.scalars(select(FeedbackRater.key_id).where(
            FeedbackRater.campaign_id == campaign_id, FeedbackRater.tenant_id == self.tenant_id)
            .order_by(FeedbackRater.seq)))

    def campaign_items(self, campaign_id: str) -> list[FeedbackItem]:
        return list(self.session.scalars(select(FeedbackItem).where(
            FeedbackItem.campaign_id == campaign_id, FeedbackItem.tenant_id == self.tenant_id)
            .order_by(FeedbackItem.seq)))

    def get_item(self, campaign_id: str, item_id: str) -> FeedbackItem:
        row = self.session.scalar(select(FeedbackItem).where(
            FeedbackItem.id == item_id, FeedbackItem.campaign_id == campaign_id,
            FeedbackItem.tenant_id == self.tenant_id))
        if row is None:
            raise NotFound("feedback item", item_id, param="item_id")
        return row

    def campaign_labels(self, campaign_id: str) -> list[FeedbackLabel]:
        return list(self.session.scalars(select(FeedbackLabel).where(
            FeedbackLabel.campaign_id == campaign_id, FeedbackLabel.tenant_id == self.tenant_id)
            .order_by(FeedbackLabel.seq)))

    def count_labels(self, campaign_id: str) -> tuple[int, int]:
        """(labels, items with at least one label) of a campaign."""
        labels, items = self.session.execute(select(func.count(), func.count(FeedbackLabel.item_id.distinct())).where(
            FeedbackLabel.campaign_id == campaign_id, FeedbackLabel.tenant_id == self.tenant_id)).one()
        return int(labels), int(items)

    def count_items(self, campaign_id: str) -> int:
        return int(self.session.scalar(select(func.count()).select_from(FeedbackItem).where(
            FeedbackItem.campaign_id == campaign_id, FeedbackItem.tenant_id == self.tenant_id)) or 0)

    def label_history(self, campaign_id: str, item_id: str, key_id: str) -> list[FeedbackLabelHistory]:
        return list(self.session.scalars(select(FeedbackLabelHistory).where(
            FeedbackLabelHistory.campaign_id == campaign_id, FeedbackLabelHistory.item_id == item_id,
            FeedbackLabelHistory.rater_key_id == key_id, FeedbackLabelHistory.tenant_id == self.tenant_id)
            .order_by(FeedbackLabelHistory.seq)))

    def save_label(self, campaign: FeedbackCampaign, item: FeedbackItem, key_id: str, value: dict[str, Any],
                   submitted: dict[str, Any], comment: str | None, at: int, raters_per_item: int) -> FeedbackLabel:
        """Store (or replace) a rater's label of an item and append it to the history, in one transaction.

        The campaign's row is updated first while it is ``collecting`` (a conditional UPDATE): that both checks the
        status and serializes the campaign's label writes, so an item never gets more than ``raters_per_item``
        raters. Raises :class:`Conflict` (nothing written) when the campaign is not collecting or the item has
        its raters already; completes the campaign when this label was the last one it needed."""
        session = self.session
        try:
            if not _rowcount(session.execute(update(FeedbackCampaign).where(
                    FeedbackCampaign.id == campaign.id, FeedbackCampaign.tenant_id == self.tenant_id,
                    FeedbackCampaign.status == "collecting").values(status="collecting"))):
                session.rollback()
                session.refresh(campaign)
                raise Conflict(f"Feedback campaign '{campaign.id}' is {campaign.status}, not collecting: it takes "
                               "no labels.", param="campaign_id", code="campaign_not_collecting")
            label = session.scalar(select(FeedbackLabel).where(FeedbackLabel.item_id == item.id,
                                                               FeedbackLabel.rater_key_id == key_id))
            if label is None:
                others = session.scalar(select(func.count()).select_from(FeedbackLabel).where(
                    FeedbackLabel.item_id == item.id)) or 0
                if others >= raters_per_item:
                    raise Conflict(f"Item '{item.id}' has its {raters_per_item} rater(s) already; fetch the next "
                                   "item with GET next_item.", param="item_id", code="item_fully_rated")
                label = FeedbackLabel(id=new_id("fblabel"), campaign_id=campaign.id, item_id=item.id,
                                      tenant_id=self.tenant_id, rater_key_id=key_id, revision=0)
                session.add(label)
            elif label.submitted == submitted and label.comment == comment:
                raise Conflict(f"This rater has already labelled item '{item.id}' with exactly this label and "
                               "comment; send a different one to replace it.", param="item_id",
                               code="duplicate_label")
            label.value, label.submitted, label.comment = value, submitted, comment
            label.revision = (label.revision or 0) + 1
            label.created_at = at
            session.add(FeedbackLabelHistory(campaign_id=campaign.id, item_id=item.id, tenant_id=self.tenant_id,
                                             rater_key_id=key_id, revision=label.revision, value=value,
                                             submitted=submitted, comment=comment, created_at=at))
            session.flush()
            short = session.scalar(select(func.count()).select_from(FeedbackItem).where(
                FeedbackItem.campaign_id == campaign.id,
                select(func.count()).select_from(FeedbackLabel).where(FeedbackLabel.item_id == FeedbackItem.id)
                .scalar_subquery() < raters_per_item))
            if not short:
                session.execute(update(FeedbackCampaign).where(FeedbackCampaign.id == campaign.id)
                                .values(status="completed", finished_at=at))
                session.add(FeedbackEvent(id=new_id("fbevent"), campaign_id=campaign.id, tenant_id=self.tenant_id,
                                          message="Every item has its raters: the campaign is completed",
                                          data={"status": "completed"}, created_at=at))
            session.commit()
        except BaseException:
            session.rollback()
            raise
        session.refresh(label)
        return label


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
        row = self.session.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first()
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

    def set_status(self, job_id: str, expected: str, values: dict[str, Any]) -> bool:
        """Compare-and-set on the job's status: write ``values`` (the new status among them) only if the status
        is still ``expected``; False when another writer changed it first. Not committed: the caller's
        transaction also records the transition's event. A plain UPDATE, not the ORM's unit of work, so a
        stale copy of the row in some session can never write its old status back."""
        with self.session.no_autoflush:
            result = self.session.execute(
                update(Job).where(Job.id == job_id, Job.status == expected).values(**values)
                .execution_options(synchronize_session=False))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def record_pid(self, job_id: str, pid: int) -> None:
        """The trainer's process id, kept only while the job is running (a cancel may have ended it already)."""
        self.session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING).values(pid=pid)
                             .execution_options(synchronize_session=False))
        self.session.commit()

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

    def add_finished_usage(self, tenant_id: str, status: str, method: str, seconds: int, gpu_seconds: int) -> None:
        """Count one finished job in ``job_usage`` (an upsert; not committed: part of the ending transition)."""
        values = {"tenant_id": tenant_id, "status": status, "method": method, "jobs": 1, "job_seconds": seconds,
                  "gpu_seconds": gpu_seconds}
        insert = sqlite_insert if self.session.get_bind().dialect.name == "sqlite" else postgresql_insert
        stmt = insert(JobUsage).values(**values)
        self.session.execute(stmt.on_conflict_do_update(
            index_elements=[JobUsage.tenant_id, JobUsage.status, JobUsage.method],
            set_={"jobs": JobUsage.jobs + 1, "job_seconds": JobUsage.job_seconds + seconds,
                  "gpu_seconds": JobUsage.gpu_seconds + gpu_seconds}))

    def finished_usage(self) -> list[tuple[str, str, str, int, int, int]]:
        """(tenant, status, method, jobs, job seconds, GPU-seconds) of finished jobs: a few rows per tenant."""
        rows = self.session.execute(select(JobUsage.tenant_id, JobUsage.status, JobUsage.method, JobUsage.jobs,
                                           JobUsage.job_seconds, JobUsage.gpu_seconds))
        return [(str(t), str(st), str(m), int(n), int(s), int(g)) for t, st, m, n, s, g in rows]

    def unfinished_jobs(self) -> list[tuple[str, str, Any, Any, int, int | None]]:
        """(tenant, status, method, resources, created_at, started_at) of every job that has not ended: bounded by
        the tenants' quotas, found through the status index, never a scan of finished jobs."""
        rows = self.session.execute(
            select(Job.tenant_id, Job.status, Job.method, Job.resources, Job.created_at, Job.started_at)
            .where(Job.status.in_(UNFINISHED_STATUSES)))  # IN, not NOT IN: only IN can search the status index
        return [(str(t), str(st), m, r, int(c), s) for t, st, m, r, c, s in rows]

    def running_progress(self) -> list[tuple[str, str, Any, dict[str, Any], int | None]]:
        """(job id, tenant, method, live progress, started_at) of every running job."""
        rows = self.session.execute(select(Job.id, Job.tenant_id, Job.method, Job.progress, Job.started_at)
                                    .where(Job.status == JobStatus.RUNNING))
        return [(str(i), str(t), m, p or {}, s) for i, t, m, p, s in rows]

    def delete_checkpoints(self, job: Job, steps: list[int]) -> None:
        """Forget checkpoints that retention removed from the store (not committed: part of the caller's batch)."""
        self.session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id,
                                                      Checkpoint.step_number.in_(steps)))

    def latest_checkpoint(self, job: Job) -> Checkpoint | None:
        return self.session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id)
                                   .order_by(Checkpoint.step_number.desc()).limit(1))

    # -- budgets --
    def set_budget(self, tenant_id: str, gpu_hours: float | None) -> None:
        """Set (or with None remove) an organization's GPU-hour budget."""
        self.ensure_tenant(tenant_id)
        row = self.session.get(Budget, tenant_id)
        if gpu_hours is None:
            if row is not None:
                self.session.delete(row)
        elif row is None:
            self.session.add(Budget(tenant_id=tenant_id, gpu_hours=gpu_hours))
        else:
            row.gpu_hours = gpu_hours
            row.updated_at = now()
        self.session.commit()

    def budgets(self) -> list[Budget]:
        return list(self.session.scalars(select(Budget).order_by(Budget.tenant_id)))

    # -- webhook deliveries --
    def due_deliveries(self, at: float, limit: int) -> list[WebhookDelivery]:
        return list(self.session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= at)
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)))

    def claim_delivery(self, delivery: WebhookDelivery, lease_until: float) -> bool:
        """Take a due delivery for one sender (another replica's claim wins the race): compare-and-set on its
        ``next_attempt_at``, committed at once."""
        result = self.session.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == delivery.id, WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at == delivery.next_attempt_at).values(next_attempt_at=lease_until)
            .execution_options(synchronize_session=False))
        self.session.commit()
        return getattr(result, "rowcount", 0) == 1

    def delivery(self, delivery_id: str) -> WebhookDelivery | None:
        return self.session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id))

    def webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        return self.session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))

    def recent_events(self, job: Job, limit: int = 50) -> list[JobEvent]:
        return list(self.session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)
                                         .order_by(JobEvent.seq.desc()).limit(limit)))

    # -- eval runs (the service's background runner) --
    def eval_run(self, run_id: str) -> tuple[EvalRun, Eval] | None:
        row = self.session.execute(select(EvalRun, Eval).join(Eval, Eval.id == EvalRun.eval_id)
                                   .where(EvalRun.id == run_id)).first()
        return (row[0], row[1]) if row is not None else None

    # -- safety reports of succeeded jobs --
    def jobs_awaiting_safety_report(self, limit: int) -> list[str]:
        return list(self.session.scalars(select(Job.id).where(Job.status == JobStatus.SUCCEEDED,
                                                              Job.safety_report.is_(None))
                                         .order_by(Job.seq).limit(limit)))

    def set_safety_report(self, job_id: str, state: str, *, only_if: str | None = None) -> bool:
        """Sets a job's safety report state; with ``only_if``, only from that state (None: not started yet), so that
        one replica claims a report; True if it was set."""
        condition = Job.safety_report.is_(None) if only_if is None else Job.safety_report == only_if
        done = _rowcount(self.session.execute(update(Job).where(Job.id == job_id, condition)
                                              .values(safety_report=state)))
        self.session.commit()
        return bool(done)

    def release_running_safety_reports(self) -> int:
        """Reports left ``running`` by a stopped service start again (a second replica's may run twice: it writes
        the same objects)."""
        done = _rowcount(self.session.execute(update(Job).where(Job.safety_report == "running")
                                              .values(safety_report=None)))
        self.session.commit()
        return done

    # -- a succeeded job's base-vs-tuned evals --
    def jobs_awaiting_evals(self, limit: int) -> list[str]:
        return list(self.session.scalars(select(Job.id).where(Job.status == JobStatus.SUCCEEDED,
                                                              Job.evals_state == "pending")
                                         .order_by(Job.seq).limit(limit)))

    def claim_job_evals(self, job_id: str) -> Job | None:
        """The job, if this replica moved its evals from pending to starting (one replica creates the runs)."""
        done = _rowcount(self.session.execute(update(Job).where(Job.id == job_id, Job.evals_state == "pending")
                                              .values(evals_state="starting")))
        self.session.commit()
        return self.session.scalars(select(Job).where(Job.id == job_id)).first() if done else None

    def set_job_evals(self, job_id: str, evals: list[dict[str, Any]], state: str) -> None:
        self.session.execute(update(Job).where(Job.id == job_id).values(evals=evals, evals_state=state))
        self.session.commit()

    def release_starting_job_evals(self) -> int:
        """Evals a stopped service was creating start again (runs it had created are kept: see the job's evals)."""
        done = _rowcount(self.session.execute(update(Job).where(Job.evals_state == "starting")
                                              .values(evals_state="pending")))
        self.session.commit()
        return done

    def running_rounds(self) -> list[tuple[str, str, str]]:
        """(tenant, campaign, round) of every running round of the feedback loop, oldest first."""
        return [(t, c, i) for t, c, i in self.session.execute(
            select(FeedbackRound.tenant_id, FeedbackRound.campaign_id, FeedbackRound.id)
            .where(FeedbackRound.status == "running").order_by(FeedbackRound.seq))]

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

    # -- feedback campaigns (the service's background sampler) --
    def feedback_campaign(self, campaign_id: str) -> FeedbackCampaign | None:
        return self.session.scalar(select(FeedbackCampaign).where(FeedbackCampaign.id == campaign_id))

    def unfinished_feedback_campaigns(self) -> list[str]:
        return list(self.session.scalars(select(FeedbackCampaign.id).where(
            FeedbackCampaign.status.in_(("pending", "sampling"))).order_by(FeedbackCampaign.seq)))

    def set_feedback_campaign(self, campaign_id: str, *, only_if: tuple[str, ...], **values: Any) -> bool:
        done = _rowcount(self.session.execute(update(FeedbackCampaign).where(
            FeedbackCampaign.id == campaign_id, FeedbackCampaign.status.in_(only_if)).values(**values)))
        self.session.commit()
        return bool(done)

    def sampled_lines(self, campaign_id: str) -> set[int]:
        return set(self.session.scalars(select(FeedbackItem.line).distinct().where(
            FeedbackItem.campaign_id == campaign_id, FeedbackItem.line > 0)))

    def add_feedback_items(self, campaign_id: str, items: list[FeedbackItem], *, sampled: int = 1) -> bool:
        """One prompt's items and the campaign's progress together, only while it is sampling; True if stored."""
        done = _rowcount(self.session.execute(update(FeedbackCampaign).where(
            FeedbackCampaign.id == campaign_id, FeedbackCampaign.status == "sampling").values(
            sampled_prompts=FeedbackCampaign.sampled_prompts + sampled)))
        if not done:
            self.session.rollback()
            return False
        self.session.add_all(items)
        self.session.commit()
        return True

    def add_campaign_event(self, campaign_id: str, message: str, *, level: str = "info",
                           data: dict[str, Any] | None = None) -> None:
        """An event of the campaign (nothing when it was deleted meanwhile)."""
        tenant = self.session.scalar(select(FeedbackCampaign.tenant_id).where(FeedbackCampaign.id == campaign_id))
        if tenant is None:
            return
        self.session.add(FeedbackEvent(id=new_id("fbevent"), campaign_id=campaign_id, tenant_id=tenant,
                                       level=level, message=message, data=data, created_at=now()))
        self.session.commit()

    def feedback_campaigns_by_status(self) -> list[tuple[str, int]]:
        rows = self.session.execute(select(FeedbackCampaign.status, func.count()).group_by(FeedbackCampaign.status))
        return [(str(status), int(count)) for status, count in rows]


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
