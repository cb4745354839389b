"""How a job counts in usage figures.

Two measures, kept apart on purpose:
- for /metrics' finished-job counters (written by the transition that ends a job): its method's type and the GPUs
  it requested (0 for a CPU job), see :func:`method_type` and :func:`gpu_count`;
- for budgets: the GPU time each job spends while ``running``, added up when it leaves that status. Its devices are
  ``resources.gpus`` (at least one: a job asking for 0 gets the executor's default device, and a CPU-only local job
  counts as one device) times ``resources.nodes``, see :func:`devices`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import case, func

from tuneforge.contracts.methods import METHOD_TYPES
from tuneforge.contracts.status import JobStatus
from tuneforge.service.db.models import Job


def method_type(method: Any) -> str:
    """The job's ``method.type`` (``other`` for a stored value this code does not know)."""
    kind = method.get("type", "supervised") if isinstance(method, dict) else "supervised"
    return kind if kind in METHOD_TYPES else "other"


def gpu_count(resources: Any) -> int:
    """GPUs per node times nodes, as the job requested them (0 for a CPU job)."""
    if not isinstance(resources, dict):
        return 0
    gpus, nodes = resources.get("gpus") or 0, resources.get("nodes") or 1
    return int(gpus) * int(nodes) if isinstance(gpus, int) and isinstance(nodes, int) else 0


def devices(resources: dict[str, Any] | None) -> int:
    resources = resources or {}
    gpus = resources.get("gpus") or 0
    nodes = resources.get("nodes") or 1
    return max(1, int(gpus)) * max(1, int(nodes))


def running_time_fields(old: str, new: str, resources: dict[str, Any] | None,
                        at: float | None = None) -> dict[str, Any]:
    """The columns a status change writes for GPU time, in the transition's compare-and-set: entering
    ``running`` starts the clock; leaving it adds the run's device-seconds (computed by the database from the
    row's own ``running_since``, so a stale copy of the job cannot lose time) and drops the run's ETA."""
    at = time.time() if at is None else at
    if new == JobStatus.RUNNING:
        return {"running_since": func.coalesce(Job.running_since, at)}
    if old == JobStatus.RUNNING:
        # a clock that went back counts nothing, never negative time
        ran = case((Job.running_since < at, at - Job.running_since), else_=0.0)
        return {"gpu_seconds": func.coalesce(Job.gpu_seconds, 0.0) + ran * devices(resources),
                "running_since": None, "estimated_finish": None}
    return {}


def spent_seconds(job: Job, at: float | None = None) -> float:
    """GPU-seconds spent so far, the current run included."""
    at = time.time() if at is None else at
    running = max(0.0, at - job.running_since) * devices(job.resources) if job.running_since is not None else 0.0
    return float(job.gpu_seconds or 0.0) + running
