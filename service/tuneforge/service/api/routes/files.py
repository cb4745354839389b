"""``/v1/files``: upload (validated line by line), list, get, content, delete."""

from __future__ import annotations

import asyncio
import hashlib
import queue
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from python_multipart.multipart import MultipartParser, parse_options_header

from tuneforge.contracts.datasets import ValidationReport
from tuneforge.contracts.store_layout import file_key
from tuneforge.service.api.deps import RepoDep, StateDep
from tuneforge.service.api.pagination import AfterQuery, LimitQuery, page
from tuneforge.service.api.presenters import file_object
from tuneforge.service.core.errors import InvalidRequest, TooLarge
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import File, now
from tuneforge.service.domain.streaming_upload import (
    Pipe,
    UploadAborted,
    Worker,
    end_of_lines,
    end_of_lines_nowait,
    iter_lines,
    line_queue,
)
from tuneforge.service.domain.upload_validation import token_counter, validate_upload
from tuneforge.service.schemas import DeletedObject, FileObject, ListObject

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)




class _FormReader:
    """Incremental multipart/form-data parsing: the ``file`` part's bytes go to ``on_file``; small fields kept."""

    def __init__(self, boundary: bytes, on_file: Callable[[bytes], None]) -> None:
        self.on_file = on_file
        self.fields: dict[str, bytes] = {}
        self.filename: str | None = None
        self.file_seen = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._part: str | None = None
        self._is_file = False
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._append("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._append("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        })

    def _append(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _part_begin(self) -> None:
        self._headers = {}
        self._part = None
        self._is_file = False

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part = params.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._part == "file"
        if self._is_file:
            self.file_seen = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.on_file(data[start:end])
        elif self._part is not None:
            value = self.fields.get(self._part, b"") + data[start:end]
            if len(value) > 4096:
                raise InvalidRequest(f"Form field '{self._part}' is too long.", param=self._part)
            self.fields[self._part] = value


def _invalid_file(filename: str, report: ValidationReport) -> InvalidRequest:
    shown = "; ".join(str(e) for e in report.errors[:5])
    more = len(report.errors) - 5
    plus = "+" if report.truncated else ""
    suffix = f"; and {more}{plus} more" if more > 0 else ""
    return InvalidRequest(
        f"Invalid file '{filename}': {len(report.errors)}{plus} problem(s): {shown}{suffix}",
        param="file",
        code="invalid_file_format",
        details=[{"line": e.line, "field": e.field, "message": e.message} for e in report.errors],
    )


@router.post(
    "",
    response_model=FileObject,
    summary="Upload a training file (JSONL), validated line by line",
    description="multipart/form-data with a `file` part and `purpose=fine-tune`. The file is validated while it "
    "streams into the object store; it is stored only when every line is valid.",
)
async def upload_file(request: Request, repo: RepoDep, state: StateDep) -> FileObject:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Expected multipart/form-data with a 'file' part and 'purpose'.", param="file")
    settings = state.settings
    limit = settings.limits.max_upload_bytes
    file_id = new_id("file")
    key = file_key(file_id)
    digest = hashlib.sha256()
    pipe = Pipe()
    lines = line_queue()
    pending: list[bytes] = []
    form = _FormReader(boundary, pending.append)
    counter = token_counter(settings.executor.model_cache, settings.default_base_model)

    def validate() -> ValidationReport:
        stream = iter_lines(lines)
        report = validate_upload(stream, max_tokens=settings.limits.max_example_tokens,
                                 max_errors=settings.limits.max_reported_errors, count_tokens=counter)
        for _ in stream:  # the validator may stop early (error cap): keep draining to the end
            pass
        return report

    def store() -> int:
        try:
            return state.store.put_stream(key, pipe, None)  # type: ignore[arg-type]
        except BaseException:
            pipe.abort()  # unblock the request's writes; the error is raised from storer.error
            raise

    validator = Worker(validate, "upload-validate")
    storer = Worker(store, "upload-store")
    validator.start()
    storer.start()
    size = 0
    committed = False
    try:
        async for chunk in request.stream():
            form.parser.write(chunk)
            if pending:
                data = b"".join(pending)
                pending.clear()
                size += len(data)
                if size > limit:
                    raise TooLarge(f"File is larger than the limit of {limit} bytes.", param="file",
                                   code="file_too_large")
                digest.update(data)
                await asyncio.to_thread(_feed, pipe, lines, data)
        form.parser.finalize()
        await asyncio.to_thread(_feed_end, pipe, lines)
        await asyncio.to_thread(validator.join)
        if validator.error is not None:
            raise validator.error
        if storer.error is not None and not isinstance(storer.error, UploadAborted):
            raise storer.error
        report: ValidationReport = validator.result
        purpose = form.fields.get("purpose", b"fine-tune").decode("utf-8", "replace")
        filename = form.filename or "upload.jsonl"
        if not form.file_seen:
            raise InvalidRequest("The request has no 'file' part.", param="file")
        if purpose not in PURPOSES:
            raise InvalidRequest(f"Invalid purpose {purpose!r}: expected one of {', '.join(PURPOSES)}.",
                                 param="purpose")
        if not report.ok:
            raise _invalid_file(filename, report)
        pipe.commit()
        committed = True
        await asyncio.to_thread(storer.join)
        if storer.error is not None:
            raise storer.error
    finally:
        if not committed:
            pipe.abort()
            end_of_lines_nowait(lines)
            await asyncio.to_thread(storer.join, 30)
    row = File(
        id=file_id, filename=filename, purpose=purpose, bytes=size, sha256=digest.hexdigest(), key=key,
        format=report.format, rows=report.rows, tokens=report.tokens, created_at=now(),
    )
    try:
        await asyncio.to_thread(repo.add_file, row)
    except Exception:
        state.store.delete(key)  # no orphaned object when the row cannot be written
        raise
    return file_object(row)


def _feed(pipe: Pipe, lines: queue.Queue[Any], data: bytes) -> None:
    lines.put(data)
    pipe.write(data)


def _feed_end(pipe: Pipe, lines: queue.Queue[Any]) -> None:
    end_of_lines(lines)
    pipe.end()


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
