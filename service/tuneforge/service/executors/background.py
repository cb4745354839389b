"""The two shapes of background work in the service process, written once.

- :class:`PollLoop`: one task that looks at the database every few seconds (or at once when woken) and does what
  it finds: safety reports of succeeded jobs, a succeeded job's evals, rounds of the feedback loop. What it waits
  for is in the database, so a restart or another replica picks it up.
- :class:`KeyedTasks`: one task per object (an eval run, a campaign's sampling), submitted from routes' worker
  threads, stopped on cancel, and one semaphore that bounds their completion requests together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

log = logging.getLogger(__name__)


class PollLoop(ABC):
    """Calls :meth:`tick` every ``poll_seconds`` and whenever woken; a failing tick is logged, never fatal."""

    #: the task's name, in logs and in asyncio's task list
    name = "poll"

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @abstractmethod
    async def tick(self) -> None:
        """One look at the database and what it asks for."""

    def start_polling(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._forever(), name=self.name)

    async def stop_polling(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake_threadsafe(self) -> None:
        """Look now instead of at the next poll."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _forever(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a lost database must not end the loop for everything after it
                log.exception("%s: a poll failed", self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()


class KeyedTasks(ABC):
    """At most one task per key; :meth:`run` is the work, ``limit`` bounds their requests together."""

    def __init__(self, concurrency: int, name: str) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._concurrency, self._name = concurrency, name
        self._limit: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @abstractmethod
    async def run(self, key: str) -> None:
        """The work of one key (exceptions other than a cancel are the subclass's to record)."""

    @property
    def limit(self) -> asyncio.Semaphore:
        if self._limit is None:  # made inside the service's event loop
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._limit

    def attach(self) -> None:
        """Called from the service's event loop at start-up: where the threadsafe calls land."""
        self._loop = asyncio.get_running_loop()

    async def aclose(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, key: str) -> None:
        if key in self.tasks:
            return
        task = asyncio.get_running_loop().create_task(self.run(key), name=f"{self._name}-{key}")
        self.tasks[key] = task
        task.add_done_callback(lambda _: self.tasks.pop(key, None))

    def stop(self, key: str) -> None:
        """Stop a key's task (after its row was marked canceled or deleted)."""
        task = self.tasks.get(key)
        if task is not None:
            task.cancel()

    def submit_threadsafe(self, key: str) -> None:
        """:meth:`submit` from a route's worker thread."""
        if self._loop is None:
            raise RuntimeError(f"the {self._name} runner has not been started")
        self._loop.call_soon_threadsafe(self.submit, key)

    def stop_threadsafe(self, key: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.stop, key)

    async def wait(self, key: str) -> None:
        task = self.tasks.get(key)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
