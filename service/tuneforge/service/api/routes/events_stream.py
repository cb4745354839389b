"""Live job events as Server-Sent Events (sse-starlette's ``EventSourceResponse``).

``GET /v1/fine_tuning/jobs/{job_id}/events/stream``, or the events list itself with ``?stream=true``:
``text/event-stream`` where every job event is sent once, oldest first, as

    id: <event id>
    data: <the event object, as in GET …/events>

A client that reconnects with ``Last-Event-ID: <id>`` (browsers' EventSource do this by themselves) or
``?after=<id>`` gets the events after that one. Comment lines (``: keep-alive``) are sent every
``heartbeat`` seconds. When the job has ended and its last events are sent, one ``event: end`` with
``data: {"status": …}`` closes the stream.

Auth is the usual bearer API key; a job of another tenant is a 404, as everywhere. A stream holds no
database connection while it waits: the key and the job are checked in a session that is closed before the
response starts (``api.short_sessions.ShortRepoDep``), and every later read opens its own short session. At
most ``server.stream_db_readers`` of those reads run at once (``AppState.stream_reads``), and each stream's
periodic re-read is jittered, so a thousand streams opened together never hold the pool's connections together.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import Header, Query, Request
from prometheus_client import Gauge
from sse_starlette import EventSourceResponse, ServerSentEvent

from tuneforge.contracts.status import TERMINAL_STATUSES
from tuneforge.service.api.deps import StateDep
from tuneforge.service.api.presenters import event_object
from tuneforge.service.api.routing import Router
from tuneforge.service.api.short_sessions import ShortRepoDep
from tuneforge.service.api.state import AppState
from tuneforge.service.db.repo import SystemRepo, TenantRepo
from tuneforge.service.domain.lifecycle import notifier

router = Router(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

#: how often the stream looks at the in-process notifier; the database is read only when it changed (on
#: PostgreSQL every replica's notifier hears of every event: ``db.event_channel``), or every
#: ``settings.server.events_poll_seconds`` in case a notification was lost
WAKE_SECONDS = 0.2
BATCH = 500
#: the reconnection delay suggested to clients (the SSE ``retry:`` field), in milliseconds
RETRY_MS = 2000
#: one line ending for every frame (sse-starlette's default is CRLF); the /ui page's reader accepts both
SEP = "\n"

LastEventIdHeader = Annotated[str | None, Header(
    max_length=128, description="Stream only: resume after this event id (sent by reconnecting clients)")]
HeartbeatQuery = Annotated[float, Query(
    ge=0.5, le=300, description="Stream only: seconds between `: keep-alive` comments")]

STREAM_DESCRIPTION = (
    "Sends every event of the job once, oldest first, as `id: <event id>` + `data: <event JSON>`, then "
    "new ones as they happen; resumes after `Last-Event-ID` (or `after`); `: keep-alive` comments every "
    "`heartbeat` seconds; ends with `event: end` + `data: {\"status\": …}` once the job has ended."
)
#: the stream's entry in the OpenAPI schema's responses
STREAM_CONTENT: dict[str, Any] = {
    "text/event-stream": {
        "schema": {"type": "string", "description": "Server-Sent Events; each `data:` is an event object"},
        "example": 'id: ftevent-abc\ndata: {"object": "fine_tuning.job.event", "id": "ftevent-abc", …}\n\n'
                   'event: end\ndata: {"status": "succeeded"}\n\n',
    },
}


class KeyRevoked(Exception):
    """The stream's API key was revoked while it was open."""


