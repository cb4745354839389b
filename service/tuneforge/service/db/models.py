"""SQLAlchemy ORM models. Every row that belongs to a tenant carries ``tenant_id``."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    """An organization."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    name: Mapped[str] = mapped_column(String(256), default="")
    #: overrides of the service's limits (``domain.quotas.LIMIT_FIELDS``); a missing or null one: the default
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: bumped by every quota reservation: the UPDATE is what serializes an organization's reservations
    quota_version: Mapped[int] = mapped_column(BigInteger, default=0)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: the id the API shows (``key_…``); the secret itself is never stored, only its SHA-256
    public_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    #: the key's first characters and last four (``tf-abc12…wxyz``), to recognize it by
    redacted_value: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    #: the public id of the key that created this one (None: created by the operator on the server)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: updated at most once per ``last_used_resolution_seconds``, not on every request
    last_used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditLog(Base):
    """An administrative action: who (which key of which organization), what, on what, when."""

    __tablename__ = "audit_logs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    #: the organization the action concerned (its admins can read the entry)
    tenant_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    effective_at: Mapped[int] = mapped_column(BigInteger, default=now)
    actor_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor_tenant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor_redacted_value: Mapped[str | None] = mapped_column(String(32), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    resource_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_audit_logs_tenant_seq", "tenant_id", "seq"),)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_seq", "tenant_id", "seq"),)
    # integer sequence keeps cursor pagination stable when timestamps tie
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(512))
    format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    #: the upload's PII scan (privacy.upload_scan.PiiTally.report): action, counts, findings; None before 0007
    pii: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(256))
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    adapter: Mapped[dict[str, Any]] = mapped_column(JSON)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    #: sha256 of the create request that used ``idempotency_key``: the same key with another body is a conflict
    idempotency_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: the trainer's own error report, applied when its process exits
    trainer_error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: the trainer's last applied progress sequence number: epoch milliseconds, beyond 32 bits
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: the replica whose local executor runs the trainer (several replicas share one database)
    runner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: GPU-seconds spent in ``running`` (devices x seconds), added up each time the job leaves it (budgets)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: when the job last entered ``running`` (epoch seconds, fractional); None while it is not running
    running_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: the safety report of a succeeded job: None (not yet), running, completed, failed or skipped
    safety_report: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: evals to run on the base and the tuned model when the job succeeds, and their runs once created
    #: (``[{eval_id, data_source, base_run_id, tuned_run_id, error}]``)
    evals: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    #: None (no evals asked), pending (until the job succeeds), starting (claimed by one replica), started
    evals_state: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_job_idempotency"),
        # a tenant's newest jobs (listing, cursor pages) and its jobs by status (quota, models) without a sort
        # or a scan of the tenant's history
        Index("ix_jobs_tenant_seq", "tenant_id", "seq"),
        Index("ix_jobs_tenant_status", "tenant_id", "status"),
    )


#: 64-bit on PostgreSQL; on SQLite INTEGER is 64-bit already and must stay INTEGER to be the rowid
_BigAutoincrement = BigInteger().with_variant(Integer(), "sqlite")


class JobEvent(Base):
    __tablename__ = "job_events"
    # one row per trainer report: the autoincrement that grows with training, not with users
    seq: Mapped[int] = mapped_column(_BigAutoincrement, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    prefix: Mapped[str] = mapped_column(String(512))
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512))


class JobUsage(Base):
    """What finished jobs added up to, per tenant, terminal status and method: written by the transition that
    ends a job (in its transaction), so /metrics reads a few rows instead of every job ever run. Deleting a job
    does not take it back out (these are counters)."""

    __tablename__ = "job_usage"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    method: Mapped[str] = mapped_column(String(32), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    #: wall-clock seconds from first start to end, and those seconds times the GPUs requested
    job_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_seconds: Mapped[int] = mapped_column(BigInteger, default=0)


class Budget(Base):
    """An organization's GPU-hour budget (set by an admin); its jobs are paused once it is spent."""

    __tablename__ = "budgets"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    gpu_hours: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now)


