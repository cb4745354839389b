"""``/v1/models``: base models (the catalogue and operator-registered ones) and this organization's succeeded
fine-tuned models."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel

from tuneforge.service.api.deps import RepoDep, StateDep
from tuneforge.service.api.routing import Router
from tuneforge.service.api.short_sessions import ShortRepoDep
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import TunedModelRow
from tuneforge.service.domain.artifacts import export_download_path, signed_files
from tuneforge.service.domain.exports import Format, check_format, describe, export_prefix, exportable_job
from tuneforge.service.domain.exports import start as start_export
from tuneforge.service.domain.model_registry import BASE_CREATED, base_models, find_base_model, tuned_model_job
from tuneforge.service.schemas import ExportObject, ListObject, ModelObject


class ExportRequestBody(BaseModel):
    format: Literal["safetensors", "gguf"] = "safetensors"

router = Router(prefix="/v1/models", tags=["models"])


def _base(model_id: str, engine: str | None) -> ModelObject:
    return ModelObject(id=model_id, created=BASE_CREATED, owned_by="tuneforge", engine=engine)


def _tuned(job: Job | TunedModelRow, engine: str | None) -> ModelObject:
    generates = (job.method or {}).get("type") != "reward_model"
    return ModelObject(
        id=job.fine_tuned_model or job.id, created=job.finished_at or job.created_at, owned_by=job.tenant_id,
        kind="fine-tuned", base_model=job.model, fine_tuning_job_id=job.id, engine=engine if generates else None,
    )


@router.get("", response_model=ListObject, summary="List base and fine-tuned models")
def list_models(repo: RepoDep, state: StateDep) -> ListObject:
    engine = state.serving.kind
    data = [_base(m.id, engine) for m in base_models(state.store)] + [_tuned(j, engine)
                                                                      for j in repo.tuned_models()]
    return ListObject(data=data)


def _export_object(state: StateDep, job: Job, fmt: Format) -> ExportObject:
    links = None
    if state.store.exists(f"{export_prefix(job.id, fmt)}/manifest.json"):
        links = signed_files(state.store, export_prefix(job.id, fmt),
                             link_path=lambda name: export_download_path(job.id, fmt, name),
                             base_url=state.settings.server.base_url, link_secret=state.link_secret,
                             expiry_seconds=state.settings.storage.link_expiry_seconds)
    return describe(state.store, state.exporter, job, fmt, links)


@router.post("/{model_id:path}/export", response_model=ExportObject, status_code=202,
             summary="Export a tuned model: merged full weights or GGUF (an extension)",
             description="Starts (or finds) the export of an `ft:` model: `safetensors` merges a LoRA adapter into "
             "its base model's full weights, with the tokenizer and chat template; `gguf` writes one f16 GGUF file "
             "for llama.cpp and Ollama. Poll `GET …/export?format=` for the files and their download links.")
async def export_model(model_id: str, repo: ShortRepoDep, state: StateDep,
                       body: ExportRequestBody | None = None) -> ExportObject:
    fmt = check_format((body or ExportRequestBody()).format)
    job = exportable_job(repo, model_id)
    start_export(state.store, state.exporter, job, fmt)
    return _export_object(state, job, fmt)


@router.get("/{model_id:path}/export", response_model=ExportObject, summary="An export's status and files")
def get_export(model_id: str, repo: RepoDep, state: StateDep,
               format: Annotated[str, Query(description="safetensors or gguf")] = "safetensors") -> ExportObject:
    return _export_object(state, exportable_job(repo, model_id), check_format(format))


@router.get("/{model_id:path}", response_model=ModelObject, summary="Retrieve a model")
def get_model(model_id: str, repo: RepoDep, state: StateDep) -> ModelObject:
    base = find_base_model(state.store, model_id)
    if base is not None:
        return _base(base, state.serving.kind)
    return _tuned(tuned_model_job(repo, model_id), state.serving.kind)
