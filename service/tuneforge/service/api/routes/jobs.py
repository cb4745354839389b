"""``/v1/fine_tuning/jobs``: create, list, get, cancel, delete, events, checkpoints, artifacts."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import delete
from sse_starlette import EventSourceResponse

from tuneforge.service.api.deps import RepoDep, StateDep
from tuneforge.service.api.pagination import AfterQuery, LimitQuery, page
from tuneforge.service.api.presenters import checkpoint_object, event_object, job_object
from tuneforge.service.api.routes.artifacts import artifact_list
from tuneforge.service.api.routes.events_stream import (
    STREAM_CONTENT,
    STREAM_DESCRIPTION,
    HeartbeatQuery,
    LastEventIdHeader,
    open_stream,
)
from tuneforge.service.api.short_sessions import ShortRepoDep
from tuneforge.service.core.errors import APIError
from tuneforge.service.db.models import Checkpoint, JobEvent
from tuneforge.service.domain.job_requests import create_job
from tuneforge.service.domain.lifecycle import TERMINAL, transition
from tuneforge.service.schemas import DeletedObject, JobCreate, JobObject, ListObject

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


@router.post("", response_model=JobObject, summary="Create a fine-tuning job")
def create(
    body: JobCreate,
    repo: RepoDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JobObject:
    job = create_job(repo, state.settings, body, idempotency_key)
    if state.executor:
        state.executor.wake()
    return job_object(job)


@router.get("", response_model=ListObject, summary="List fine-tuning jobs, newest first")
def list_jobs(
    repo: RepoDep,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
    metadata: Annotated[str | None, Query(description="JSON object of metadata to match")] = None,
) -> ListObject:
    wanted = None
    if metadata:
        try:
            wanted = json.loads(metadata)
        except ValueError:
            wanted = None
        if not isinstance(wanted, dict):
            raise APIError("'metadata' must be a JSON object, for example {\"team\": \"search\"}",
                           param="metadata", code="invalid_value")
    rows, has_more = repo.list_jobs(after, limit, wanted)
    return page(rows, has_more, job_object)


@router.get("/{job_id}", response_model=JobObject, summary="Retrieve a fine-tuning job")
def get_job(job_id: str, repo: RepoDep) -> JobObject:
    return job_object(repo.get_job(job_id))


@router.post("/{job_id}/cancel", response_model=JobObject, summary="Cancel a fine-tuning job")
def cancel(job_id: str, repo: RepoDep, state: StateDep) -> JobObject:
    job = repo.get_job(job_id)
    if job.status in TERMINAL:
        raise APIError(f"Job {job_id} has already {job.status} and cannot be cancelled.",
                       code="job_not_cancellable", status_code=409)
    transition(repo.session, job, "cancelled", "Fine-tuning job cancelled by the user")
    if state.executor:
        state.executor.cancel(job_id)
    return job_object(job)


@router.delete("/{job_id}", response_model=DeletedObject,
               summary="Delete a finished job: its objects (checkpoints, model, metrics) and its records")
def delete_job(job_id: str, repo: RepoDep, state: StateDep) -> DeletedObject:
    job = repo.get_job(job_id)
    if job.status not in TERMINAL:
        raise APIError(f"Job {job_id} is {job.status} and may still write its objects; cancel it and wait until "
                       "it has stopped before deleting it.", code="job_not_deletable", status_code=409)
    # e.g. a cancelled trainer saving a checkpoint on SIGTERM: deleting now would orphan what it writes
    running = state.executor.running_reason(job_id) if state.executor is not None else None
    if running:
        raise APIError(f"Job {job_id} is {job.status}, but {running}; try again in a few seconds.",
                       code="job_not_deletable", status_code=409)
    # objects first: if the store fails, the records stay and the delete can be repeated
    state.store.delete_prefix(f"jobs/{job.id}/")
    session = repo.session
    session.execute(delete(JobEvent).where(JobEvent.job_id == job.id))
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id))
    session.delete(job)
    session.commit()
    if state.executor is not None:
        state.executor.discard(job_id)
    return DeletedObject(id=job_id, object="fine_tuning.job")


@router.get(
    "/{job_id}/events",
    response_model=ListObject,
    summary="List a job's events (or stream them with stream=true)",
    description="A page of the job's events (`application/json`, newest first unless `order=asc`). With "
    "`stream=true`: the Server-Sent Events stream of `GET …/events/stream` (`text/event-stream`; `limit` and "
    "`order` do not apply, `after` resumes after that event). " + STREAM_DESCRIPTION,
    responses={200: {"content": STREAM_CONTENT}},
)
def list_events(
    job_id: str,
    request: Request,
    repo: ShortRepoDep,
    state: StateDep,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
    order: Annotated[str, Query(pattern="^(asc|desc)$", description="desc (OpenAI's default) or asc")] = "desc",
    stream: Annotated[bool, Query(description="answer with the live event stream (text/event-stream)")] = False,
    last_event_id: LastEventIdHeader = None,
    heartbeat: HeartbeatQuery = 15.0,
) -> ListObject | EventSourceResponse:
    if stream:
        return open_stream(request, state, repo, job_id, last_event_id or after, heartbeat)
    job = repo.get_job(job_id)
    rows, has_more = repo.list_events(job, after, limit, newest_first=order == "desc")
    return page(rows, has_more, event_object)


@router.get("/{job_id}/checkpoints", response_model=ListObject, summary="List a job's checkpoints")
def list_checkpoints(job_id: str, repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 10) -> ListObject:
    job = repo.get_job(job_id)
    rows, has_more = repo.list_checkpoints(job, after, limit)
    return page(rows, has_more, checkpoint_object)


@router.get("/{job_id}/artifacts", response_model=ListObject,
            summary="The tuned model's files with time-limited download links")
def list_artifacts(job_id: str, repo: RepoDep, state: StateDep) -> ListObject:
    job = repo.get_job(job_id)
    return ListObject(data=artifact_list(state, job))
