"""Feedback campaigns' events: sampling started, its progress and end, cancel, fully labelled.

Revision ID: 0011_campaign_events
Revises: 0010_feedback_rounds
Create Date: 2026-12-02 03:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_campaign_events"
down_revision = "0010_feedback_rounds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["feedback_campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_feedback_events_campaign_seq", "feedback_events", ["campaign_id", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_feedback_events_campaign_seq", table_name="feedback_events")
    op.drop_table("feedback_events")
