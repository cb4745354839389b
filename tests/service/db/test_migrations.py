"""Alembic migrations on SQLite and on a real PostgreSQL server: from empty, from round one's database with rows
in every table, no drift between models and migrations, refusals that change nothing, concurrent starts."""

from __future__ import annotations

import shutil
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateIndex, CreateTable

from tests.service.db import round_one_models as r1
from tests.service.db.round_one_data import EPOCH_MS, INT32_MAX, create_round_one_database, snapshot
from tests.support.postgres import PostgresServer, find_pg_bin
from tests.support.waiting import free_port
from tuneforge.service.db import migrate
from tuneforge.service.db.models import Base, Job, JobEvent
from tuneforge.service.db.session import init_db, make_engine

#: the newest revision (helpers add revisions in parallel: tests follow the chain rather than name its end)
HEAD = migrate.head_revision()
NEXT = f"{int(HEAD) + 1:04d}"


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server not installed (.ci/system-deps)")
    server = PostgresServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tuneforge.db'}"
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _differences(engine: Engine, metadata: object) -> list[object]:
    with engine.connect() as connection:
        return migrate.schema_differences(connection, metadata)  # type: ignore[arg-type]


def _ddl(metadata: object, dialect: object) -> list[str]:
    out = []
    for table in metadata.sorted_tables:  # type: ignore[attr-defined]
        out.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        out += [str(CreateIndex(ix).compile(dialect=dialect)) for ix in sorted(table.indexes, key=lambda i: i.name)]
    return out


