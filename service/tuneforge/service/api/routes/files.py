"""``/v1/files``: upload (validated line by line), list, get, content, delete."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Form, UploadFile
from fastapi.responses import StreamingResponse

from tuneforge.service.api.deps import RepoDep, StateDep
from tuneforge.service.api.pagination import AfterQuery, LimitQuery, page
from tuneforge.service.api.presenters import file_object
from tuneforge.service.core.errors import APIError
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import File, now
from tuneforge.service.domain.upload_validation import token_counter, validate_upload
from tuneforge.service.schemas import DeletedObject, FileObject, ListObject

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)


def _lines_and_digest(fh: BinaryIO, digest: hashlib._Hash, limit: int) -> Iterator[bytes]:
    size = 0
    for line in fh:
        size += len(line)
        if size > limit:
            raise APIError(f"File is larger than the limit of {limit} bytes.", param="file", code="file_too_large",
                           status_code=413)
        digest.update(line)
        yield line


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


@router.post("", response_model=FileObject, summary="Upload a training file (JSONL), validated line by line")
def upload_file(
    repo: RepoDep,
    state: StateDep,
    file: UploadFile,
    purpose: Annotated[str, Form()] = "fine-tune",
) -> FileObject:
    if purpose not in PURPOSES:
        raise APIError(f"Invalid purpose {purpose!r}: expected one of {', '.join(PURPOSES)}.", param="purpose")
    filename = file.filename or "upload.jsonl"
    settings = state.settings
    digest = hashlib.sha256()
    report = validate_upload(
        _lines_and_digest(file.file, digest, settings.limits.max_upload_bytes),
        max_tokens=settings.limits.max_example_tokens,
        max_errors=settings.limits.max_reported_errors,
        count_tokens=token_counter(settings.executor.model_cache, settings.default_base_model),
    )
    if not report.ok:
        shown = "; ".join(str(e) for e in report.errors[:5])
        more = len(report.errors) - 5
        suffix = f"; and {more}{'+' if report.truncated else ''} more" if more > 0 else ""
        raise APIError(
            f"Invalid file '{filename}': {len(report.errors)}{'+' if report.truncated else ''} "
            f"problem(s): {shown}{suffix}",
            param="file",
            code="invalid_file_format",
            details=[{"line": e.line, "field": e.field, "message": e.message} for e in report.errors],
        )
    size = file.file.tell()
    file.file.seek(0)
    file_id = new_id("file")
    key = file_key(file_id)
    state.store.put_stream(key, file.file, size)
    row = File(
        id=file_id, filename=filename, purpose=purpose, bytes=size, sha256=digest.hexdigest(), key=key,
        format=report.format, rows=report.rows, tokens=report.tokens, created_at=now(),
    )
    try:
        repo.add_file(row)
    except Exception:
        state.store.delete(key)  # no orphaned object when the row cannot be written
        raise
    return file_object(row)


@router.get("", response_model=ListObject, summary="List files")
def list_files(repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 100,
               purpose: str | None = None) -> ListObject:
    rows, has_more = repo.list_files(after, limit, purpose)
    return page(rows, has_more, file_object)


@router.get("/{file_id}", response_model=FileObject, summary="Retrieve a file")
def get_file(file_id: str, repo: RepoDep) -> FileObject:
    return file_object(repo.get_file(file_id))


@router.get("/{file_id}/content", summary="Download a file's content")
def get_file_content(file_id: str, repo: RepoDep, state: StateDep) -> StreamingResponse:
    row = repo.get_file(file_id)
    stream = state.store.open(row.key)

    def chunks() -> Iterator[bytes]:
        with stream:
            while chunk := stream.read(1 << 20):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Length": str(row.bytes),
                                      "Content-Disposition": f'attachment; filename="{row.filename}"'})


@router.delete("/{file_id}", response_model=DeletedObject, summary="Delete a file")
def delete_file(file_id: str, repo: RepoDep, state: StateDep) -> DeletedObject:
    row = repo.get_file(file_id)
    repo.delete_file(row)
    state.store.delete(row.key)
    return DeletedObject(id=file_id, object="file")
