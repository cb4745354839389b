"""How a job counts in usage figures: its method's type and the GPUs it holds (shared by the transition that
records a finished job's usage and by the metrics that read it)."""

from __future__ import annotations

from typing import Any

from tuneforge.contracts.methods import METHOD_TYPES


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
