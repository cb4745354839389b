"""``/v1/fine_tuning/jobs``: create, list, get, cancel, delete, events, checkpoints, artifacts."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Header, Query, Request
from sse_starlette import EventSourceResponse

from tuneforge.service.api.deps import PrincipalDep, RepoDep, StateDep, limits_of
from tuneforge.service.api.pagination import AfterQuery, LimitQuery, page
from tuneforge.service.api.presenters import checkpoint_object, event_object, job_object
from tuneforge.service.api.routes.events_stream import (
    STREAM_CONTENT,
    STREAM_DESCRIPTION,
    HeartbeatQuery,
    LastEventIdHeader,
    open_stream,
)
from tuneforge.service.api.routing import Router
from tuneforge.service.api.short_sessions import ShortRepoDep
from tuneforge.service.core.errors import InvalidRequest
from tuneforge.service.core.roles import Permission, requires
from tuneforge.service.domain import jobs as job_actions
from tuneforge.service.domain.artifacts import list_artifacts as artifact_list
from tuneforge.service.domain.job_evals import job_eval_report
from tuneforge.service.domain.job_requests import create_job, estimate_job
from tuneforge.service.schemas import DeletedObject, JobCreate, JobObject, ListObject

router = Router(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


@router.post("", response_model=JobObject, summary="Create a fine-tuning job")
def create(
    body: JobCreate,
    repo: RepoDep,
    principal: PrincipalDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JobObject:
    job = create_job(repo, state.store, state.settings, body, idempotency_key, limits_of(state, principal))
    if state.executor:
        state.executor.wake()
    return job_object(job)


@router.post("/estimate", summary="Estimate a job before creating it (tuneforge extension)",
             description="The same body as a create. Answers the tokens and steps it would train, the expected "
             "duration on the requested hardware (from a throughput table: measured where this deployment has a "
             "measurement, modelled otherwise, as `throughput_source` says), GPU-hours, the cost from the "
             "deployment's price table, and the organization's budget. Nothing is created.",
             openapi_extra=requires(Permission.READ))  # it changes nothing: a read-only key may ask
def estimate(body: JobCreate, repo: RepoDep, state: StateDep) -> dict[str, Any]:
    return estimate_job(repo, state.store, state.settings, body)


def _metadata_filter(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        wanted = json.loads(raw)
    except ValueError:
        wanted = None
    if not isinstance(wanted, dict) or not all(isinstance(v, str) for v in wanted.values()):
        raise InvalidRequest("'metadata' must be a JSON object of strings, e.g. {\"team\": \"search\"}",
                             param="metadata")
    return wanted


@router.get("", response_model=ListObject, summary="List fine-tuning jobs, newest first")
def list_jobs(
    repo: RepoDep,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
    metadata: Annotated[str | None, Query(max_length=4096, description="JSON object of metadata to match")] = None,
) -> ListObject:
    rows, has_more = repo.list_jobs(after, limit, _metadata_filter(metadata))
    return page(rows, has_more, job_object)


@router.get("/{job_id}", response_model=JobObject, summary="Retrieve a fine-tuning job")
def get_job(job_id: str, repo: RepoDep) -> JobObject:
    return job_object(repo.get_job(job_id))


@router.post("/{job_id}/cancel", response_model=JobObject, summary="Cancel a fine-tuning job")
def cancel(job_id: str, repo: RepoDep, state: StateDep) -> JobObject:
    return job_object(job_actions.cancel(repo, state.executor, job_id))


@router.post("/{job_id}/pause", response_model=JobObject, summary="Pause a fine-tuning job",
             description="A running trainer saves a checkpoint at the next step boundary and stops, freeing its GPU; "
             "a waiting job is not started. Pausing a paused job changes nothing; a finished job answers 409.")
def pause(job_id: str, repo: RepoDep, state: StateDep) -> JobObject:
    return job_object(job_actions.pause(repo, state.executor, job_id))


@router.post("/{job_id}/resume", response_model=JobObject, summary="Resume a paused fine-tuning job",
             description="The job is queued again and continues from its latest checkpoint, with the same steps "
             "and losses as a run that was never paused. Resuming a waiting or running job changes nothing; a "
             "finished one answers 409; a spent budget or a full active-job quota answers 429.")
def resume(job_id: str, repo: RepoDep, state: StateDep, principal: PrincipalDep) -> JobObject:
    return job_object(job_actions.resume(repo, state.executor, limits_of(state, principal), job_id))


@router.delete("/{job_id}", response_model=DeletedObject,
               summary="Delete a finished job: its objects (checkpoints, model, metrics) and its records")
def delete_job(job_id: str, repo: RepoDep, state: StateDep) -> DeletedObject:
    job_actions.delete(repo, state.store, state.executor, job_id)
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


@router.get("/{job_id}/eval_report", summary="The job's evals on its base and its tuned model, compared "
            "(tuneforge extension)",
            description="For each eval the job named at creation (`evals`): its run on the base model and on the "
            "tuned model (created when the job succeeds) and, once both have completed, per-criterion pass rates "
            "and mean scores side by side, the difference (tuned - base) with a 95% paired bootstrap interval, "
            "and the items where the two models differ most, with both outputs.")
def eval_report(job_id: str, repo: RepoDep) -> dict[str, Any]:
    return job_eval_report(repo, repo.get_job(job_id))


@router.get("/{job_id}/artifacts", response_model=ListObject,
            summary="The tuned model's files with time-limited download links")
def list_artifacts(job_id: str, repo: RepoDep, state: StateDep) -> ListObject:
    job = repo.get_job(job_id)
    links = artifact_list(state.store, job, base_url=state.settings.server.base_url, link_secret=state.link_secret,
                          expiry_seconds=state.settings.storage.link_expiry_seconds)
    return ListObject(data=links)
