"""Bring the database's schema to the one this code needs: Alembic migrations, on SQLite and PostgreSQL.

Three kinds of database arrive here:

- empty (none of our tables): migrated from the first revision;
- round one's, made by ``create_all`` before migrations existed (our tables, no ``alembic_version``): compared
  with revision 0001's frozen schema, stamped at 0001 when it matches exactly, then upgraded; refused when not;
- versioned: upgraded from the revision it records; a revision this code does not know (a newer tuneforge
  wrote it) is refused, never guessed at.

Each upgrade runs in one transaction under a lock, so concurrent starts of several replicas are safe: on
PostgreSQL an advisory lock (its DDL is transactional); on SQLite ``BEGIN IMMEDIATE`` on a connection whose
driver leaves transactions to us (pysqlite would otherwise commit before every DDL statement), with foreign
keys off for the duration (a batch-mode table copy drops the old table, and with foreign keys on that drop
would cascade to every referencing row) and ``PRAGMA foreign_key_check`` before committing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from tuneforge.service.db.models import Base

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: the revision a round-one database (tables, no alembic_version) is adopted at
ROUND_ONE = "0001"
#: pg_advisory_xact_lock key that serializes tuneforge's migrations on one PostgreSQL database
_PG_LOCK_KEY = 0x7475_6E65_666F_7267  # "tuneforg"
UPGRADE_COMMAND = "tuneforge db upgrade"


class SchemaError(RuntimeError):
    """The database's schema is not one this code can use, and nothing was changed."""


class SchemaBehind(SchemaError):
    """The schema is behind this code's and automatic upgrades are off."""


@dataclass(frozen=True)
class SchemaState:
    kind: Literal["empty", "unversioned", "versioned"]
    #: the revision recorded in alembic_version (None when empty or unversioned)
    current: str | None
    head: str
    #: False when ``current`` is a revision this code does not know
    known: bool = True

    @property
    def at_head(self) -> bool:
        return self.kind == "versioned" and self.current == self.head

    def describe(self) -> str:
        if self.kind == "empty":
            return "empty (no tuneforge tables)"
        if self.kind == "unversioned":
            return f"unversioned (round one's tables without an alembic_version table; adoptable as {ROUND_ONE})"
        if not self.known:
            return f"at revision {self.current}, which this tuneforge does not know (written by a newer version?)"
        return f"at revision {self.current}" + (" (head)" if self.at_head else "")


def alembic_config(connection: Connection | None = None, script_location: Path = MIGRATIONS) -> Config:
    """Alembic's configuration, built in code (no alembic.ini): env.py runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


@functools.cache
def script_directory(script_location: Path = MIGRATIONS) -> ScriptDirectory:
    """The revisions (read once per process: they do not change while it runs)."""
    return ScriptDirectory.from_config(alembic_config(script_location=script_location))


def head_revision(script_location: Path = MIGRATIONS) -> str:
    head = script_directory(script_location).get_current_head()
    assert head is not None, f"no migrations under {script_location}"
    return head


@functools.cache
def round_one_schema(script_location: Path = MIGRATIONS) -> MetaData:
    """Revision 0001's frozen tables: what a round-one database must match exactly to be adopted (read-only)."""
    module = script_directory(script_location).get_revision(ROUND_ONE).module
    schema: MetaData = module.schema()
    return schema


def _state(connection: Connection, script_location: Path = MIGRATIONS) -> SchemaState:
    script = script_directory(script_location)
    head = head_revision(script_location)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None:
        known = current in {rev.revision for rev in script.walk_revisions()}
        return SchemaState("versioned", current, head, known)
    tables = set(inspect(connection).get_table_names())
    ours = tables & (set(Base.metadata.tables) | set(round_one_schema(script_location).tables))
    return SchemaState("unversioned" if ours else "empty", None, head)


def current_state(engine: Engine, script_location: Path = MIGRATIONS) -> SchemaState:
    """Where the database stands against this code's head revision (reads only)."""
    with engine.connect() as connection:
        return _state(connection, script_location)


