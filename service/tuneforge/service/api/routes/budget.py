"""``GET /v1/organization/budget``: the organization's GPU-hour budget and what it has spent (tuneforge
extension; an admin sets budgets with ``tuneforge budgets set``)."""

from __future__ import annotations

from tuneforge.service.api.deps import RepoDep
from tuneforge.service.api.routing import Router
from tuneforge.service.domain.budgets import state as budget_state
from tuneforge.service.schemas import BudgetObject

router = Router(prefix="/v1/organization", tags=["organization"])


@router.get("/budget", response_model=BudgetObject, summary="The organization's GPU-hour budget and spending")
def get_budget(repo: RepoDep) -> BudgetObject:
    current = budget_state(repo.session, repo.tenant_id, repo.budget())
    return BudgetObject(organization_id=repo.tenant_id, gpu_hours=current.gpu_hours,
                        spent_gpu_hours=round(current.spent_gpu_hours, 6), exhausted=current.exhausted)
