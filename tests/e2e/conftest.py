from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live_server import ProcessServer
from tests.support.models import TINY, register_model
from tests.support.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("TUNEFORGE_TEST_MODEL_DIR")
    return make_tiny_model(Path(cache) if cache else tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def process_server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[ProcessServer]:
    """`tuneforge serve` with the tiny model registered as a base model named ``TINY``."""
    srv = ProcessServer(tmp_path / "home").start()
    register_model(srv, tiny_model_dir, TINY)
    yield srv
    srv.stop()