def schema_differences(connection: Connection, metadata: MetaData) -> list[Any]:
    """Alembic autogenerate's differences between the database and ``metadata``; only ``metadata``'s tables."""

    def ours(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or name in metadata.tables

    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": ours})
    return list(compare_metadata(context, metadata))


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One connection, in one transaction, holding the migration lock; committed when the block succeeds."""
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                yield connection
            return
        driver: Any = connection.connection.driver_connection
        isolation_level = driver.isolation_level
        driver.isolation_level = None  # pysqlite: no implicit BEGIN/COMMIT around DDL; we issue BEGIN
        # outside any transaction (inside one SQLite ignores it): the table copies must not cascade deletes
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()  # ends the transaction SQLAlchemy began for the PRAGMA (only in its bookkeeping)
        try:
            with connection.begin():
                connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, before anything is read
                yield connection
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise SchemaError(f"the migration would leave rows whose foreign keys point nowhere: {broken[:5]}")
        finally:
            connection.rollback()  # nothing open after a commit; after an error the rollback has happened
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
            driver.isolation_level = isolation_level


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def upgrade(
    engine: Engine, revision: str = "head", script_location: Path = MIGRATIONS
) -> tuple[SchemaState, SchemaState]:
    """Upgrade to ``revision`` (adopting a round-one database first); returns the states before and after.

    All of it happens in one transaction: a failing step leaves the database as it was."""
    with _migration_transaction(engine) as connection:
        before = _state(connection, script_location)
        if before.kind == "versioned" and not before.known:
            raise SchemaError(f"The database ({_url(engine)}) is {before.describe()}; this tuneforge's newest "
                              f"revision is {before.head}. Run the tuneforge version that wrote it, or a newer one.")
        config = alembic_config(connection, script_location)
        if before.kind == "unversioned":
            differences = schema_differences(connection, round_one_schema(script_location))
            if differences:
                listed = "\n".join(f"  {d}" for d in differences[:20])
                raise SchemaError(
                    f"The database ({_url(engine)}) has tuneforge's tables but no migration history, and they "
                    f"differ from round one's schema (revision {ROUND_ONE}), so it was not changed:\n{listed}")
            log.warning("adopting a round-one database (no alembic_version) at revision %s", ROUND_ONE)
            command.stamp(config, ROUND_ONE)
        try:
            command.upgrade(config, revision)
        except CommandError as exc:  # e.g. a target that is not ahead of the current revision
            raise SchemaError(f"Cannot upgrade the database ({_url(engine)}) to {revision!r}: {exc}") from exc
        after = _state(connection, script_location)
    if before != after:
        log.warning("database schema upgraded: %s -> %s", before.describe(), after.describe())
    return before, after


def ensure_schema(engine: Engine, *, auto_upgrade: bool) -> SchemaState:
    """At service start: upgrade an empty or older database, or (auto_upgrade off) refuse one that is behind."""
    state = current_state(engine)
    if state.at_head:
        return state
    if state.kind == "versioned" and not state.known:
        raise SchemaError(f"The database ({_url(engine)}) is {state.describe()}; this tuneforge needs {state.head}. "
                          "Run the tuneforge version that wrote it, or a newer one.")
    if not auto_upgrade:
        raise SchemaBehind(
            f"The database ({_url(engine)}) is {state.describe()}; this tuneforge needs revision {state.head}. "
            f"Automatic upgrades are off (TUNEFORGE_DB_AUTO_UPGRADE=false): run `{UPGRADE_COMMAND}` with the same "
            "TUNEFORGE_DATABASE_URL, then start the service again.")
    return upgrade(engine)[1]


def new_revision(message: str, script_location: Path = MIGRATIONS) -> Path:
    """For developers: write the next revision, autogenerated from the models' difference to the head schema.

    The draft is computed against a scratch SQLite database at head; read and edit it before committing."""
    import tempfile

    from sqlalchemy import create_engine

    script = script_directory(script_location)
    head = script.get_current_head()
    rev_id = f"{int(head or '0') + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/head.db")
        try:
            with engine.begin() as connection:
                config = alembic_config(connection, script_location)
                command.upgrade(config, "head")
                written = command.revision(config, message, autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    assert written is not None and not isinstance(written, list)
    return Path(written.path)
