"""Stream an uploaded file into the object store while it is validated, without spooling it to disk.

The request body is read once. Every chunk of the file part goes to two consumers in their own threads:
the validator (line by line) and ``store.put_stream`` (through :class:`Pipe`). When the body ends, the
upload is only completed if the validator accepted the file; otherwise the pipe raises inside the store's
read, which aborts the write (temporary file removed, multipart upload aborted): nothing invalid is ever
visible under a key, and the service never holds the whole file in memory or on its disk.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_EOF = object()


class UploadAborted(Exception):
    """Raised inside the store's read when the upload must not be completed."""


class Pipe:
    """A blocking, bounded byte pipe whose ``read`` has file semantics (short only at the very end).

    At the end of the data the reader waits for :meth:`commit` (then sees EOF) or :meth:`abort` (then
    :class:`UploadAborted` is raised in it).
    """

    def __init__(self, max_chunks: int = 64) -> None:
        self._chunks: queue.Queue[Any] = queue.Queue(max_chunks)
        self._buffer = bytearray()
        self._ended = False
        self._decision: queue.Queue[bool] = queue.Queue(1)
        self._aborted = threading.Event()

    # writer side
    def write(self, data: bytes) -> None:
        while not self._aborted.is_set():
            try:
                self._chunks.put(data, timeout=0.5)
                return
            except queue.Full:
                continue

    def end(self) -> None:
        self.write(_EOF)  # type: ignore[arg-type]

    def commit(self) -> None:
        self._decision.put(True)

    def abort(self) -> None:
        self._aborted.set()
        with contextlib.suppress(queue.Full):
            self._decision.put_nowait(False)
        with contextlib.suppress(queue.Full):
            self._chunks.put_nowait(_EOF)

    # reader side (the store's thread)
    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buffer) < n) and not self._ended:
            if self._aborted.is_set():
                raise UploadAborted("upload aborted")
            item = self._chunks.get()
            if item is _EOF:
                self._ended = True
                if not self._decision.get():
                    raise UploadAborted("upload rejected")
            else:
                self._buffer += item
        if self._aborted.is_set():
            raise UploadAborted("upload aborted")
        if n < 0:
            n = len(self._buffer)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out


def iter_lines(chunks: queue.Queue[Any]) -> Iterator[bytes]:
    """Lines (with their ``\\n``) from a queue of byte chunks ending with the end marker."""
    pending = b""
    while True:
        item = chunks.get()
        if item is _EOF:
            break
        pending += item
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


class Worker(threading.Thread):
    """A thread that keeps its function's result or exception."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the request's thread
            self.error = exc


def line_queue(max_chunks: int = 64) -> queue.Queue[Any]:
    return queue.Queue(max_chunks)


def end_of_lines(chunks: queue.Queue[Any]) -> None:
    chunks.put(_EOF)


def end_of_lines_nowait(chunks: queue.Queue[Any]) -> None:
    """Unblock a validator on an aborted request (drop a chunk if needed to make room)."""
    try:
        chunks.put_nowait(_EOF)
    except queue.Full:
        with contextlib.suppress(queue.Empty):
            chunks.get_nowait()
        chunks.put_nowait(_EOF)
