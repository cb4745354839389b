"""The trainer's progress channel: ``POST /internal/v1/jobs/{id}/progress`` with the per-job token."""

from __future__ import annotations

from fastapi import Request

from tuneforge.contracts.progress import ProgressBatch
from tuneforge.service.api.deps import SessionDep, bearer_token
from tuneforge.service.api.routing import Router
from tuneforge.service.core.errors import NotFound, Unauthenticated
from tuneforge.service.core.security import secrets_match
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.job_requests import fine_tuned_model_name
from tuneforge.service.domain.progress import apply_events

router = Router(prefix="/internal/v1", tags=["internal"], include_in_schema=True)


@router.post("/jobs/{job_id}/progress", summary="Trainer progress reports (per-job token)")
def report_progress(job_id: str, batch: ProgressBatch, request: Request, session: SessionDep) -> dict[str, int]:
    token = bearer_token(request)
    job = SystemRepo(session).job(job_id)
    if job is None:
        raise NotFound("fine-tuning job", job_id)
    if not job.token_hash or not secrets_match(token, job.token_hash):
        raise Unauthenticated("Invalid job token.")
    applied = apply_events(session, job, batch.events, fine_tuned_model_name(job))
    return {"accepted": applied}
