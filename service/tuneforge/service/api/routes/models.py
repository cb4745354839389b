"""``/v1/models``: base models (the catalogue and operator-registered ones) and this organization's succeeded
fine-tuned models."""

from __future__ import annotations

from fastapi import APIRouter

from tuneforge.service.api.deps import RepoDep, StateDep
from tuneforge.service.db.models import Job
from tuneforge.service.domain.model_registry import BASE_CREATED, base_models, find_base_model, tuned_model_job
from tuneforge.service.schemas import ListObject, ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"])


def _base(model_id: str, engine: str) -> ModelObject:
    return ModelObject(id=model_id, created=BASE_CREATED, owned_by="tuneforge", engine=engine)


def _tuned(job: Job, engine: str) -> ModelObject:
    generates = (job.method or {}).get("type") != "reward_model"
    return ModelObject(
        id=job.fine_tuned_model or job.id, created=job.finished_at or job.created_at, owned_by=job.tenant_id,
        kind="fine-tuned", base_model=job.model, fine_tuning_job_id=job.id, engine=engine if generates else None,
    )


@router.get("", response_model=ListObject, summary="List base and fine-tuned models")
def list_models(repo: RepoDep, state: StateDep) -> ListObject:
    engine = state.serving.kind
    data = [_base(m.id, engine) for m in base_models(state.store)] + [_tuned(j, engine)
                                                                      for j in repo.succeeded_jobs()]
    return ListObject(data=data)


@router.get("/{model_id:path}", response_model=ModelObject, summary="Retrieve a model")
def get_model(model_id: str, repo: RepoDep, state: StateDep) -> ModelObject:
    base = find_base_model(state.store, model_id)
    if base is not None:
        return _base(base, state.serving.kind)
    return _tuned(tuned_model_job(repo, model_id), state.serving.kind)