class WebhookEndpoint(Base):
    """Where an organization wants job events POSTed (Standard Webhooks); the secret is kept encrypted."""

    __tablename__ = "webhook_endpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(512), default="")
    events: Mapped[list[Any]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: the signing secret, encrypted with a key derived from the service's secret (shown once, at creation)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class WebhookDelivery(Base):
    """One event for one endpoint, and every attempt to deliver it."""

    __tablename__ = "webhook_deliveries"
    seq: Mapped[int] = mapped_column(_BigAutoincrement, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    #: the Standard Webhooks ``webhook-id``: the same on every retry, so receivers can drop duplicates
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: pending, succeeded or failed (gave up)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    attempt_log: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery_event"),
                      Index("ix_webhook_deliveries_endpoint_seq", "endpoint_id", "seq"))


class Eval(Base):
    """An eval (OpenAI's Evals API): the shape of its data items and the testing criteria (graders)."""

    __tablename__ = "evals"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[Any]] = mapped_column(JSON)
    eval_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class EvalRun(Base):
    """One run of an eval on a data source; its counts grow as items are graded."""

    __tablename__ = "eval_runs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    #: the model that generated the samples ("" for a jsonl data source with answers in the rows)
    model: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(32), index=True)
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    run_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    #: passed / failed / errored counts, per criterion pass/fail counts, per model token usage
    result_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    per_testing_criteria_results: Mapped[list[Any]] = mapped_column(JSON, default=list)
    per_model_usage: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class EvalOutputItem(Base):
    """One data item of a run: its sample (the model's answer) and each criterion's result."""

    __tablename__ = "eval_output_items"
    seq: Mapped[int] = mapped_column(_BigAutoincrement, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    eval_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(64))
    datasource_item_id: Mapped[int] = mapped_column(Integer)
    datasource_item: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    results: Mapped[list[Any]] = mapped_column(JSON)
    sample: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)

    __table_args__ = (UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_item"),
                      Index("ix_eval_output_items_run_seq", "run_id", "seq"))


class FeedbackCampaign(Base):
    """A human-feedback campaign (issue #16): models answer a prompt file, raters label the answers."""

    __tablename__ = "feedback_campaigns"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    #: pending, sampling, collecting, completed, cancelled, failed
    status: Mapped[str] = mapped_column(String(32), index=True)
    #: score, pairwise, ranking, ab
    kind: Mapped[str] = mapped_column(String(16))
    file_id: Mapped[str] = mapped_column(String(64))
    #: the validated request: models, samples_per_prompt, sampling, scale, raters_per_item, gold items
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    campaign_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    total_prompts: Mapped[int] = mapped_column(Integer, default=0)
    sampled_prompts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FeedbackRater(Base):
    """A rater API key assigned to a campaign."""

    __tablename__ = "feedback_raters"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("feedback_campaigns.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)

    __table_args__ = (UniqueConstraint("campaign_id", "key_id", name="uq_feedback_rater"),)


class FeedbackItem(Base):
    """One thing to rate: a prompt and its answers (one for score, two for pairwise and A/B, K for ranking)."""

    __tablename__ = "feedback_items"
    seq: Mapped[int] = mapped_column(_BigAutoincrement, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("feedback_campaigns.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    #: the prompt's line in the prompt file (from 1); gold items: 0
    line: Mapped[int] = mapped_column(Integer)
    #: the prompt's chat messages
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    #: [{"text", "model", "sample"}] in canonical order (labels are stored against this order)
    answers: Mapped[list[Any]] = mapped_column(JSON)
    #: a gold item's known label (canonical), never shown to raters
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)

    __table_args__ = (Index("ix_feedback_items_campaign_seq", "campaign_id", "seq"),)


class FeedbackLabel(Base):
    """A rater's current label of an item (one per rater and item; a resubmission replaces it)."""

    __tablename__ = "feedback_labels"
    seq: Mapped[int] = mapped_column(_BigAutoincrement, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("feedback_campaigns.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("feedback_items.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    rater_key_id: Mapped[str] = mapped_column(String(64))
    #: the label against the answers' canonical order
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the label as the rater sent it (against the order the answers were shown in)
    submitted: Mapped[dict[str, Any]] = mapped_column(JSON)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)

    __table_args__ = (UniqueConstraint("item_id", "rater_key_id", name="uq_feedback_label"),)


class FeedbackLabelHistory(Base):
    """Every label ever submitted, replaced ones included."""

    __tablename__ = "feedback_label_history"
    seq: Mapped[int] = mapped_column(_BigAutoincrement, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("feedback_campaigns.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(64))
    rater_key_id: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    submitted: Mapped[dict[str, Any]] = mapped_column(JSON)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class FeedbackRound(Base):
    """One round of the feedback loop from a campaign (issue #16): its export, a reward model job, a reinforcement
    job graded by that reward model (with base-vs-tuned evals), and the next campaign on the tuned model."""

    __tablename__ = "feedback_rounds"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("feedback_campaigns.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    #: running, succeeded, failed, cancelled
    status: Mapped[str] = mapped_column(String(32), index=True)
    #: reward_model, reinforcement, evaluation, next_campaign, done
    step: Mapped[str] = mapped_column(String(32))
    #: the validated request (reinforcement settings, evals, next campaign)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    export_file_id: Mapped[str] = mapped_column(String(64))
    reward_model_job_id: Mapped[str] = mapped_column(String(64))
    reinforcement_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    next_campaign_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FeedbackEvent(Base):
    """What happened to a feedback campaign (sampling started, progressed, ended; cancelled; fully labelled)."""

    __tablename__ = "feedback_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("feedback_campaigns.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_feedback_events_campaign_seq", "campaign_id", "seq"),)
