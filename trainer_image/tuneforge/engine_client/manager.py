"""Engines on demand: one process per base model, started on first use, restarted after a crash, stopped idle.

The service asks for an answer on a base model, with or without an adapter::

    manager = EngineManager(spec_for)               # spec_for(base) -> EngineSpec
    reply = await manager.request(base, "/v1/chat/completions", body, adapter=Adapter(name, directory))
    stream = await manager.stream(base, "/v1/chat/completions", body, adapter=None)
    async for event in stream: ...                   # SSE bytes, OpenAI's chunks, [DONE] last

The first request for a base model starts its engine and waits for it (concurrent first requests share one
start). An adapter is loaded into the engine on its first use there (engines restarted after a crash reload
theirs on demand). ``body["model"]`` is set to the adapter's name, or the engine's served name for the base
model. A crash mid-stream ends that stream with an error event; the next request finds the process gone and
starts a fresh engine. :meth:`EngineManager.reap_idle` (run it periodically, or :meth:`run_reaper`) stops
engines without a request for ``idle_seconds``.

Events (``started``, ``stopped``, ``crashed``, ``adapter_loaded``, ``start_failed``) go to ``on_event`` for the
service's metrics and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from tuneforge.engine_client.client import (
    EngineClient,
    EngineHTTPError,
    EngineStream,
    EngineUnavailable,
    Reply,
    error_body,
)
from tuneforge.engine_client.process import EngineProcess, EngineSpec, EngineStartError

log = logging.getLogger("tuneforge.engine_client")
T = TypeVar("T")
#: how long a refused request waits for its engine to finish exiting before it goes to a fresh one
RESTART_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter on local disk, served under ``name`` (use the public model id: answers carry it)."""

    name: str
    path: str


@dataclass
class RunningEngine:
    spec: EngineSpec
    process: EngineProcess
    client: EngineClient
    adapters: set[str] = field(default_factory=set)
    active: int = 0  # requests in flight
    last_used: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.alive()


