"""Per-organization GPU-hour budgets: what is spent, refusing new work once it is, pausing what runs.

An admin sets a budget (``tuneforge budgets set ORG HOURS``); the service's budget watch
(:func:`enforce`) pauses the organization's unfinished jobs when their GPU time reaches it, and creating or
resuming a job is refused (429, ``budget_exceeded``) until an admin raises it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tuneforge.contracts.status import JobStatus
from tuneforge.service.core.errors import QuotaExceeded
from tuneforge.service.db.models import Budget
from tuneforge.service.db.repo import SystemRepo, TenantRepo, usage_jobs_of
from tuneforge.service.domain.executor import Executor
from tuneforge.service.domain.lifecycle import transition
from tuneforge.service.domain.usage import spent_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetState:
    gpu_hours: float | None
    spent_gpu_hours: float

    @property
    def exhausted(self) -> bool:
        return self.gpu_hours is not None and self.spent_gpu_hours >= self.gpu_hours


def spent_gpu_hours(session: Session, tenant_id: str, at: float | None = None) -> float:
    at = time.time() if at is None else at
    return sum(spent_seconds(job, at) for job in usage_jobs_of(session, tenant_id)) / 3600.0


def state(session: Session, tenant_id: str, budget: Budget | None) -> BudgetState:
    return BudgetState(budget.gpu_hours if budget is not None else None, spent_gpu_hours(session, tenant_id))


def check_budget(repo: TenantRepo) -> None:
    """Refuse new work (create, resume) once the organization's budget is spent."""
    budget = repo.budget()
    if budget is None:
        return
    current = state(repo.session, repo.tenant_id, budget)
    if current.exhausted:
        raise QuotaExceeded(f"Budget exceeded: this organization has spent {current.spent_gpu_hours:.4f} of its "
                            f"{budget.gpu_hours:g} GPU-hours; an admin can raise it.", code="budget_exceeded")


def enforce(session: Session, executor: Executor | None) -> list[str]:
    """Pause the unfinished jobs of every organization whose budget is spent; returns the paused job ids."""
    paused: list[str] = []
    for budget in SystemRepo(session).budgets():
        current = state(session, budget.tenant_id, budget)
        if not current.exhausted:
            continue
        for job in TenantRepo(session, budget.tenant_id).unfinished_jobs():
            message = (f"Paused: the organization's GPU-hour budget is spent ({current.spent_gpu_hours:.4f} of "
                       f"{budget.gpu_hours:g} GPU-hours); it resumes when an admin raises the budget and the job "
                       "is resumed")
            if transition(session, job, JobStatus.PAUSED, message, level="warn"):
                paused.append(job.id)
                if executor is not None:
                    executor.pause(job.id)
    if paused:
        log.warning("budget spent: paused %s", ", ".join(paused))
    return paused
