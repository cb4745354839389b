"""Hardening of the control plane: idempotency fingerprints, indexes for tenant-scoped listing, finished-job usage.

- ``jobs.idempotency_hash``: the sha256 of the create request that first used an ``Idempotency-Key``, so the same
  key with a different body is refused (409) instead of silently answered with the first job.
- ``ix_jobs_tenant_seq``, ``ix_files_tenant_seq``: a tenant's newest jobs and files, page by page, straight from an
  index (no sort of, or scan through, the tenant's history); ``ix_jobs_tenant_status``: a tenant's active or
  succeeded jobs (quota checks, ``/v1/models``).
- ``job_usage``: per tenant, terminal status and method, how many jobs ended so and their wall-clock and GPU
  seconds; maintained by the transition that ends a job, read by ``/metrics`` instead of every job ever run.
  Backfilled here from the jobs that have already ended.

Revision ID: 0003_hardening
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003_hardening"
down_revision = "0002"
branch_labels = None
depends_on = None

#: frozen copies of what the code knew when this revision was written (migrations never import the app)
_TERMINAL = ("succeeded", "failed", "cancelled")
_METHODS = ("supervised", "dpo", "reinforcement", "reward_model")


def _method(method: Any) -> str:
    kind = method.get("type", "supervised") if isinstance(method, dict) else "supervised"
    return kind if kind in _METHODS else "other"


def _gpus(resources: Any) -> int:
    if not isinstance(resources, dict):
        return 0
    gpus, nodes = resources.get("gpus") or 0, resources.get("nodes") or 1
    return int(gpus) * int(nodes) if isinstance(gpus, int) and isinstance(nodes, int) else 0


def upgrade() -> None:
    op.add_column("jobs", sa.Column("idempotency_hash", sa.String(64), nullable=True))
    op.create_index("ix_jobs_tenant_seq", "jobs", ["tenant_id", "seq"])
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant_id", "status"])
    op.create_index("ix_files_tenant_seq", "files", ["tenant_id", "seq"])
    usage = op.create_table(
        "job_usage",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(32), primary_key=True),
        sa.Column("method", sa.String(32), primary_key=True),
        sa.Column("jobs", sa.BigInteger, nullable=False),
        sa.Column("job_seconds", sa.BigInteger, nullable=False),
        sa.Column("gpu_seconds", sa.BigInteger, nullable=False),
    )
    jobs = sa.table("jobs", sa.column("tenant_id", sa.String), sa.column("status", sa.String),
                    sa.column("method", sa.JSON), sa.column("resources", sa.JSON),
                    sa.column("started_at", sa.BigInteger), sa.column("finished_at", sa.BigInteger))
    totals: dict[tuple[str, str, str], list[int]] = {}
    rows = op.get_bind().execute(sa.select(jobs).where(jobs.c.status.in_(_TERMINAL)))
    for tenant, status, method, resources, started_at, finished_at in rows:
        seconds = max(0, (finished_at or started_at or 0) - started_at) if started_at else 0
        acc = totals.setdefault((tenant, status, _method(method)), [0, 0, 0])
        acc[0] += 1
        acc[1] += seconds
        acc[2] += seconds * _gpus(resources)
    if totals:
        op.bulk_insert(usage, [{"tenant_id": t, "status": s, "method": m, "jobs": n, "job_seconds": sec,
                                "gpu_seconds": gpu} for (t, s, m), (n, sec, gpu) in totals.items()])


def downgrade() -> None:
    op.drop_table("job_usage")
    op.drop_index("ix_files_tenant_seq", "files")
    op.drop_index("ix_jobs_tenant_status", "jobs")
    op.drop_index("ix_jobs_tenant_seq", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("idempotency_hash")
