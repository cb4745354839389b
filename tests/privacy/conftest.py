"""Fixtures for the privacy tests: an authenticated client of the executor-less server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.live_server import ThreadServer


@pytest.fixture
def client(api_server: ThreadServer) -> Iterator[httpx.Client]:
    with api_server.client() as c:
        yield c
