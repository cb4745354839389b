"""Live job events as Server-Sent Events.

``GET /v1/fine_tuning/jobs/{job_id}/events/stream`` (also reachable as ``GET …/events?stream=true``):
``text/event-stream`` where every job event is sent once, oldest first, as

    id: <event id>
    data: <the event object, as in GET …/events>

A client that reconnects with ``Last-Event-ID: <id>`` (browsers' EventSource do this by themselves) or
``?after=<id>`` gets the events after that one. Comment lines (``: keep-alive``) are sent every
``heartbeat`` seconds while nothing happens. When the job has ended and its last events are sent, one
``event: end`` with ``data: {"status": …}`` closes the stream.

Auth is the usual bearer API key; a job of another tenant is a 404, as everywhere.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from tuneforge.contracts.status import TERMINAL_STATUSES as TERMINAL
from tuneforge.service.api.deps import RepoDep, StateDep
from tuneforge.service.api.presenters import event_object
from tuneforge.service.api.state import AppState
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.lifecycle import notifier

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

#: how often the stream looks at the in-process notifier; the database is read only when it changed,
#: or every ``DB_POLL_SECONDS`` (events may come in through another replica)
WAKE_SECONDS = 0.2
DB_POLL_SECONDS = 2.0
BATCH = 500


def _frame(event_id: str | None, data: str, event: str | None = None) -> bytes:
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


class _Reader:
    """One stream's position; every read opens its own short session through the tenant repository."""

    def __init__(self, state: AppState, tenant_id: str, job_id: str, after_id: str | None) -> None:
        self.state = state
        self.tenant_id = tenant_id
        self.job_id = job_id
        self.after_id = after_id
        self.seq: int | None = None

    def read(self) -> tuple[str, list[bytes], bool]:
        """(job status, new event frames, whether more are waiting). The status is read *before* the
        events, so a terminal status means every event up to the end is in this batch or an earlier one."""
        with self.state.sessions() as session:
            repo = TenantRepo(session, self.tenant_id)
            job = repo.get_job(self.job_id)
            status = job.status
            if self.seq is None:
                # until the first event arrives, page by public id (the Last-Event-ID cursor, if any)
                rows, _ = repo.list_events(job, self.after_id, BATCH, newest_first=False)
            else:
                rows = repo.events_after_seq(job, self.seq, BATCH)
            frames = []
            for row in rows:
                self.seq = row.seq
                frames.append(_frame(row.id, event_object(row).model_dump_json()))
            return status, frames, len(rows) == BATCH


async def _stream(reader: _Reader, heartbeat: float, retry_ms: int, gauge: Any = None) -> AsyncIterator[bytes]:
    if gauge is not None:
        gauge.inc()
    try:
        async for chunk in _frames(reader, heartbeat, retry_ms):
            yield chunk
    finally:
        if gauge is not None:
            gauge.dec()


async def _frames(reader: _Reader, heartbeat: float, retry_ms: int) -> AsyncIterator[bytes]:
    yield f"retry: {retry_ms}\n\n".encode()
    seen_version = -1
    last_db = 0.0
    last_sent = time.monotonic()
    while True:
        version = notifier.version
        now = time.monotonic()
        if version != seen_version or now - last_db >= DB_POLL_SECONDS:
            seen_version, last_db = version, now
            status, frames, more = await run_in_threadpool(reader.read)
            for frame in frames:
                yield frame
            if frames:
                last_sent = time.monotonic()
            if more:
                seen_version = -1  # read the rest right away
                continue
            if status in TERMINAL:
                yield _frame(None, json.dumps({"status": status}), event="end")
                return
        if time.monotonic() - last_sent >= heartbeat:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(WAKE_SECONDS)


@router.get(
    "/{job_id}/events/stream",
    summary="Stream a job's events (Server-Sent Events)",
    description=(
        "Sends every event of the job once, oldest first, as `id: <event id>` + `data: <event JSON>`, then "
        "new ones as they happen; resumes after `Last-Event-ID` (or `after`); `: keep-alive` comments "
        "every `heartbeat` seconds; ends with `event: end` once the job has ended. Also reachable as "
        "`GET /v1/fine_tuning/jobs/{job_id}/events?stream=true`."
    ),
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_events(
    job_id: str,
    request: Request,
    repo: RepoDep,
    state: StateDep,
    last_event_id: Annotated[str | None, Header(max_length=128)] = None,
    after: Annotated[str | None, Query(max_length=128, description="resume after this event id")] = None,
    heartbeat: Annotated[float, Query(ge=0.5, le=300, description="seconds between keep-alive comments")] = 15.0,
) -> StreamingResponse:
    job = await run_in_threadpool(repo.get_job, job_id)  # 404 before the stream starts
    reader = _Reader(state, repo.tenant_id, job.id, last_event_id or after)
    return StreamingResponse(
        _stream(reader, heartbeat, retry_ms=2000, gauge=getattr(getattr(request.app.state, "metrics", None),
                                                                 "streams", None)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


_EVENTS_PATH = re.compile(r"^/v1/fine_tuning/jobs/([^/]+)/events/?$")


class EventsStreamAlias:
    """Routes ``GET …/events?stream=true`` to the stream route; the JSON list is untouched otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "GET":
            match = _EVENTS_PATH.match(scope.get("path", ""))
            if match:
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                if query.get("stream", ["false"])[-1].lower() in ("1", "true", "yes"):
                    path = f"/v1/fine_tuning/jobs/{match.group(1)}/events/stream"
                    # in place: outer middleware (metrics) reads the matched route from this same scope
                    scope["path"] = path
                    scope["raw_path"] = path.encode()
        await self.app(scope, receive, send)
