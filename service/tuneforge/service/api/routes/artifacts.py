"""Signed, time-limited download links of a tuned model's files (the listing is a jobs route)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from fastapi import Query
from fastapi.responses import StreamingResponse

from tuneforge.service.api.deps import SessionDep, StateDep
from tuneforge.service.api.routing import Router
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.artifacts import REPORTS, export_download_path, open_artifact, open_signed
from tuneforge.service.domain.exports import export_prefix

router = Router(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


#: a report page is shown in the browser: no scripts, nothing loaded from elsewhere, only its own inline style
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff"}


def _streamed(stream: IO[bytes], size: int, media_type: str = "application/octet-stream",
              headers: dict[str, str] | None = None) -> StreamingResponse:
    """A stored file as the response body, 1 MiB at a time, closed when sent (or when the client leaves)."""

    def chunks() -> Iterator[bytes]:
        with stream:
            while chunk := stream.read(1 << 20):
                yield chunk

    return StreamingResponse(chunks(), media_type=media_type,
                             headers={"Content-Length": str(size), **(headers or {})})


@router.get("/{job_id}/artifacts/{name:path}", summary="Download one artifact through a signed link",
            response_class=StreamingResponse)
def download_artifact(
    job_id: str,
    name: str,
    state: StateDep,
    session: SessionDep,
    expires: int = Query(...),
    signature: str = Query(..., max_length=128),
) -> StreamingResponse:
    stream, size = open_artifact(state.store, SystemRepo(session), state.link_secret, job_id, name, expires,
                                 signature)
    if name.startswith(REPORTS) and name.endswith((".html", ".json")):
        html = name.endswith(".html")
        return _streamed(stream, size, "text/html; charset=utf-8" if html else "application/json",
                         PAGE_HEADERS if html else None)
    return _streamed(stream, size)


@router.get("/{job_id}/exports/{fmt}/{name:path}", summary="Download one file of an export through a signed link",
            response_class=StreamingResponse)
def download_export(job_id: str, fmt: str, name: str, state: StateDep, expires: int = Query(...),
                    signature: str = Query(..., max_length=128)) -> StreamingResponse:
    path = export_download_path(job_id, fmt, name)
    stream, size = open_signed(state.store, state.link_secret, path, f"{export_prefix(job_id, fmt)}/{name}", expires,
                               signature)
    return _streamed(stream, size)
