"""``tuneforge db``: the database's schema revision, and upgrading it (run where TUNEFORGE_DATABASE_URL points)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sqlalchemy import Engine

db_app = typer.Typer(help="The service's database schema (Alembic migrations).", no_args_is_help=True)


def _engine() -> Engine:
    from tuneforge.service.cli.settings import service_settings
    from tuneforge.service.db.session import make_engine

    return make_engine(service_settings().database_url)


@db_app.command("current")
def current(
    check: Annotated[bool, typer.Option("--check", help="exit with status 1 unless the schema is at head")] = False,
) -> None:
    """Show the database's schema revision and this tuneforge's head revision."""
    from tuneforge.service.db.migrate import UPGRADE_COMMAND, current_state

    engine = _engine()
    try:
        state = current_state(engine)
    finally:
        engine.dispose()
    typer.echo(f"database: {engine.url.render_as_string(hide_password=True)}")
    typer.echo(f"current:  {state.describe()}")
    typer.echo(f"head:     {state.head}")
    if not state.at_head:
        if state.known:
            typer.echo(f"behind: run `{UPGRADE_COMMAND}`")
        if check:
            raise typer.Exit(1)


@db_app.command("upgrade")
def upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Upgrade the schema (an empty database, a round-one database, or an older revision) to head."""
    from tuneforge.service.db.migrate import SchemaError
    from tuneforge.service.db.migrate import upgrade as run_upgrade

    engine = _engine()
    try:
        before, after = run_upgrade(engine, revision)
    except SchemaError as exc:
        typer.echo(f"Not upgraded: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    if before == after:
        typer.echo(f"Already {after.describe()}; nothing to do.")
    else:
        typer.echo(f"Upgraded: {before.describe()} -> {after.describe()}")


@db_app.command("revision", hidden=True)
def revision(message: Annotated[str, typer.Option("--message", "-m")]) -> None:
    """For developers: draft the next migration from the models' difference to head (review it!)."""
    from tuneforge.service.db.migrate import new_revision

    path: Path = new_revision(message)
    typer.echo(f"Wrote {path}")
