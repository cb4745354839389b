"""The OpenAPI document says what the service really answers (OpenAI's error envelope, never FastAPI's 422), and
the faults schemathesis found stay fixed (each case below failed before its fix)."""

from __future__ import annotations

import httpx
import pytest

from tests.service.helpers import assert_error
from tests.support.live_server import ThreadServer

pytestmark = pytest.mark.databases("sqlite")


def test_every_operation_documents_the_errors_it_can_answer(api_server: ThreadServer) -> None:
    document = httpx.get(f"{api_server.url}/openapi.json", timeout=30).json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            assert "422" not in responses, where  # validation errors are 400s here
            if path in ("/healthz", "/readyz"):
                continue
            assert {"401", "403", "429"} <= set(responses), where
            if "{" in path:
                assert "404" in responses, where
            if operation.get("parameters") or "requestBody" in operation:
                error = responses["400"]["content"]["application/json"]["schema"]
                assert error["required"] == ["error"], where
    assert not any("$defs" in str(op.get("requestBody", "")) for ops in document["paths"].values()
                   for op in ops.values())  # nested schemas live in components, where their $refs point
    assert {"TextPart", "ChatMessage"} <= set(document["components"]["schemas"])


def test_a_forged_link_signature_with_any_characters_is_a_403(api_server: ThreadServer) -> None:
    # compare_digest raised TypeError (a 500) on a signature with non-ASCII characters
    resp = httpx.get(f"{api_server.url}/v1/fine_tuning/jobs/ftjob-x/artifacts/model.zip",
                     params={"signature": "é\u00e7", "expires": "99999999999999999999"}, timeout=30)
    assert_error(resp, 403)


def test_a_405_lists_every_method_of_the_resource(api_server: ThreadServer) -> None:
    resp = api_server.client().put("/v1/files")
    assert_error(resp, 405, code="method_not_allowed")
    assert set(resp.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_a_limit_must_be_a_number_not_a_boolean(api_server: ThreadServer) -> None:
    # lax parsing read false as 0, which means "no limit"
    resp = api_server.client().post("/v1/organizations", json={"id": "acme", "limits": {"requests_per_minute": False}})
    assert_error(resp, 400, param="limits.requests_per_minute")
    assert api_server.client().get("/v1/organizations/acme").status_code == 404  # nothing created


def test_an_unknown_audit_event_type_is_refused(api_server: ThreadServer) -> None:
    client = api_server.client()
    ok = client.get("/v1/organization/audit_logs", params={"event_types[]": "api_key.created"})
    assert ok.status_code == 200, ok.text
    assert_error(client.get("/v1/organization/audit_logs", params={"event_types[]": "api_key.creatd"}), 400)
