"""The upload pipeline: one ``multipart/form-data`` body in, one stored training file (its row) out.

The body is parsed as it arrives by streaming-form-data. The bytes of its ``file`` part go, chunk by chunk,
to two threads at once: the line-by-line validator and the object store's streaming write (through
:class:`~tuneforge.service.domain.streaming_upload.Pipe`). When the body has ended, the write is completed
only if the validator accepted every line (and the form is otherwise right); in every other case it is
aborted, so nothing of a failed upload is ever visible in the store, and nothing is written to the
database. The file is never held whole in memory or spooled to disk.

Every line is also scanned for personal data and secrets (:mod:`~tuneforge.service.domain.privacy.upload_scan`);
the form field ``pii_action`` chooses what happens to findings: ``report`` them on the file, ``reject`` the file,
or ``redact`` them before the bytes reach the store (the field must then come before ``file``).

Errors are the service's API errors: 400 for a malformed form, a bad ``purpose`` or ``pii_action``, invalid
lines or a rejected scan (each with its line number in ``details``), 413 past the size limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterable, Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget, ValueTarget
from streaming_form_data.validators import MaxSizeValidator, ValidationError

from tuneforge.contracts.datasets import ValidationReport
from tuneforge.contracts.store_layout import file_key
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import InvalidRequest, TooLarge
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import File, now
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.privacy.upload_scan import PII_ACTIONS, LineRedactor, PiiTally, rejected, scanned
from tuneforge.service.domain.quotas import Limits, admit_file, check_upload_room, effective_limits
from tuneforge.service.domain.streaming_upload import (
    Pipe,
    UploadAborted,
    Worker,
    end_of_lines,
    end_of_lines_nowait,
    iter_lines,
    line_queue,
)
from tuneforge.service.domain.upload_validation import token_counter, validate_eval_lines, validate_upload
from tuneforge.storage import ObjectStore

#: ``evals``: rows of eval runs (any JSON object per line; checked against the eval's item schema by a run)
PURPOSES = ("fine-tune", "evals")
#: the longest value accepted in a small form field (``purpose``)
MAX_FIELD_BYTES = 4096
#: the ``filename`` column's width
MAX_FILENAME_CHARS = 512
DEFAULT_FILENAME = "upload.jsonl"




class _FilePart(BaseTarget):
    """The ``file`` part: counts its bytes against the limit and keeps them until the pipeline takes them."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.size = 0
        self.seen = False
        self.finished = False
        self._pending: list[bytes] = []

    def on_start(self) -> None:
        if self.seen:
            raise InvalidRequest("The request has more than one 'file' part; send one file per upload.", param="file")
        self.seen = True
        if len(self.multipart_filename or "") > MAX_FILENAME_CHARS:
            raise InvalidRequest(f"The filename is longer than {MAX_FILENAME_CHARS} characters.", param="file")

    def on_data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(f"File is larger than the limit of {self.max_bytes} bytes.", param="file",
                           code="file_too_large")
        self._pending.append(chunk)

    def on_finish(self) -> None:
        self.finished = True

    def take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        return data


class _Field(ValueTarget):
    """A small form field; ``seen`` tells an empty value from a missing field."""

    def __init__(self) -> None:
        super().__init__(validator=MaxSizeValidator(MAX_FIELD_BYTES))
        self.seen = False

    def on_start(self) -> None:
        self.seen = True


class _Spool:
    """One file's bytes, validated line by line and written to the store, each in its own thread."""

    def __init__(self, store: ObjectStore, key: str, validate: Callable[..., ValidationReport]) -> None:
        self.pipe = Pipe()
        self.lines = line_queue()
        self.committed = False

        def check() -> ValidationReport:
            stream = iter_lines(self.lines)
            report = validate(stream)
            for _ in stream:  # the validator may stop early (error cap): keep draining to the end
                pass
            return report

        def write() -> int:
            try:
                return store.put_stream(key, self.pipe, None)  # type: ignore[arg-type]
            except BaseException:
                self.pipe.abort()  # unblock the request's writes; the error is raised from writer.error
                raise

        self.validator = Worker(check, "upload-validate")
        self.writer = Worker(write, "upload-store")
        self.validator.start()
        self.writer.start()

    async def feed(self, data: bytes) -> None:
        await asyncio.to_thread(self._feed, data)

    def _feed(self, data: bytes) -> None:  # blocks while the consumers are behind: back-pressure on the body
        self.lines.put(data)
        self.pipe.write(data)

    async def report(self) -> ValidationReport:
        """Ends the data; the validator's verdict (the write waits for :meth:`commit` or :meth:`abort`)."""
        await asyncio.to_thread(self._end)
        await asyncio.to_thread(self.validator.join)
        if self.validator.error is not None:
            raise self.validator.error
        if self.writer.error is not None and not isinstance(self.writer.error, UploadAborted):
            raise self.writer.error
        result: ValidationReport = self.validator.result
        return result

    def _end(self) -> None:
        end_of_lines(self.lines)
        self.pipe.end()

    async def commit(self) -> None:
        self.pipe.commit()
        self.committed = True
        await asyncio.to_thread(self.writer.join)
        if self.writer.error is not None:
            raise self.writer.error

    async def abort(self) -> None:
        self.pipe.abort()
        end_of_lines_nowait(self.lines)
        await asyncio.to_thread(self.writer.join, 30)


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


def _parse(parser: StreamingFormDataParser, chunk: bytes) -> None:
    try:
        parser.data_received(chunk)
    except ValidationError:
        raise InvalidRequest(f"A form field ('purpose' or 'pii_action') is longer than {MAX_FIELD_BYTES} bytes.",
                             param="purpose") from None
    except ParseFailedException as exc:
        raise InvalidRequest(f"Malformed multipart/form-data body ({exc}).", param="file") from None


