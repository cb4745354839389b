"""Shared fixtures: a real service on a real socket, per test, in a temporary home."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    """The API with its local executor running (jobs really train when a trainer is reachable)."""
    srv = ThreadServer(make_settings(tmp_path / "home", free_port(), poll_interval_seconds=0.2)).start()
    yield srv
    srv.stop()


@pytest.fixture
def api_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ThreadServer]:
    """The API without an executor: jobs stay where the API leaves them (fast, for API-shape tests).

    ``@pytest.mark.limits(max_upload_bytes=300)`` starts it with other limits (settings are fixed at start)."""
    marker = request.node.get_closest_marker("limits")
    limits = dict(marker.kwargs) if marker else {}
    srv = ThreadServer(make_settings(tmp_path / "home", free_port(), limits=limits), start_executor=False).start()
    yield srv
    srv.stop()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATA}")
    return SHARED_DATA
