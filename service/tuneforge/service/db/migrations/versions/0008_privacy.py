"""Privacy: the upload's PII scan on files, the safety report's state on jobs.

Revision ID: 0008_privacy
Revises: 0007_feedback
Create Date: 2026-12-01 22:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_privacy"
down_revision = "0007_feedback"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pii", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("safety_report", sa.String(length=16), nullable=True))
    # jobs that succeeded before the report existed get none (a first start must not run one for every old job)
    op.execute("UPDATE jobs SET safety_report = 'skipped' WHERE status = 'succeeded'")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("safety_report")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("pii")
