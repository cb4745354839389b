"""Rounds of the feedback loop: a campaign's export, reward model, reinforcement, evals and next campaign.

Revision ID: 0010_feedback_rounds
Revises: 0009_job_evals
Create Date: 2026-12-02 02:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_feedback_rounds"
down_revision = "0009_job_evals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_rounds",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("export_file_id", sa.String(length=64), nullable=False),
        sa.Column("reward_model_job_id", sa.String(length=64), nullable=False),
        sa.Column("reinforcement_job_id", sa.String(length=64), nullable=True),
        sa.Column("next_campaign_id", sa.String(length=64), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["feedback_campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index(op.f("ix_feedback_rounds_campaign_id"), "feedback_rounds", ["campaign_id"], unique=False)
    op.create_index(op.f("ix_feedback_rounds_status"), "feedback_rounds", ["status"], unique=False)
    op.create_index(op.f("ix_feedback_rounds_tenant_id"), "feedback_rounds", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_feedback_rounds_tenant_id"), table_name="feedback_rounds")
    op.drop_index(op.f("ix_feedback_rounds_status"), table_name="feedback_rounds")
    op.drop_index(op.f("ix_feedback_rounds_campaign_id"), table_name="feedback_rounds")
    op.drop_table("feedback_rounds")
