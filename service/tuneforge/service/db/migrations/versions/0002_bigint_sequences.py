"""64-bit integers where 32 bits overflow: ``jobs.last_seq`` and ``job_events.seq``.

- ``jobs.last_seq`` holds the trainer's progress sequence number, which is epoch milliseconds (about 1.8e12):
  PostgreSQL's INTEGER tops out at 2**31 - 1, so the first progress report of every job failed there.
- ``job_events.seq`` is the one autoincrement that grows with training rather than with users: every
  metrics report writes an event. It becomes BIGINT (and its sequence too) on PostgreSQL. SQLite's INTEGER
  is already 64-bit, and a primary key there must stay ``INTEGER`` to remain the rowid, so it keeps it.

The other integer columns stay 32-bit on purpose: ``pid`` (Linux caps pid_max at 2**22), ``attempts``,
``seed`` (the API bounds it to 2**31 - 1), ``rows`` and ``step_number`` (bounded by upload size and steps),
and the primary keys of tenants' keys, files, jobs and checkpoints (one row per thing a person made).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _serial_sequence(table: str, column: str) -> str | None:
    name = op.get_bind().scalar(sa.text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": column})
    return None if name is None else str(name)


def upgrade() -> None:
    # batch mode: SQLite cannot change a column's type in place, so alembic copies the table (in our transaction)
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("last_seq", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("job_events", "seq", existing_type=sa.Integer(), type_=sa.BigInteger(),
                        existing_nullable=False)
        sequence = _serial_sequence("job_events", "seq")
        if sequence:
            op.execute(f"ALTER SEQUENCE {sequence} AS BIGINT")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        sequence = _serial_sequence("job_events", "seq")
        if sequence:
            op.execute(f"ALTER SEQUENCE {sequence} AS INTEGER")
        op.alter_column("job_events", "seq", existing_type=sa.BigInteger(), type_=sa.Integer(),
                        existing_nullable=False)
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("last_seq", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
