"""One server per database for a module of feedback tests, with the tiny peaked model (base) and a LoRA of it (an
``ft:`` model) registered, so that campaigns sample through the real serving engine; and its rater keys."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import add_tenant, chat_file, create_job, update_job, upload
from tests.support.databases import DATABASES
from tests.support.engine_models import make_lora, make_peaked_model
from tests.support.live_server import ThreadServer, make_settings
from tests.support.models import register_model
from tests.support.waiting import free_port
from tuneforge.contracts.store_layout import job_model_prefix
from tuneforge.service.db.models import now
from tuneforge.storage.manifest import publish_dir

BASE = "tiny-peaked"
OTHER_KEY = "tf-feedback-other-tenant-admin-0123456789"


@dataclass
class Served:
    server: ThreadServer
    base: str
    tuned: str
    #: rater name -> (key id, secret)
    raters: dict[str, tuple[str, str]]
    other: httpx.Client

    def rater(self, name: str) -> httpx.Client:
        return self.server.client(self.raters[name][1])


def _databases(config: pytest.Config) -> list[str]:
    wanted = [d.strip() for d in config.getoption("--databases").split(",") if d.strip()]
    return [d for d in DATABASES if d in wanted]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "served" in metafunc.fixturenames:
        metafunc.parametrize("feedback_database", _databases(metafunc.config), indirect=True, scope="module")


@pytest.fixture(scope="module")
def feedback_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The server's database URL, per module: "" (SQLite in its home) or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield ""
        return
    databases = request.getfixturevalue("postgres_databases")
    url = databases.new()
    yield url
    databases.drop(url)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, feedback_database: str) -> Iterator[Served]:
    root = Path(os.environ.get("TUNEFORGE_TEST_MODEL_DIR") or tmp_path_factory.mktemp("feedback-models"))
    model = make_peaked_model(root)
    adapter = make_lora(model, root, seed=5)
    server = ThreadServer(make_settings(tmp_path_factory.mktemp("feedback") / "home", free_port(),
                                       database_url=feedback_database), start_executor=False).start()
    other = add_tenant(server, "acme", OTHER_KEY)
    try:
        register_model(server, model, BASE)
        with server.client() as client:
            job = create_job(client, upload(client, chat_file(4))["id"], model=BASE)
            raters = {}
            for name in ("careful", "careful2", "random", "idle"):
                made = client.post("/v1/organization/api_keys", json={"name": name, "role": "rater"})
                assert made.status_code == 200, made.text
                raters[name] = (made.json()["id"], made.json()["value"])
        publish_dir(server.state.store, adapter, job_model_prefix(job["id"]), base_model=BASE)
        tuned = f"ft:{BASE}:default:feedback:{job['id'][6:18]}"
        update_job(server, job["id"], status="succeeded", fine_tuned_model=tuned, finished_at=now())
        yield Served(server, BASE, tuned, raters, other)
    finally:
        other.close()
        server.stop()
