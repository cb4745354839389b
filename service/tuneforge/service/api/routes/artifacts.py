"""Tuned-model artifacts: listing from the manifest, and signed, time-limited download links."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from tuneforge.service.api.deps import SessionDep, StateDep
from tuneforge.service.core.errors import APIError, NotFound
from tuneforge.service.core.security import check_link, sign_link
from tuneforge.service.core.state import AppState
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.finish import model_prefix
from tuneforge.service.schemas import ArtifactObject
from tuneforge.storage import MANIFEST_NAME, ObjectNotFound

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

def link_secret(state: AppState) -> str:
    if not state.settings.secret_key:
        path = state.settings.home / "link_secret"
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        state.settings.secret_key = path.read_text().strip()
    return state.settings.secret_key

def _download_path(job_id: str, name: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/artifacts/{quote(name)}"

def artifact_list(state: AppState, job: Job) -> list[ArtifactObject]:
    if job.status != "succeeded":
        raise APIError(f"Job {job.id} has no artifacts: its status is {job.status}.", code="artifacts_not_ready",
                       status_code=409)
    prefix = model_prefix(job)
    manifest = json.loads(state.store.get_bytes(f"{prefix}/{MANIFEST_NAME}"))
    expiry = state.settings.storage.link_expiry_seconds
    expires_at = int(time.time()) + expiry
    entries = [*manifest["files"]]
    # the manifest itself is downloadable too, so a client can verify every file against it
    manifest_info = state.store.stat(f"{prefix}/{MANIFEST_NAME}")

    entries.append({"name": MANIFEST_NAME, "bytes": manifest_info.size,
                    "sha256": hashlib.sha256(state.store.get_bytes(f"{prefix}/{MANIFEST_NAME}")).hexdigest()})
    out = []
    for entry in entries:
        url = state.store.presigned_url(f"{prefix}/{entry['name']}", expiry)
        if url is None:
            path = _download_path(job.id, entry["name"])
            sig = sign_link(link_secret(state), path, expires_at)
            url = f"{state.settings.server.base_url}{path}?expires={expires_at}&signature={sig}"
        out.append(ArtifactObject(name=entry["name"], bytes=entry["bytes"], sha256=entry["sha256"], url=url,
                                  expires_at=expires_at))
    return out

@router.get("/{job_id}/artifacts/{name:path}", summary="Download one artifact through a signed link",
            response_class=StreamingResponse)
def download_artifact(
    job_id: str,
    name: str,
    state: StateDep,
    session: SessionDep,
    expires: int = Query(...),
    signature: str = Query(...),
) -> StreamingResponse:
    # the signature is the credential (like a presigned S3 URL): no API key needed
    if not check_link(link_secret(state), _download_path(job_id, name), expires, signature):
        raise APIError("This download link is invalid or has expired; list the artifacts again for a new one.",
                       code="invalid_link", status_code=403)
    job = SystemRepo(session).job(job_id)
    if job is None:
        raise NotFound("fine-tuning job", job_id)
    key = f"{model_prefix(job)}/{name}"
    try:
        info = state.store.stat(key)
        stream = state.store.open(key)
    except (ObjectNotFound, ValueError):
        raise NotFound("artifact", name) from None

    def chunks() -> Iterator[bytes]:
        with stream:
            while chunk := stream.read(1 << 20):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Length": str(info.size)})
