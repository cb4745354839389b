"""Alembic's environment: runs on the connection that ``tuneforge.service.db.migrate`` opened and locked."""

from __future__ import annotations

from typing import Any

from alembic import context

from tuneforge.service.db.models import Base

config = context.config


def _ours(name: str | None, type_: str, parent_names: Any) -> bool:
    # another application's tables in a shared database are not ours to drop (autogenerate, drift checks)
    return type_ != "table" or name in Base.metadata.tables


if context.is_offline_mode():
    raise SystemExit("tuneforge's migrations run online only: `tuneforge db upgrade`")

connection = config.attributes.get("connection")
if connection is None:
    raise SystemExit("run tuneforge's migrations through `tuneforge db upgrade` (tuneforge.service.db.migrate)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    include_name=_ours,
    # SQLite alters a table by copying it: autogenerate writes batch operations, which do that
    render_as_batch=True,
)
# migrate.py has begun the transaction (and taken the lock): this joins it, commit is theirs
with context.begin_transaction():
    context.run_migrations()
