"""Shared fixtures: a real service on a real socket, per test, in a temporary home, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.support.databases import DATABASES, PostgresDatabases
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_trainer_settings() -> Iterator[None]:
    """The trainer reads its ``TUNEFORGE_*`` settings once per process (a cache); tests that set those variables
    must not see the values an earlier test in this process left cached, nor leave theirs behind."""
    from tuneforge.trainer.settings import trainer_settings

    trainer_settings.cache_clear()
    yield
    trainer_settings.cache_clear()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--databases", default=os.environ.get("TUNEFORGE_TEST_DATABASES", ",".join(DATABASES)),
        help="comma-separated databases the server fixtures run on (default: sqlite,postgresql)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that (through its fixtures) uses ``database_url`` runs once per selected database."""
    if "database_url" not in metafunc.fixturenames:
        return
    wanted = [d.strip() for d in metafunc.config.getoption("--databases").split(",") if d.strip()]
    unknown = set(wanted) - set(DATABASES)
    if unknown:
        raise pytest.UsageError(f"--databases: unknown {sorted(unknown)}; choose from {', '.join(DATABASES)}")
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None:
        wanted = [d for d in wanted if d in marker.args]
    metafunc.parametrize("database_url", wanted, indirect=True)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """One PostgreSQL server for the session (started only if a test runs on it)."""
    try:
        databases = PostgresDatabases()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    yield databases
    databases.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The server's database URL: "" (SQLite in the server's home, the embedded default) or a new PostgreSQL
    database of its own."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield ""
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.new()
    yield url
    databases.drop(url)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ThreadServer]:
    """The API with its local executor running (jobs really train when a trainer is reachable)."""
    srv = ThreadServer(make_settings(tmp_path / "home", free_port(), database_url=database_url,
                                     poll_interval_seconds=0.2)).start()
    yield srv
    srv.stop()


@pytest.fixture
def api_server(tmp_path: Path, request: pytest.FixtureRequest, database_url: str) -> Iterator[ThreadServer]:
    """The API without an executor: jobs stay where the API leaves them (fast, for API-shape tests).

    ``@pytest.mark.limits(max_upload_bytes=300)`` starts it with other limits (settings are fixed at start)."""
    marker = request.node.get_closest_marker("limits")
    limits = dict(marker.kwargs) if marker else {}
    srv = ThreadServer(make_settings(tmp_path / "home", free_port(), database_url=database_url, limits=limits),
                       start_executor=False).start()
    yield srv
    srv.stop()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATA}")
    return SHARED_DATA

