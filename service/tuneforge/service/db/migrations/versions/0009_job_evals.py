"""Base-vs-tuned evals: the evals a job runs when it succeeds, and their runs.

Revision ID: 0009_job_evals
Revises: 0008_privacy
Create Date: 2026-12-02 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_job_evals"
down_revision = "0008_privacy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evals", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("evals_state", sa.String(length=16), nullable=True))
        # the poll for succeeded jobs whose evals wait reads the few pending rows, not every succeeded job
        batch_op.create_index(batch_op.f("ix_jobs_evals_state"), ["evals_state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_evals_state"))
        batch_op.drop_column("evals_state")
        batch_op.drop_column("evals")
