"""The databases the server fixtures run on: SQLite and a real PostgreSQL, every API and end-to-end test on both.

One PostgreSQL server serves the whole test session. The schema is migrated once into a template database;
each test gets its own database cloned from it (``CREATE DATABASE … TEMPLATE``: a file copy, no migrations
per test) and dropped afterwards, so tests stay independent and the session's disk use stays flat.

``--databases=sqlite`` (or ``TUNEFORGE_TEST_DATABASES=sqlite``) runs the SQLite half only (the fast path);
``@pytest.mark.databases("sqlite")`` keeps one test on the databases it names (e.g. a test about SQLite's
file permissions).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.postgres import PostgresServer, find_pg_bin
from tests.support.waiting import free_port
from tuneforge.service.db.session import init_db, make_engine

DATABASES = ("sqlite", "postgresql")
TEMPLATE = "tuneforge_template"


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'tuneforge.db'}"


class PostgresDatabases:
    """A PostgreSQL server with the schema migrated once into a template; a fresh database per test."""

    def __init__(self) -> None:
        if find_pg_bin() is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (.ci/system-deps installs them)")
        self.server = PostgresServer(free_port()).start()
        self._lock = threading.Lock()
        template_url = self.server.create_database(TEMPLATE)
        engine = make_engine(template_url)
        try:
            init_db(engine)
        finally:
            engine.dispose()  # a template must have no connections while it is copied
        self._admin = create_engine(self.server.url, isolation_level="AUTOCOMMIT", pool_size=1)

    def new(self) -> str:
        """The URL of a new database at the schema's head."""
        name = f"t_{uuid.uuid4().hex[:20]}"
        with self._lock, self._admin.connect() as connection:  # one copy of the template at a time
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))
        return self.server.url.rsplit("/", 1)[0] + "/" + name

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def stop(self) -> None:
        self._admin.dispose()
        self.server.stop()
