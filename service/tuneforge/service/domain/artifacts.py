"""A succeeded job's model files: listed from its manifest, each with a time-limited download link.

In S3 the link is a presigned URL; with a local store it is the service's own route, signed with the link
secret (HMAC of the path and the expiry time), so the link itself is the credential, as with S3.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import IO
from urllib.parse import quote

from tuneforge.contracts.status import JobStatus
from tuneforge.contracts.store_layout import MANIFEST_NAME, job_model_prefix
from tuneforge.service.core.errors import Conflict, Forbidden, NotFound
from tuneforge.service.core.security import check_link, sign_link
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.schemas import ArtifactObject
from tuneforge.storage import ObjectNotFound, ObjectStore


def download_path(job_id: str, name: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/artifacts/{quote(name)}"


def list_artifacts(store: ObjectStore, job: Job, *, base_url: str, link_secret: str,
                   expiry_seconds: int) -> list[ArtifactObject]:
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"Job {job.id} has no artifacts: its status is {job.status}.", code="artifacts_not_ready")
    prefix = job_model_prefix(job.id)
    manifest_bytes = store.get_bytes(f"{prefix}/{MANIFEST_NAME}")
    manifest = json.loads(manifest_bytes)
    expires_at = int(time.time()) + expiry_seconds
    # the manifest itself is downloadable too, so a client can verify every file against it
    entries = [*manifest["files"], {"name": MANIFEST_NAME, "bytes": len(manifest_bytes),
                                    "sha256": hashlib.sha256(manifest_bytes).hexdigest()}]
    out = []
    for entry in entries:
        url = store.presigned_url(f"{prefix}/{entry['name']}", expiry_seconds)
        if url is None:
            path = download_path(job.id, entry["name"])
            url = f"{base_url}{path}?expires={expires_at}&signature={sign_link(link_secret, path, expires_at)}"
        out.append(ArtifactObject(name=entry["name"], bytes=entry["bytes"], sha256=entry["sha256"], url=url,
                                  expires_at=expires_at))
    return out


def open_artifact(store: ObjectStore, repo: SystemRepo, link_secret: str, job_id: str, name: str,
                  expires: int, signature: str) -> tuple[IO[bytes], int]:
    """The artifact a signed link names, as (stream, size); the signature is the credential."""
    if not check_link(link_secret, download_path(job_id, name), expires, signature):
        raise Forbidden("This download link is invalid or has expired; list the artifacts again for a new one.",
                        code="invalid_link")
    job = repo.job(job_id)
    if job is None:
        raise NotFound("fine-tuning job", job_id)
    key = f"{job_model_prefix(job.id)}/{name}"
    try:
        return store.open(key), store.stat(key).size
    except (ObjectNotFound, ValueError):
        raise NotFound("artifact", name) from None