def _raw_contents(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows as the database returns them, whatever their columns."""
    with engine.connect() as connection:
        return {name: [tuple(row) for row in connection.execute(text(f"SELECT * FROM {name} ORDER BY 1, 2"))]
                for name in inspect(connection).get_table_names()}


def test_revision_0001_is_round_ones_create_all_ddl() -> None:
    """Statement for statement, column order included, on both dialects (no database needed)."""
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        assert _ddl(migrate.round_one_schema(), dialect) == _ddl(r1.Base.metadata, dialect), dialect.name


def test_upgrade_from_empty(engine: Engine) -> None:
    assert migrate.current_state(engine).kind == "empty"
    before, after = migrate.upgrade(engine)
    assert (before.kind, after.kind, after.current, after.at_head) == ("empty", "versioned", HEAD, True)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    # a second upgrade is a no-op
    assert migrate.upgrade(engine)[0] == after


def test_models_and_migrations_do_not_drift(engine: Engine) -> None:
    """Alembic autogenerate finds nothing between the migrated head schema and today's models."""
    migrate.upgrade(engine)
    assert _differences(engine, Base.metadata) == []


def test_revision_0001_on_a_database_is_round_ones_schema(engine: Engine) -> None:
    migrate.upgrade(engine, "0001")
    assert migrate.current_state(engine).current == "0001"
    assert _differences(engine, r1.Base.metadata) == []


def test_round_one_database_with_rows_is_adopted_and_upgraded_losing_nothing(db_url: str, engine: Engine) -> None:
    before = create_round_one_database(db_url)
    assert {name: len(rows) for name, rows in before.items()} == {
        "tenants": 2, "api_keys": 2, "files": 2, "jobs": 3, "job_events": 5, "checkpoints": 2}
    state = migrate.current_state(engine)
    assert (state.kind, state.current) == ("unversioned", None)
    if engine.dialect.name == "postgresql":
        # the bug 0002 fixes: an epoch-millisecond sequence number does not fit round one's INTEGER
        with pytest.raises(DBAPIError, match="out of range"), engine.begin() as connection:
            connection.execute(text("UPDATE jobs SET last_seq = :v"), {"v": EPOCH_MS})

    init_db(engine, auto_upgrade=True)  # what the service does at start

    assert migrate.current_state(engine).at_head
    assert snapshot(engine) == before  # every row, every value (JSON, unicode, NULLs, 64-bit numbers)
    assert _differences(engine, Base.metadata) == []
    with Session(engine) as session:
        done = session.scalars(select(Job).where(Job.id == "ftjob-r1done")).one()
        assert done.last_seq == INT32_MAX and done.spec["notes"] == 'ünïcødé ✓ "quoted" and\nnewline'
        done.last_seq = EPOCH_MS
        session.add(Job(**{**{c: getattr(done, c) for c in ("model", "method", "hyperparameters", "adapter",
                                                            "resources", "training_file", "seed", "spec",
                                                            "token_hash")},
                           "id": "ftjob-new", "tenant_id": "default", "status": "queued"}))
        session.add(JobEvent(id="ftevent-new", job_id="ftjob-new", tenant_id="default", message="created"))
        session.commit()
        assert session.scalars(select(Job.last_seq).where(Job.id == "ftjob-r1done")).one() == EPOCH_MS
        # autoincrement keys carry on after the existing rows (SQLite copied the jobs table)
        assert session.scalars(select(Job.seq).where(Job.id == "ftjob-new")).one() == 4
        assert session.scalars(select(JobEvent.seq).where(JobEvent.id == "ftevent-new")).one() == 6
        # the foreign keys survived the table copy: deleting a job still cascades to its events and checkpoints
        session.execute(text("DELETE FROM jobs WHERE id = 'ftjob-r1done'"))
        session.commit()
        left = session.execute(text("SELECT (SELECT count(*) FROM job_events WHERE job_id = 'ftjob-r1done'), "
                                    "(SELECT count(*) FROM checkpoints WHERE job_id = 'ftjob-r1done')")).one()
        assert tuple(left) == (0, 0)
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:  # the pooled connection got its foreign keys back
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.mark.parametrize("damage", ["extra column", "missing table", "renamed column"])
def test_unversioned_database_that_is_not_round_ones_is_refused_untouched(
    db_url: str, engine: Engine, damage: str
) -> None:
    create_round_one_database(db_url)
    statement = {
        "extra column": "ALTER TABLE jobs ADD COLUMN surprise INTEGER",
        "missing table": "DROP TABLE checkpoints",
        "renamed column": "ALTER TABLE files RENAME COLUMN tokens TO token_count",
    }[damage]
    with engine.begin() as connection:
        connection.execute(text(statement))
    contents = _raw_contents(engine)
    with pytest.raises(migrate.SchemaError, match="differ from round one's schema") as caught:
        init_db(engine, auto_upgrade=True)
    assert "no migration history" in str(caught.value)
    assert "alembic_version" not in inspect(engine).get_table_names()
    assert _raw_contents(engine) == contents


def test_a_revision_this_code_does_not_know_is_refused(engine: Engine) -> None:
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    for attempt in (lambda: init_db(engine, auto_upgrade=True), lambda: migrate.upgrade(engine)):
        with pytest.raises(migrate.SchemaError, match="0999, which this tuneforge does not know"):
            attempt()
    assert migrate.current_state(engine).current == "0999"


@pytest.mark.parametrize("start", ["empty", "round one", "0001"])
def test_behind_with_auto_upgrade_off_refuses_and_says_what_to_do(tmp_path: Path, start: str) -> None:
    url = f"sqlite:///{tmp_path / 'tuneforge.db'}"
    engine = make_engine(url)
    try:
        if start == "round one":
            create_round_one_database(url)
        elif start == "0001":
            migrate.upgrade(engine, "0001")
        found = {"empty": "is empty", "round one": "is unversioned", "0001": "is at revision 0001"}[start]
        with pytest.raises(migrate.SchemaBehind) as caught:
            init_db(engine, auto_upgrade=False)
        message = str(caught.value)
        assert found in message and f"needs revision {HEAD}" in message and "`tuneforge db upgrade`" in message
        assert "TUNEFORGE_DB_AUTO_UPGRADE=false" in message
        assert migrate.current_state(engine).current == (None if start != "0001" else "0001")
    finally:
        engine.dispose()


def test_a_failing_revision_leaves_the_database_as_it_was(db_url: str, engine: Engine, tmp_path: Path) -> None:
    """The whole upgrade is one transaction, SQLite's batch table copy included."""
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / f"{NEXT}_fails.py").write_text(textwrap.dedent(f"""\
        import sqlalchemy as sa
        from alembic import op

        revision = "{NEXT}"
        down_revision = "{HEAD}"
        branch_labels = None
        depends_on = None


        def upgrade():
            with op.batch_alter_table("files") as batch:  # SQLite: a table copy, then the old one dropped
                batch.alter_column("rows", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
            op.execute("DELETE FROM job_events")
            raise RuntimeError("boom in {NEXT}")


        def downgrade():
            pass
        """))
    contents = create_round_one_database(db_url)
    with pytest.raises(RuntimeError, match=f"boom in {NEXT}"):
        migrate.upgrade(engine, script_location=scripts)
    state = migrate.current_state(engine)
    assert (state.kind, state.current) == ("unversioned", None)  # not even the stamp of 0001 stayed
    # no alembic_version, no half-copied _alembic_tmp_files: nothing of the attempt is left
    assert set(inspect(engine).get_table_names()) == set(r1.Base.metadata.tables)
    assert snapshot(engine) == contents
    assert _differences(engine, r1.Base.metadata) == []


def test_concurrent_starts_upgrade_once(db_url: str) -> None:
    """Replicas starting together on one database: one migrates, the others wait for it and find head."""
    engines = [make_engine(db_url) for _ in range(3)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        try:
            barrier.wait(timeout=30)
            init_db(engine, auto_upgrade=True)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,), daemon=True) for e in engines]
    deadline = time.monotonic() + 120
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1, deadline - time.monotonic()))
    try:
        assert not any(t.is_alive() for t in threads), "an upgrade hung"
        assert errors == []
        assert migrate.current_state(engines[0]).at_head
        with engines[0].connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert _differences(engines[0], Base.metadata) == []
    finally:
        for e in engines:
            e.dispose()


def test_new_revision_drafts_nothing_when_models_match_head(tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    path = migrate.new_revision("no changes", script_location=scripts)
    assert path.name == f"{NEXT}_no_changes.py"
    body = path.read_text()
    assert f'down_revision = "{HEAD}"' in body or f"down_revision = '{HEAD}'" in body
    upgrade_body = body.split("def upgrade() -> None:")[1].split("def downgrade")[0]
    assert upgrade_body.split() == ["#", "###", "commands", "auto", "generated", "by", "Alembic", "-", "please",
                                    "adjust!", "###", "pass", "#", "###", "end", "Alembic", "commands", "###"]
