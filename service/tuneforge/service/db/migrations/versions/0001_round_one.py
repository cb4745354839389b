"""Round one's schema, exactly as ``Base.metadata.create_all`` made it (frozen: never edit this revision).

A database created by round one has these tables and no ``alembic_version``; ``migrate.upgrade`` compares it
with :func:`schema` and stamps it at this revision before upgrading it further.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def schema() -> sa.MetaData:
    """The tables of db/models.py at round one, column for column, in the same order."""
    md = sa.MetaData()
    sa.Table(
        "tenants", md,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "api_keys", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "files", md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("format", sa.String(32), nullable=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "jobs", md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("status", sa.String(32), nullable=False, index=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("method", sa.JSON, nullable=False),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("adapter", sa.JSON, nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("training_file", sa.String(64), nullable=False),
        sa.Column("validation_file", sa.String(64), nullable=True),
        sa.Column("suffix", sa.String(64), nullable=True),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("fine_tuned_model", sa.String(512), nullable=True),
        sa.Column("result_files", sa.JSON, nullable=False),
        sa.Column("trained_tokens", sa.BigInteger, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("trainer_error", sa.JSON, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=True),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
        sa.Column("estimated_finish", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_job_idempotency"),
    )
    sa.Table(
        "job_events", md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=True),
        sa.Index("ix_job_events_job_seq", "job_id", "seq"),
    )
    sa.Table(
        "checkpoints", md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("step_number", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("prefix", sa.String(512), nullable=False),
        sa.Column("fine_tuned_model_checkpoint", sa.String(512), nullable=False),
    )
    return md


def upgrade() -> None:
    # checkfirst=False: a table that is already there is an error, never silently kept
    schema().create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    schema().drop_all(op.get_bind(), checkfirst=False)
