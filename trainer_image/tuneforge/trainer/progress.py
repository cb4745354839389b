"""Progress channel client: reports :class:`ProgressEvent` batches to the service.

Transport: ``POST {url}/internal/v1/jobs/{job_id}/progress`` with ``Authorization: Bearer {token}`` and a JSON
:class:`ProgressBatch`, stdlib ``urllib`` only. The service being down never stops training: events are
buffered and retried later with back-off; :meth:`ProgressReporter.close` makes a last, bounded attempt.

Without a progress channel (``spec.progress is None``) events are printed to stdout as JSON lines.

``seq`` increases strictly across restarts of the same job (it starts from the wall clock in milliseconds and
adds one per event), so the service can drop duplicates of retried batches by ``seq``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import IO, Any

from tuneforge.contracts.jobspec import ProgressChannel
from tuneforge.contracts.progress import ProgressBatch, ProgressEvent

MAX_BUFFER = 10_000
MAX_BATCH = 200
SEND_TIMEOUT_S = 3.0
MAX_BACKOFF_S = 30.0


class ProgressReporter:
    def __init__(
        self,
        job_id: str,
        channel: ProgressChannel | None,
        *,
        stream: IO[str] | None = None,
        log: IO[str] | None = None,
    ) -> None:
        self.job_id = job_id
        self.channel = channel
        self.stream = stream if stream is not None else sys.stdout
        self.log = log if log is not None else sys.stderr
        self._seq = int(time.time() * 1000)
        self._pending: list[ProgressEvent] = []
        self._lock = threading.RLock()
        self._next_try = 0.0
        self._backoff = 1.0
        self.sent = 0
        self.dropped = 0
        #: every metrics event's data, for ``metrics.jsonl``
        self.metrics_rows: list[dict[str, Any]] = []

    @property
    def endpoint(self) -> str | None:
        if self.channel is None:
            return None
        return f"{self.channel.url.rstrip('/')}/internal/v1/jobs/{self.job_id}/progress"

    # -- public API --

    def emit(self, kind: str, message: str = "", level: str = "info", **data: Any) -> ProgressEvent:
        with self._lock:
            self._seq += 1
            event = ProgressEvent.model_validate(
                {"kind": kind, "message": message, "level": level, "data": _jsonable(data), "seq": self._seq}
            )
            if kind == "metrics":
                self.metrics_rows.append(dict(event.data))
            if self.channel is None:
                self.stream.write(event.model_dump_json() + "\n")
                self.stream.flush()
                return event
            self._pending.append(event)
            if len(self._pending) > MAX_BUFFER:
                self._drop_oldest()
            self.flush()
            return event

    def status(self, phase: str, message: str = "", **data: Any) -> None:
        self.emit("status", message or phase, phase=phase, **data)

    def info(self, message: str) -> None:
        self.emit("log", message)

    def warn(self, message: str) -> None:
        self.emit("log", message, level="warn")

    def flush(self, force: bool = False) -> bool:
        """Send what is buffered; True when nothing is left. Skips while backing off unless ``force``."""
        with self._lock:
            if self.channel is None or not self._pending:
                return True
            if not force and time.monotonic() < self._next_try:
                return False
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                outcome = self._post(batch)
                if outcome == "retry":
                    self._next_try = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
                    return False
                if outcome == "rejected":
                    self.dropped += len(batch)
                else:
                    self.sent += len(batch)
                del self._pending[: len(batch)]
            self._backoff = 1.0
            self._next_try = 0.0
            return True

    def close(self, timeout_s: float = 20.0) -> None:
        """Last attempt to deliver buffered events, bounded by ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        delay = 0.5
        while not self.flush(force=True) and time.monotonic() + delay < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        if self._pending:
            print(f"tuneforge: could not deliver {len(self._pending)} progress events", file=self.log)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- internals --

    def _drop_oldest(self) -> None:
        # keep errors, results, checkpoints and status; thin out metrics and logs first
        for i, ev in enumerate(self._pending):
            if ev.kind in ("metrics", "log"):
                del self._pending[i]
                self.dropped += 1
                return
        del self._pending[0]
        self.dropped += 1

    def _post(self, batch: list[ProgressEvent]) -> str:
        assert self.channel is not None and self.endpoint is not None
        body = ProgressBatch(events=batch).model_dump_json().encode()
        request = urllib.request.Request(
            self.endpoint,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.channel.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as response:
                response.read()
            return "ok"
        except urllib.error.HTTPError as exc:
            if exc.code in (408, 425, 429) or exc.code >= 500:
                return "retry"
            print(f"tuneforge: progress channel rejected {len(batch)} events: HTTP {exc.code}", file=self.log)
            return "rejected"
        except (urllib.error.URLError, OSError, TimeoutError):
            return "retry"


def _jsonable(value: Any) -> Any:
    """Make metric values JSON-safe (numpy/torch scalars, NaN/inf → None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    item = getattr(value, "item", None)
    if callable(item):
        return _jsonable(item())
    return json.loads(json.dumps(value, default=str))
