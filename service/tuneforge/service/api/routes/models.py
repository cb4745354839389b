"""``/v1/models``: base models and this organization's succeeded fine-tuned models."""

from __future__ import annotations

from fastapi import APIRouter

from tuneforge.contracts.catalog import BASE_MODELS, canonical_model_id
from tuneforge.service.api.deps import RepoDep
from tuneforge.service.core.errors import NotFound
from tuneforge.service.db.models import Job
from tuneforge.service.schemas import ListObject, ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"])

_EPOCH = 1730419200  # release date of the bundled base model, a stable "created" value


def _base_models() -> list[ModelObject]:
    return [ModelObject(id=m.id, created=_EPOCH, owned_by="tuneforge") for m in BASE_MODELS.values()]


def _tuned(job: Job) -> ModelObject:
    return ModelObject(
        id=job.fine_tuned_model or job.id, created=job.finished_at or job.created_at, owned_by=job.tenant_id,
        kind="fine-tuned", base_model=job.model, fine_tuning_job_id=job.id,
    )


@router.get("", response_model=ListObject, summary="List base and fine-tuned models")
def list_models(repo: RepoDep) -> ListObject:
    data = _base_models() + [_tuned(j) for j in repo.succeeded_jobs()]
    return ListObject(data=data)


@router.get("/{model_id:path}", response_model=ModelObject, summary="Retrieve a model")
def get_model(model_id: str, repo: RepoDep) -> ModelObject:
    canonical = canonical_model_id(model_id)
    if canonical in BASE_MODELS:
        return next(m for m in _base_models() if m.id == canonical)
    job = repo.find_model_job(model_id)
    if job is None:
        raise NotFound("model", model_id, param="model")
    return _tuned(job)