class EngineManager:
    def __init__(self, spec_for: Callable[[str], EngineSpec], *, idle_seconds: float | None = 900.0,
                 on_event: Callable[[str, str, dict[str, Any]], None] | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.spec_for = spec_for
        self.idle_seconds = idle_seconds
        self.on_event = on_event or (lambda kind, base, data: None)
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), trust_env=False)
        self.engines: dict[str, RunningEngine] = {}
        #: engines launched and not ready yet: stopped with the rest when the manager closes
        self.starting: dict[str, EngineProcess] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._adapter_locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _emit(self, kind: str, base: str, **data: Any) -> None:
        try:
            self.on_event(kind, base, data)
        except Exception:  # a metrics hook must not break serving
            log.exception("engine event hook failed")

    # -- lifecycle --

    async def engine(self, base: str) -> RunningEngine:
        """The running engine for ``base``, started (and waited for) if there is none or it died."""
        current = self.engines.get(base)
        if current is not None and current.alive():
            return current
        lock = self._locks.setdefault(base, asyncio.Lock())
        async with lock:
            current = self.engines.get(base)
            if current is not None and current.alive():
                return current
            if current is not None:
                self._emit("crashed", base, pid=current.process.pid, returncode=current.process.returncode(),
                           log_tail=current.process.log_tail(800))
                await current.process.stop()
                del self.engines[base]
            spec = self.spec_for(base)
            process = EngineProcess(spec)
            started = time.monotonic()
            self.starting[base] = process
            try:
                await process.start(self.http)
            except EngineStartError as exc:
                self._emit("start_failed", base, error=str(exc))
                raise
            finally:
                self.starting.pop(base, None)
            running = RunningEngine(spec, process, EngineClient(process.base_url, self.http))
            self.engines[base] = running
            self._emit("started", base, engine=spec.kind, pid=process.pid, seconds=time.monotonic() - started)
            return running

    async def stop(self, base: str) -> None:
        running = self.engines.pop(base, None)
        if running is not None:
            await running.process.stop()
            self._emit("stopped", base, pid=running.process.pid, reason="requested")

    async def reap_idle(self) -> list[str]:
        """Stop engines idle for longer than ``idle_seconds``; returns their base models."""
        if self.idle_seconds is None:
            return []
        now = time.monotonic()
        stopped = []
        for base, running in list(self.engines.items()):
            if running.active == 0 and now - running.last_used > self.idle_seconds:
                self.engines.pop(base, None)
                await running.process.stop()
                self._emit("stopped", base, pid=running.process.pid, reason="idle")
                stopped.append(base)
        return stopped

    async def run_reaper(self, every: float = 30.0) -> None:
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await self.reap_idle()

    async def aclose(self) -> None:
        for process in list(self.starting.values()):
            await process.stop()
        for base in list(self.engines):
            await self.stop(base)
        await self.http.aclose()

    # -- requests --

    async def _prepare(self, base: str, body: dict[str, Any], adapter: Adapter | None) -> tuple[RunningEngine,
                                                                                                 dict[str, Any]]:
        running = await self.engine(base)
        if adapter is not None and adapter.name not in running.adapters:
            lock = self._adapter_locks.setdefault((base, adapter.name), asyncio.Lock())
            async with lock:
                if adapter.name not in running.adapters:
                    loaded = await running.client.load_adapter(adapter.name, adapter.path)
                    running.adapters.add(adapter.name)
                    if loaded:
                        self._emit("adapter_loaded", base, adapter=adapter.name)
        return running, {**body, "model": adapter.name if adapter else running.spec.served_name}

    def _unavailable(self, base: str, running: RunningEngine | None, exc: Exception) -> Reply:
        code = running.process.returncode() if running else None
        return Reply(503, error_body(f"the engine for {base} is unavailable ({exc}; exit code {code}); the next "
                                     "request starts it again", code="engine_unavailable"))

    async def _has_exited(self, running: RunningEngine | None) -> bool:
        """After a failed send: True once the engine has exited (a killed engine takes a moment to), so the
        request, which it never answered, can go to a fresh one."""
        if running is None:
            return False
        deadline = time.monotonic() + RESTART_WAIT_SECONDS
        while running.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not running.alive()

    async def _with_retry(self, base: str, adapter: Adapter | None, body: dict[str, Any],
                          send: Callable[[RunningEngine, dict[str, Any]], Awaitable[T]]) -> T | Reply:
        """Send through the base's engine; errors become a :class:`Reply`. A request that failed because its engine
        had died is retried once on a fresh engine."""
        for attempt in (1, 2):
            running: RunningEngine | None = None
            try:
                running, sent = await self._prepare(base, body, adapter)
                return await send(running, sent)
            except EngineHTTPError as exc:
                return Reply(exc.status, exc.body)
            except EngineStartError as exc:
                return Reply(503, error_body(str(exc), code="engine_start_failed"))
            except EngineUnavailable as exc:
                # a refused connection, or a kept-alive connection to an engine that has just been killed (a read
                # error before any answer): once the engine is seen to have exited, the request (which it never
                # answered) goes once to a fresh one
                if attempt == 2 or not await self._has_exited(running):
                    return self._unavailable(base, running, exc)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns

    async def request(self, base: str, path: str, body: dict[str, Any], adapter: Adapter | None = None,
                      timeout: float | None = None) -> Reply:
        """A non-streaming answer: status and OpenAI-shaped body (the answer, or an error envelope)."""

        async def send(running: RunningEngine, sent: dict[str, Any]) -> Reply:
            running.active += 1
            try:
                return await running.client.request(path, {**sent, "stream": False}, timeout)
            finally:
                running.active -= 1
                running.last_used = time.monotonic()

        return await self._with_retry(base, adapter, body, send)

    async def stream(self, base: str, path: str, body: dict[str, Any],
                     adapter: Adapter | None = None) -> EngineStream | Reply:
        """A streaming answer, or (before any chunk) a :class:`Reply` with the error status and envelope."""

        async def send(running: RunningEngine, sent: dict[str, Any]) -> EngineStream:
            def cut(exc: Exception) -> None:
                self._emit("stream_cut", base, pid=running.process.pid, error=str(exc))

            return _Tracked(await running.client.stream(path, sent, on_cut=cut), running)

        return await self._with_retry(base, adapter, body, send)


class _Tracked(EngineStream):
    """Counts the stream as in flight (for idle stops) until it is consumed or closed."""

    def __init__(self, inner: EngineStream, running: RunningEngine) -> None:
        super().__init__(inner.response, inner.on_cut)
        self.running = running
        running.active += 1
        self._open = True

    def _done(self) -> None:
        if self._open:
            self._open = False
            self.running.active -= 1
            self.running.last_used = time.monotonic()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for event in super().__aiter__():
                yield event
        finally:
            self._done()

    async def aclose(self) -> None:
        self._done()
        await super().aclose()