class _Reader:
    """One stream's position; every read opens its own short session through the tenant repository."""

    def __init__(self, state: AppState, tenant_id: str, job_id: str, after_id: str | None,
                 key_id: str | None = None) -> None:
        self.state = state
        #: the stream ends when this key is revoked (checked on every read: a revocation applies at once)
        self.key_id = key_id
        self.poll_seconds = state.settings.server.events_poll_seconds
        self.tenant_id = tenant_id
        self.job_id = job_id
        self.after_id = after_id
        self.seq: int | None = None

    def read(self) -> tuple[str, list[ServerSentEvent], bool]:
        """(job status, new events, whether more are waiting). The status is read *before* the events, so
        a terminal status means every event up to the end is in this batch or an earlier one."""
        with self.state.sessions() as session:
            if self.key_id is not None and not SystemRepo(session).key_is_active(self.key_id):
                raise KeyRevoked
            repo = TenantRepo(session, self.tenant_id)
            job = repo.get_job(self.job_id)
            status = job.status
            if self.seq is None:
                # until the first event arrives, page by public id (the Last-Event-ID cursor, if any)
                rows, _ = repo.list_events(job, self.after_id, BATCH, newest_first=False)
            else:
                rows = repo.events_after_seq(job, self.seq, BATCH)
            events = []
            for row in rows:
                self.seq = row.seq
                events.append(ServerSentEvent(event_object(row).model_dump_json(), id=row.id, sep=SEP))
            return status, events, len(rows) == BATCH


async def _events(reader: _Reader, gauge: Gauge) -> AsyncIterator[ServerSentEvent]:
    gauge.inc()
    try:
        yield ServerSentEvent(retry=RETRY_MS, sep=SEP)
        seen_version: tuple[int, int] | None = None
        last_db = 0.0
        poll_seconds = reader.poll_seconds
        while True:
            version = notifier.version(reader.job_id)
            now = time.monotonic()
            if version != seen_version or now - last_db >= poll_seconds:
                seen_version, last_db = version, now
                # streams opened together drift apart instead of re-reading in lockstep
                poll_seconds = reader.poll_seconds * random.uniform(0.75, 1.25)
                try:
                    status, events, more = await anyio.to_thread.run_sync(
                        reader.read, limiter=reader.state.stream_reads)
                except KeyRevoked:
                    yield ServerSentEvent(json.dumps({"error": "the API key was revoked"}), event="error", sep=SEP)
                    return
                for event in events:
                    yield event
                if more:
                    seen_version = None  # read the rest right away
                    continue
                if status in TERMINAL_STATUSES:
                    yield ServerSentEvent(json.dumps({"status": status}), event="end", sep=SEP)
                    return
            await asyncio.sleep(WAKE_SECONDS)
    finally:
        gauge.dec()


def _keep_alive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive", sep=SEP)


def open_stream(request: Request, state: AppState, repo: TenantRepo, job_id: str, after_id: str | None,
                heartbeat: float) -> EventSourceResponse:
    """The job's event stream; a missing or foreign job is a 404 before the stream starts."""
    job = repo.get_job(job_id)
    principal = getattr(request.state, "principal", None)
    reader = _Reader(state, repo.tenant_id, job.id, after_id, getattr(principal, "key_id", None))
    return EventSourceResponse(
        _events(reader, state.metrics.streams), ping=heartbeat, ping_message_factory=_keep_alive, sep=SEP,
        headers={"Cache-Control": "no-cache"},
    )


@router.get(
    "/{job_id}/events/stream",
    summary="Stream a job's events (Server-Sent Events)",
    description=STREAM_DESCRIPTION + " The same stream as `GET /v1/fine_tuning/jobs/{job_id}/events?stream=true`.",
    response_class=EventSourceResponse,
    responses={200: {"content": STREAM_CONTENT}},
)
def stream_events(
    job_id: str,
    request: Request,
    repo: ShortRepoDep,
    state: StateDep,
    last_event_id: LastEventIdHeader = None,
    after: Annotated[str | None, Query(max_length=128, description="resume after this event id")] = None,
    heartbeat: HeartbeatQuery = 15.0,
) -> EventSourceResponse:
    return open_stream(request, state, repo, job_id, last_event_id or after, heartbeat)
