"""What every executor shares: the background control loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_until_stopped(
    tick: Callable[[], None], stop: threading.Event, wake: threading.Event, interval: float, name: str
) -> None:
    """An executor's control loop: ``tick`` now, then again after ``interval`` or as soon as ``wake`` is set."""
    while not stop.is_set():
        try:
            tick()
        except Exception:  # keep the loop alive; the next tick retries
            log.exception("%s tick failed", name)
        wake.wait(interval)
        wake.clear()
