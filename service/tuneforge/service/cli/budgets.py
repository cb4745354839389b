"""``tuneforge budgets``: organizations' GPU-hour budgets, for an admin (run where TUNEFORGE_DATABASE_URL points).

A spent budget pauses the organization's jobs and refuses new ones; raising it lets them be resumed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

budgets_app = typer.Typer(help="Organizations' GPU-hour budgets (admin).", no_args_is_help=True)


def _sessions() -> tuple[Engine, sessionmaker[Session]]:
    from tuneforge.service.cli.settings import service_settings
    from tuneforge.service.db.session import init_db, make_engine, make_session_factory

    settings = service_settings()
    engine = make_engine(settings.database_url)
    init_db(engine, auto_upgrade=settings.db_auto_upgrade)
    return engine, make_session_factory(engine)


@budgets_app.command("set")
def set_budget(
    organization: Annotated[str, typer.Argument(help="organization (tenant) id")],
    gpu_hours: Annotated[float, typer.Argument(help="GPU-hours the organization may spend in all")],
) -> None:
    """Set an organization's budget."""
    from tuneforge.service.db.repo import SystemRepo

    if not math.isfinite(gpu_hours) or gpu_hours < 0:
        typer.echo("GPU_HOURS must be a number >= 0", err=True)
        raise typer.Exit(2)
    if not organization or len(organization) > 64:
        typer.echo("ORGANIZATION must be 1 to 64 characters", err=True)
        raise typer.Exit(2)
    engine, sessions = _sessions()
    try:
        with sessions() as session:
            SystemRepo(session).set_budget(organization, gpu_hours)
    finally:
        engine.dispose()
    typer.echo(f"Budget of {organization}: {gpu_hours:g} GPU-hours")


@budgets_app.command("clear")
def clear_budget(organization: str) -> None:
    """Remove an organization's budget (no limit)."""
    from tuneforge.service.db.repo import SystemRepo

    engine, sessions = _sessions()
    try:
        with sessions() as session:
            SystemRepo(session).set_budget(organization, None)
    finally:
        engine.dispose()
    typer.echo(f"Budget of {organization}: none")


@budgets_app.command("show")
def show_budgets() -> None:
    """Every budget and what its organization has spent."""
    from tuneforge.service.db.repo import SystemRepo
    from tuneforge.service.domain.budgets import state

    engine, sessions = _sessions()
    try:
        with sessions() as session:
            for budget in SystemRepo(session).budgets():
                current = state(session, budget.tenant_id, budget)
                flag = "  (spent: jobs paused)" if current.exhausted else ""
                typer.echo(f"{budget.tenant_id}\t{current.spent_gpu_hours:.4f} of {budget.gpu_hours:g} GPU-hours"
                           f"{flag}")
    finally:
        engine.dispose()
