"""GPU time: what each job spends while ``running``, added up when it leaves that status (budgets read it).

A job's devices are ``resources.gpus`` (at least one: a job asking for 0 gets the executor's default device,
and a CPU-only local job counts as one device) times ``resources.nodes``.
"""

from __future__ import annotations

import time
from typing import Any

from tuneforge.contracts.status import JobStatus
from tuneforge.service.db.models import Job


def devices(resources: dict[str, Any] | None) -> int:
    resources = resources or {}
    gpus = resources.get("gpus") or 0
    nodes = resources.get("nodes") or 1
    return max(1, int(gpus)) * max(1, int(nodes))


def on_status_change(job: Job, old: str, new: str, at: float | None = None) -> None:
    """Called by :func:`lifecycle.transition` inside the status change's transaction."""
    at = time.time() if at is None else at
    if new == JobStatus.RUNNING and job.running_since is None:
        job.running_since = at
    elif old == JobStatus.RUNNING and new != JobStatus.RUNNING:
        if job.running_since is not None:
            job.gpu_seconds = float(job.gpu_seconds or 0.0) + max(0.0, at - job.running_since) * devices(job.resources)
        job.running_since = None
        # the trainer's ETA was for the run that just stopped; the next run reports its own
        job.estimated_finish = None


def spent_seconds(job: Job, at: float | None = None) -> float:
    """GPU-seconds spent so far, the current run included."""
    at = time.time() if at is None else at
    running = max(0.0, at - job.running_since) * devices(job.resources) if job.running_since is not None else 0.0
    return float(job.gpu_seconds or 0.0) + running
