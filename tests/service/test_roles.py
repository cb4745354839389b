"""Every role against every route: the routes come from the OpenAPI document, so a new route fails here until
it is given its permission in ``EXPECTED`` (the generated tenant-isolation suite can fold this table in).

Requests use ids that do not exist and bodies that are invalid, so a role that may call a route gets past
authorization and stops at a 400/404/409 (nothing is changed), and a role that may not gets a 403
``insufficient_permissions``. Authorization comes before the body is read and before the id is looked up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.helpers import add_tenant, assert_error
from tests.support.live_server import ThreadServer
from tuneforge.service.core.roles import ROLE_PERMISSIONS, Permission, Role

P = Permission
PUBLIC = "public"
#: (method, path template) -> what it needs; PUBLIC: no API key (health, metrics' own token, the trainer's job
#: token, signed download links)
EXPECTED: dict[tuple[str, str], Permission | str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", "/internal/v1/jobs/{job_id}/progress"): PUBLIC,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/artifacts/{name}"): PUBLIC,
    ("GET", "/v1/files"): P.READ,
    ("POST", "/v1/files"): P.WRITE,
    ("GET", "/v1/files/{file_id}"): P.READ,
    ("DELETE", "/v1/files/{file_id}"): P.WRITE,
    ("GET", "/v1/files/{file_id}/content"): P.READ,
    ("GET", "/v1/fine_tuning/jobs"): P.READ,
    ("POST", "/v1/fine_tuning/jobs"): P.WRITE,
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): P.READ,
    ("DELETE", "/v1/fine_tuning/jobs/{job_id}"): P.WRITE,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): P.WRITE,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): P.READ,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events/stream"): P.READ,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): P.READ,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/artifacts"): P.READ,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/eval_report"): P.READ,
    ("GET", "/v1/models"): P.READ,
    ("GET", "/v1/models/{model_id}"): P.READ,
    ("GET", "/v1/organization"): P.READ,
    ("GET", "/v1/organization/api_keys"): P.MANAGE,
    ("POST", "/v1/organization/api_keys"): P.MANAGE,
    ("GET", "/v1/organization/api_keys/{key_id}"): P.MANAGE,
    ("POST", "/v1/organization/api_keys/{key_id}"): P.MANAGE,
    ("DELETE", "/v1/organization/api_keys/{key_id}"): P.MANAGE,
    ("GET", "/v1/organization/audit_logs"): P.MANAGE,
    ("GET", "/v1/organizations"): P.MANAGE,
    ("POST", "/v1/organizations"): P.MANAGE,
    ("GET", "/v1/organizations/{org_id}"): P.MANAGE,
    ("POST", "/v1/organizations/{org_id}"): P.MANAGE,
    ("GET", "/v1/organizations/{org_id}/api_keys"): P.MANAGE,
    ("POST", "/v1/organizations/{org_id}/api_keys"): P.MANAGE,
    ("GET", "/v1/organizations/{org_id}/api_keys/{key_id}"): P.MANAGE,
    ("POST", "/v1/organizations/{org_id}/api_keys/{key_id}"): P.MANAGE,
    ("DELETE", "/v1/organizations/{org_id}/api_keys/{key_id}"): P.MANAGE,
    ("GET", "/v1/organizations/{org_id}/audit_logs"): P.MANAGE,
    ("POST", "/v1/fine_tuning/jobs/estimate"): P.READ,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): P.WRITE,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): P.WRITE,
    ("GET", "/v1/organization/budget"): P.READ,
    ("GET", "/v1/webhooks"): P.READ,
    ("POST", "/v1/webhooks"): P.MANAGE,
    ("GET", "/v1/webhooks/{endpoint_id}"): P.READ,
    ("POST", "/v1/webhooks/{endpoint_id}"): P.MANAGE,
    ("DELETE", "/v1/webhooks/{endpoint_id}"): P.MANAGE,
    ("GET", "/v1/webhooks/{endpoint_id}/deliveries"): P.READ,
    ("POST", "/v1/chat/completions"): P.WRITE,
    ("POST", "/v1/completions"): P.WRITE,
    ("GET", "/v1/serving/engines"): P.READ,
    ("POST", "/v1/models/{model_id}/export"): P.WRITE,
    ("GET", "/v1/models/{model_id}/export"): P.READ,
    # evals: reading them is read; creating, running, cancelling and deleting is write; graders cost compute (judges)
    ("POST", "/v1/evals"): P.WRITE,
    ("GET", "/v1/evals"): P.READ,
    ("GET", "/v1/evals/{eval_id}"): P.READ,
    ("POST", "/v1/evals/{eval_id}"): P.WRITE,
    ("DELETE", "/v1/evals/{eval_id}"): P.WRITE,
    ("POST", "/v1/evals/{eval_id}/runs"): P.WRITE,
    ("GET", "/v1/evals/{eval_id}/runs"): P.READ,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}"): P.READ,
    ("DELETE", "/v1/evals/{eval_id}/runs/{run_id}"): P.WRITE,
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}/cancel"): P.WRITE,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items"): P.READ,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}"): P.READ,
    ("POST", "/v1/fine_tuning/alpha/graders/run"): P.WRITE,
    ("POST", "/v1/fine_tuning/alpha/graders/validate"): P.WRITE,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/exports/{fmt}/{name}"): PUBLIC,
    # feedback campaigns (issue #16): owners read and write them; only rater keys rate, on their campaigns
    ("POST", "/v1/feedback_campaigns"): P.WRITE,
    ("GET", "/v1/feedback_campaigns"): P.READ,
    ("GET", "/v1/feedback_campaigns/{campaign_id}"): P.READ,
    ("DELETE", "/v1/feedback_campaigns/{campaign_id}"): P.WRITE,
    ("POST", "/v1/feedback_campaigns/{campaign_id}/cancel"): P.WRITE,
    ("POST", "/v1/feedback_campaigns/{campaign_id}/raters"): P.WRITE,
    ("GET", "/v1/feedback_campaigns/{campaign_id}/report"): P.READ,
    ("GET", "/v1/feedback_campaigns/{campaign_id}/events"): P.READ,
    ("POST", "/v1/feedback_campaigns/{campaign_id}/export"): P.WRITE,
    ("POST", "/v1/feedback_campaigns/{campaign_id}/rounds"): P.WRITE,
    ("GET", "/v1/feedback_campaigns/{campaign_id}/rounds"): P.READ,
    ("GET", "/v1/feedback_campaigns/{campaign_id}/rounds/{round_id}"): P.READ,
    ("POST", "/v1/feedback_campaigns/{campaign_id}/rounds/{round_id}/cancel"): P.WRITE,
    ("GET", "/v1/feedback_campaigns/{campaign_id}/next_item"): P.RATE,
    ("POST", "/v1/feedback_campaigns/{campaign_id}/items/{item_id}/labels"): P.RATE,
}
#: ids that exist nowhere: an authorized request ends in a 404 (or a 400 for a bad body), changing nothing
MISSING = {"job_id": "ftjob-000000000000000000000000", "file_id": "file-000000000000000000000000",
           "model_id": "ft:nothing:here", "key_id": "key_000000000000000000000000", "org_id": "no-such-org",
           "name": "model.safetensors", "endpoint_id": "we_000000000000000000000000",
           "fmt": "gguf", "eval_id": "eval_000000000000000000000000", "run_id": "evalrun_000000000000000000000000",
           "output_item_id": "outputitem_000000000000000000000000", "campaign_id": "fbc-000000000000000000000000",
           "item_id": "fbitem-000000000000000000000000", "round_id": "fbround-000000000000000000000000"}
#: what an authorized caller may get instead of a success: never 401 or 403
AUTHORIZED = {200, 400, 404, 409}
KEYS = {role: f"tf-role-test-{role.value}-key-0123456789abcdef" for role in Role}


def schema_routes(client: httpx.Client) -> list[tuple[str, str]]:
    paths: dict[str, dict[str, Any]] = client.get("/openapi.json").json()["paths"]
    return sorted((method.upper(), path) for path, ops in paths.items() for method in ops
                  if method in {"get", "post", "put", "patch", "delete"})


def _request(client: httpx.Client, method: str, template: str) -> httpx.Response:
    path = template.format(**MISSING)
    kwargs: dict[str, Any] = {}
    if method == "POST" and template == "/v1/files":
        kwargs["files"] = {"file": ("x.jsonl", b"not json\n", "application/jsonl")}  # invalid: 400 when allowed
    elif method == "POST":
        kwargs["json"] = {"unexpected_field": True, "role": "no-such-role", "id": "Not A Valid Id"}
    if template.endswith("/events/stream"):
        kwargs["params"] = {"heartbeat": 1}
    return client.request(method, path, timeout=30, **kwargs)


@pytest.fixture
def clients(api_server: ThreadServer) -> Iterator[dict[str, httpx.Client]]:
    """One key of every role in the default (operator's) organization, and an admin of another one."""
    made = {role.value: add_tenant(api_server, "default", KEYS[role], role.value) for role in Role}
    made["other_org_admin"] = add_tenant(api_server, "acme", "tf-role-test-acme-admin-0123456789abcdef", "admin")
    yield made
    for client in made.values():
        client.close()


def test_every_route_in_the_schema_has_an_expected_permission(api_server: ThreadServer) -> None:
    with api_server.client() as client:
        routes = schema_routes(client)
    unknown = [r for r in routes if r not in EXPECTED]
    assert not unknown, f"routes without an expected permission (add them to EXPECTED): {unknown}"
    gone = [r for r in EXPECTED if r not in routes]
    assert not gone, f"EXPECTED names routes the schema does not have: {gone}"


@pytest.mark.parametrize("role", [r.value for r in Role] + ["other_org_admin"])
def test_every_role_against_every_route(api_server: ThreadServer, clients: dict[str, httpx.Client],
                                        role: str) -> None:
    client = clients[role]
    granted = ROLE_PERMISSIONS[Role.ADMIN if role == "other_org_admin" else Role(role)]
    checked = 0
    for method, template in schema_routes(client):
        needed = EXPECTED[(method, template)]
        if needed == PUBLIC:
            continue
        response = _request(client, method, template)
        if needed in granted:
            assert response.status_code in AUTHORIZED, (role, method, template, response.status_code, response.text)
        else:
            error = assert_error(response, 403, code="insufficient_permissions")
            assert role.replace("other_org_", "") in error["message"], error
        checked += 1
    assert checked >= 30


def test_a_read_only_key_reads_but_changes_nothing(api_server: ThreadServer, clients: dict[str, httpx.Client]) -> None:
    """With real objects: the read-only key sees the organization's file and job and cannot touch them."""
    member, reader = clients["member"], clients["read_only"]
    upload = {"file": ("t.jsonl", b'{"prompt": "a", "completion": "b"}\n')}
    file_id = member.post("/v1/files", files=upload).json()["id"]
    job = member.post("/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": file_id})
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    assert reader.get(f"/v1/files/{file_id}").status_code == 200
    assert reader.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "validating_files"
    for method, path in [("DELETE", f"/v1/files/{file_id}"), ("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel"),
                         ("DELETE", f"/v1/fine_tuning/jobs/{job_id}"), ("POST", "/v1/organization/api_keys")]:
        assert_error(reader.request(method, path, json={}), 403, code="insufficient_permissions")
    assert reader.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "validating_files"
    assert reader.get(f"/v1/files/{file_id}").status_code == 200


def test_a_rater_key_can_only_rate(clients: dict[str, httpx.Client]) -> None:
    """Raters rate (the feedback campaigns' two rating routes); files, jobs, models and admin routes are closed to
    them (every route is checked above; tests/feedback checks the rating routes with real campaigns)."""
    for path in ["/v1/files", "/v1/fine_tuning/jobs", "/v1/models", "/v1/organization"]:
        assert_error(clients["rater"].get(path), 403, code="insufficient_permissions")
