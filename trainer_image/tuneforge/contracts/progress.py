"""Progress channel payloads: what the trainer reports to the service (see ARCHITECTURE.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ProgressKind = Literal["status", "metrics", "checkpoint", "log", "result", "error"]


class ProgressEvent(BaseModel):
    """One report. ``kind`` decides what the service does with ``data``:

    - ``status``: ``data.phase`` in {``starting``, ``running``, ``saving``}, ``data.total_steps``
    - ``metrics``: ``step``, ``train_loss``, ``valid_loss``, ``learning_rate``, ``tokens_per_second``,
      ``eta_seconds``, ``epoch``, ... (free-form numbers)
    - ``checkpoint``: ``step``, ``prefix`` (object-store prefix), ``metrics``
    - ``result``: ``trained_tokens``, ``model_prefix``, ``files``
    - ``error``: ``code``, ``message``
    - ``log``: a plain message
    """

    kind: ProgressKind
    message: str = ""
    level: Literal["info", "warn", "error"] = "info"
    data: dict[str, Any] = Field(default_factory=dict)
    #: monotonic per-job sequence number set by the trainer; lets the service drop duplicates on retry
    seq: int = 0


class ProgressBatch(BaseModel):
    events: list[ProgressEvent]
