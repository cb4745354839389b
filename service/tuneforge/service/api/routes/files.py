"""``/v1/files``: upload (validated line by line), list, get, content, delete."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from tuneforge.service.api.deps import RepoDep, StateDep, limits_of
from tuneforge.service.api.pagination import AfterQuery, LimitQuery, page
from tuneforge.service.api.presenters import file_object
from tuneforge.service.api.routing import Router
from tuneforge.service.api.short_sessions import ShortPrincipalDep
from tuneforge.service.domain.uploads import receive_upload
from tuneforge.service.schemas import DeletedObject, FileObject, ListObject

router = Router(prefix="/v1/files", tags=["files"])


@router.post(
    "",
    response_model=FileObject,
    summary="Upload a training file (JSONL), validated line by line",
    description="multipart/form-data with a `file` part and `purpose=fine-tune`. The file is validated while it "
    "streams into the object store; it is stored only when every line is valid. Every line is scanned for personal "
    "data and secrets: `pii_action` `report` (default) lists findings on the file, `reject` refuses a file with any "
    "(400 naming the line), `redact` replaces them with placeholders such as [EMAIL] before storing (send it "
    "before `file`).",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"},
                       "purpose": {"type": "string", "enum": ["fine-tune", "evals"], "default": "fine-tune"},
                       "pii_action": {"type": "string", "enum": ["report", "reject", "redact"],
                                      "default": "report"}},
    }}}}},
)
async def upload_file(request: Request, principal: ShortPrincipalDep, state: StateDep) -> FileObject:
    row = await receive_upload(request.headers.get("content-type", ""), request.stream(),
                               tenant_id=principal.tenant_id, sessions=state.sessions, store=state.store,
                               settings=state.settings, quota=limits_of(state, principal))
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