async def receive_upload(
    content_type: str,
    body: AsyncIterable[bytes],
    *,
    tenant_id: str,
    sessions: sessionmaker[Session],
    store: ObjectStore,
    settings: ServiceSettings,
    quota: Limits | None = None,
) -> File:
    """Parse, validate and store one upload; returns the new file's row (written in a short session of its
    own once the object is stored, so no database connection is held while the body streams in)."""
    try:
        parser = StreamingFormDataParser({"Content-Type": content_type})
    except ParseFailedException:
        raise InvalidRequest("Expected multipart/form-data with a 'file' part and 'purpose'.", param="file") from None
    limits = settings.limits
    quota = quota or effective_limits(limits, None)
    file_part = _FilePart(quota.max_upload_bytes)
    if quota.max_stored_bytes:  # a full organization is refused before its body is read
        await asyncio.to_thread(_check_room, sessions, tenant_id, quota)
    purpose_field = _Field()
    pii_field = _Field()
    parser.register("file", file_part)
    parser.register("purpose", purpose_field)
    parser.register("pii_action", pii_field)
    privacy = settings.privacy
    tally = PiiTally(privacy.pii_max_listed_findings)
    #: set at the file's first bytes when they are to be redacted (pii_action 'redact' sent before 'file')
    redactors: list[LineRedactor] = []
    counter = token_counter(settings.executor.model_cache, settings.default_base_model)

    #: the kind of validation used: chosen at the first line, when a client has sent 'purpose' (before 'file')
    chosen: list[str] = []

    def validate(lines: Any) -> ValidationReport:
        stream = iter(lines)
        first = next(stream, None)
        head = [first] if first is not None else []
        evals = purpose_field.seen and purpose_field.value == b"evals"
        chosen.append("evals" if evals else "fine-tune")
        rows: Any = itertools.chain(head, stream)
        if not redactors:  # redacted lines were scanned on their way in
            rows = scanned(rows, tally)
        if evals:
            return validate_eval_lines(rows, max_errors=limits.max_reported_errors)
        return validate_upload(rows, max_tokens=limits.max_example_tokens,
                               max_errors=limits.max_reported_errors, count_tokens=counter)

    file_id = new_id("file")
    key = file_key(file_id)
    digest = hashlib.sha256()
    stored_bytes = 0
    spool = _Spool(store, key, validate)

    async def to_store(data: bytes) -> None:
        nonlocal stored_bytes
        if data:
            digest.update(data)
            stored_bytes += len(data)
            await spool.feed(data)

    try:
        async for chunk in body:
            _parse(parser, chunk)
            data = file_part.take()
            if not data:
                continue
            if file_part.size == len(data) and _pii_action(pii_field, privacy.pii_default_action) == "redact":
                redactors.append(LineRedactor(tally))  # decided at the file's first bytes: they are not stored yet
            if redactors:
                data = await asyncio.to_thread(redactors[0].feed, data)
            await to_store(data)
        if redactors:
            await to_store(await asyncio.to_thread(redactors[0].flush))
        report = await spool.report()
        if not file_part.seen:
            raise InvalidRequest("The request has no 'file' part.", param="file")
        if not file_part.finished:
            raise InvalidRequest("The request body ended inside the 'file' part (incomplete multipart body).",
                           param="file")
        purpose = purpose_field.value.decode("utf-8", "replace") if purpose_field.seen else "fine-tune"
        if purpose not in PURPOSES:
            raise InvalidRequest(f"Invalid purpose {purpose!r}: expected one of {', '.join(PURPOSES)}.",
                                 param="purpose")
        filename = file_part.multipart_filename or DEFAULT_FILENAME
        if chosen and chosen[0] != purpose:
            raise InvalidRequest("Send the form field 'purpose' before 'file' for an evals file (its lines are "
                                 "checked as it arrives).", param="purpose")
        pii_action = _pii_action(pii_field, privacy.pii_default_action)
        if file_part.size and (pii_action == "redact") != bool(redactors):
            raise InvalidRequest("Send the form field 'pii_action' before 'file' (a file is redacted as it arrives, "
                                 "before it is stored).", param="pii_action")
        if not report.ok:
            raise _invalid_file(filename, report)
        if pii_action == "reject" and tally.total:
            raise rejected(filename, tally)
        await spool.commit()
    finally:
        if not spool.committed:
            await spool.abort()
    row = File(
        id=file_id, filename=filename, purpose=purpose, bytes=stored_bytes, sha256=digest.hexdigest(), key=key,
        format=report.format, rows=report.rows, tokens=report.tokens, created_at=now(), pii=tally.report(pii_action),
    )
    try:
        await asyncio.to_thread(_save, sessions, tenant_id, row, quota)
    except Exception:
        store.delete(key)  # no orphaned object when the row cannot be written
        raise
    return row


def _pii_action(field: _Field, default: str) -> str:
    if not field.seen:
        return default
    value = str(field.value.decode("utf-8", "replace"))
    if value not in PII_ACTIONS:
        raise InvalidRequest(f"Invalid pii_action {value[:64]!r}: expected one of {', '.join(PII_ACTIONS)}.",
                             param="pii_action")
    return value


def _check_room(sessions: sessionmaker[Session], tenant_id: str, quota: Limits) -> None:
    with sessions() as session:
        check_upload_room(TenantRepo(session, tenant_id), quota)


def _save(sessions: sessionmaker[Session], tenant_id: str, row: File, quota: Limits) -> None:
    with sessions() as session:
        admit_file(TenantRepo(session, tenant_id), quota, row)
