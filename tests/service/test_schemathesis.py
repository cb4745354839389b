"""schemathesis against the live service's own OpenAPI document: every operation, generated requests (valid and
invalid), every check schemathesis has: no 5xx, only documented statuses, responses that match their schemas and
content types, invalid data refused. Deterministic examples (``derandomize``) and a bounded count per operation.

One check is left out: *positive data acceptance* expects every schema-valid request to succeed, but this API
validates past the schema by design (a file's JSONL lines, a model that must be in the registry, a metadata filter
that must be a JSON object), and answers those with OpenAI's 400, which is documented."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port
from tuneforge.service.api.app import create_app

EXAMPLES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    home = Path(tmp_path_factory.mktemp("schemathesis")) / "home"
    server = ThreadServer(make_settings(home, free_port()), start_executor=False).start()
    yield server
    server.stop()


def _service_document() -> dict[str, Any]:
    """The document the live server serves (the same code builds it), read at collection to name the tests."""
    with tempfile.TemporaryDirectory() as home:
        app = create_app(make_settings(Path(home) / "home", free_port()), start_executor=False)
        return app.openapi()


schema = schemathesis.openapi.from_dict(_service_document())


def test_the_live_document_is_the_one_tested(live: ThreadServer) -> None:
    assert httpx.get(f"{live.url}/openapi.json", timeout=30).json() == _service_document()


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_to_the_schema(case: schemathesis.Case, live: ThreadServer) -> None:
    case.call_and_validate(base_url=live.url, headers={"Authorization": f"Bearer {live.api_key}"},
                           excluded_checks=[positive_data_acceptance])
