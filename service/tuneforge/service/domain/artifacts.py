"""A succeeded job's model files: listed from its manifest, each with a time-limited download link; then its
reports (``reports/…``, the safety report once it is made), stored beside the model.

In S3 the link is a presigned URL; with a local store it is the service's own route, signed with the link
secret (HMAC of the path and the expiry time), so the link itself is the credential, as with S3.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import IO
from urllib.parse import quote

from tuneforge.contracts.status import JobStatus
from tuneforge.contracts.store_layout import MANIFEST_NAME, job_model_prefix, job_prefix
from tuneforge.service.core.errors import Conflict, Forbidden, NotFound
from tuneforge.service.core.security import check_link, sign_link
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.schemas import ArtifactObject
from tuneforge.storage import ObjectNotFound, ObjectStore


def download_path(job_id: str, name: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/artifacts/{quote(name)}"


def export_download_path(job_id: str, fmt: str, name: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/exports/{fmt}/{quote(name)}"


def signed_files(store: ObjectStore, prefix: str, *, link_path: Callable[[str], str], base_url: str,
                 link_secret: str, expiry_seconds: int) -> list[ArtifactObject]:
    """The files of a published prefix (its manifest's, and the manifest itself), each with a time-limited link:
    presigned in S3, else the service's own route signed with the link secret."""
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
            path = link_path(entry["name"])
            url = f"{base_url}{path}?expires={expires_at}&signature={sign_link(link_secret, path, expires_at)}"
        out.append(ArtifactObject(name=entry["name"], bytes=entry["bytes"], sha256=entry["sha256"], url=url,
                                  expires_at=expires_at))
    return out


#: artifacts under this name prefix are the job's reports, not files of its model
REPORTS = "reports/"
REPORT_NAMES = ("reports/safety_report.json", "reports/safety_report.html")


def artifact_key(job_id: str, name: str) -> str:
    if name.startswith(REPORTS):
        return f"{job_prefix(job_id)}/{name}"
    return f"{job_model_prefix(job_id)}/{name}"


def _reports(store: ObjectStore, job_id: str, *, base_url: str, link_secret: str,
             expiry_seconds: int) -> list[ArtifactObject]:
    expires_at = int(time.time()) + expiry_seconds
    out = []
    for name in REPORT_NAMES:
        key = artifact_key(job_id, name)
        try:
            data = store.get_bytes(key)  # small (a few hundred KB at most): hashed for the listing
        except ObjectNotFound:
            continue
        url = store.presigned_url(key, expiry_seconds)
        if url is None:
            path = download_path(job_id, name)
            url = f"{base_url}{path}?expires={expires_at}&signature={sign_link(link_secret, path, expires_at)}"
        out.append(ArtifactObject(name=name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), url=url,
                                  expires_at=expires_at))
    return out


def list_artifacts(store: ObjectStore, job: Job, *, base_url: str, link_secret: str,
                   expiry_seconds: int) -> list[ArtifactObject]:
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"Job {job.id} has no artifacts: its status is {job.status}.", code="artifacts_not_ready")
    files = signed_files(store, job_model_prefix(job.id), link_path=lambda name: download_path(job.id, name),
                         base_url=base_url, link_secret=link_secret, expiry_seconds=expiry_seconds)
    return files + _reports(store, job.id, base_url=base_url, link_secret=link_secret, expiry_seconds=expiry_seconds)


def open_signed(store: ObjectStore, link_secret: str, path: str, key: str, expires: int,
                signature: str) -> tuple[IO[bytes], int]:
    """The object a signed link names, as (stream, size); the signature is the credential."""
    if not check_link(link_secret, path, expires, signature):
        raise Forbidden("This download link is invalid or has expired; list the files again for a new one.",
                        code="invalid_link")
    try:
        return store.open(key), store.stat(key).size
    except (ObjectNotFound, ValueError):
        raise NotFound("file", key.rsplit("/", 1)[-1]) from None


def open_artifact(store: ObjectStore, repo: SystemRepo, link_secret: str, job_id: str, name: str,
                  expires: int, signature: str) -> tuple[IO[bytes], int]:
    """The tuned model's file a signed link names, as (stream, size)."""
    path = download_path(job_id, name)
    if not check_link(link_secret, path, expires, signature):
        raise Forbidden("This download link is invalid or has expired; list the artifacts again for a new one.",
                        code="invalid_link")
    if repo.job(job_id) is None:
        raise NotFound("fine-tuning job", job_id)
    return open_signed(store, link_secret, path, artifact_key(job_id, name), expires, signature)
