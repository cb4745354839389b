"""The service and the CLI on a round-one database: upgraded at start (the default), or refused at start with
TUNEFORGE_DB_AUTO_UPGRADE=false until `tuneforge db upgrade` has run; the round-one rows served afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.service.db.round_one_data import API_KEY, EPOCH_MS, JOB_TOKEN, create_round_one_database
from tests.support.live_server import ROOT, ProcessServer, ThreadServer, make_settings
from tests.support.postgres import PostgresServer, find_pg_bin
from tests.support.waiting import free_port
from tuneforge.service.cli.main import app
from tuneforge.service.db.migrate import head_revision

#: the newest revision (helpers add revisions in parallel: tests follow the chain)
HEAD = head_revision()


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
        return f"sqlite:///{tmp_path / 'round-one.db'}"
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database(f"s_{uuid.uuid4().hex[:16]}")


def _check_round_one_rows_served(client: httpx.Client) -> None:
    jobs = client.get("/v1/fine_tuning/jobs").json()["data"]
    assert [j["id"] for j in jobs] == ["ftjob-r1run", "ftjob-r1done"]  # not the other tenant's
    done = client.get("/v1/fine_tuning/jobs/ftjob-r1done").json()
    assert done["method"]["supervised"]["hyperparameters"] == {"n_epochs": 2, "batch_size": 4}
    assert (done["metadata"], done["trained_tokens"], done["fine_tuned_model"]) == (
        {"team": "fórge", "n": "1"}, 17_581, "ft:SmolLM2:mine")
    events = client.get("/v1/fine_tuning/jobs/ftjob-r1done/events", params={"order": "asc"}).json()["data"]
    assert [e["id"] for e in events] == ["ftevent-1", "ftevent-2", "ftevent-3"]
    assert events[1]["data"]["train_loss"] == 1.9
    checkpoints = client.get("/v1/fine_tuning/jobs/ftjob-r1done/checkpoints").json()["data"]
    assert [c["step_number"] for c in checkpoints] == [33, 20]
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == ["file-r1a"]
    assert client.get("/v1/fine_tuning/jobs/ftjob-r1acme").status_code == 404


def test_service_upgrades_a_round_one_database_at_start(db_url: str, tmp_path: Path) -> None:
    create_round_one_database(db_url)
    settings = make_settings(tmp_path / "home", free_port(), database_url=db_url)
    assert settings.db_auto_upgrade is True  # the default
    srv = ThreadServer(settings, start_executor=False).start()
    try:
        with srv.client(API_KEY) as client:
            _check_round_one_rows_served(client)
        # the trainer's progress report, numbered in epoch milliseconds, now fits (round one: 500 on PostgreSQL)
        report = httpx.post(f"{srv.url}/internal/v1/jobs/ftjob-r1run/progress", timeout=30,
                            headers={"Authorization": f"Bearer {JOB_TOKEN}"},
                            json={"events": [{"seq": EPOCH_MS, "kind": "metrics",
                                              "data": {"step": 1, "total_steps": 10, "train_loss": 2.0}}]})
        assert report.status_code == 200, report.text
        assert report.json() == {"accepted": 1}
        with srv.client(API_KEY) as client:
            assert client.get("/v1/fine_tuning/jobs/ftjob-r1run").json()["progress"]["step"] == 1
    finally:
        srv.stop()


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`tuneforge serve` as its own process: a refusal must end it (bounded) with a message, not a traceback."""
    return subprocess.run([sys.executable, "-m", "tuneforge.service.cli.main", "serve", "--port", str(free_port())],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _tuneforge(env: dict[str, str], *args: str) -> Result:
    """The CLI in this process (a new interpreter per command costs seconds on a busy machine)."""
    return CliRunner().invoke(app, list(args), env={k: env.get(k) for k in {*env, *os.environ} if "TUNEFORGE_" in k})


def test_auto_upgrade_off_refuses_to_start_until_db_upgrade(tmp_path: Path) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'round-one.db'}"
    create_round_one_database(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env.update(TUNEFORGE_HOME=str(home), TUNEFORGE_DATABASE_URL=url, TUNEFORGE_DB_AUTO_UPGRADE="false")

    refused = _serve(env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Not starting: The database (sqlite:///" in refused.stderr
    assert "is unversioned" in refused.stderr and f"needs revision {HEAD}" in refused.stderr
    assert "run `tuneforge db upgrade`" in refused.stderr
    assert "Traceback" not in refused.stderr

    current = _tuneforge(env, "db", "current", "--check")
    assert current.exit_code == 1
    assert "current:  unversioned" in current.stdout and f"head:     {HEAD}" in current.stdout
    assert "behind: run `tuneforge db upgrade`" in current.stdout

    upgraded = _tuneforge(env, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    assert "Upgraded: unversioned" in upgraded.stdout and f"-> at revision {HEAD} (head)" in upgraded.stdout
    again = _tuneforge(env, "db", "upgrade")
    assert f"Already at revision {HEAD} (head); nothing to do." in again.stdout

    current = _tuneforge(env, "db", "current", "--check")
    assert current.exit_code == 0 and f"current:  at revision {HEAD} (head)" in current.stdout

    srv = ProcessServer(home, env={k: env[k] for k in ("TUNEFORGE_DATABASE_URL", "TUNEFORGE_DB_AUTO_UPGRADE")})
    srv.start()
    try:
        with srv.client(API_KEY) as client:
            _check_round_one_rows_served(client)
    finally:
        srv.stop()


def test_db_commands_say_what_is_wrong(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuneforge.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env.update(TUNEFORGE_HOME=str(tmp_path / "home"), TUNEFORGE_DATABASE_URL=url)
    assert "current:  empty" in _tuneforge(env, "db", "current").stdout
    assert _tuneforge(env, "db", "upgrade").exit_code == 0
    typo = _tuneforge(env, "db", "upgrade", "0o02")
    assert typo.exit_code == 1 and "Cannot upgrade the database" in typo.stderr and "'0o02'" in typo.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / "tuneforge.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0999'")
    newer = _tuneforge(env, "db", "upgrade")
    assert newer.exit_code == 1
    assert "Not upgraded:" in newer.stderr and "0999, which this tuneforge does not know" in newer.stderr
    refused = _serve({**env, "TUNEFORGE_DB_AUTO_UPGRADE": "true"})
    assert refused.returncode == 1 and "does not know" in refused.stderr and "Traceback" not in refused.stderr
    bad = _tuneforge({**env, "TUNEFORGE_DB_AUTO_UPGRADE": "maybe"}, "db", "current")
    assert bad.exit_code == 2 and "TUNEFORGE_DB_AUTO_UPGRADE='maybe': Input should be a valid boolean" in bad.stderr
