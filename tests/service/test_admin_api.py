"""The admin API: organizations, API keys (shown once, stored hashed, revoked at once), the audit log."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.service.helpers import BASE_MODEL, add_tenant, assert_error, chat_file, create_job, upload
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port, wait_for
from tuneforge.service.db.models import ApiKey

ACME_ADMIN = "tf-acme-admin-key-0123456789abcdef0123"


@pytest.fixture
def admin(api_server: ThreadServer) -> Iterator[httpx.Client]:
    """The bootstrap key: an admin of the default (operator's) organization."""
    with api_server.client() as client:
        yield client


@pytest.fixture
def acme(api_server: ThreadServer) -> Iterator[httpx.Client]:
    """An admin of another organization."""
    with add_tenant(api_server, "acme", ACME_ADMIN, "admin") as client:
        yield client


def _new_key(client: httpx.Client, role: str = "member", name: str = "", org: str | None = None) -> dict[str, Any]:
    path = f"/v1/organizations/{org}/api_keys" if org else "/v1/organization/api_keys"
    response = client.post(path, json={"name": name, "role": role})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _db_keys(server: ThreadServer) -> list[ApiKey]:
    with server.state.sessions() as session:
        return list(session.scalars(select(ApiKey)))


def test_the_bootstrap_key_is_an_admin_of_the_default_organization(admin: httpx.Client) -> None:
    keys = admin.get("/v1/organization/api_keys").json()["data"]
    assert [(k["role"], k["organization_id"], k["name"]) for k in keys] == [("admin", "default", "key file")]
    assert keys[0]["value"] is None
    org = admin.get("/v1/organization").json()
    assert org["id"] == "default" and org["object"] == "organization"
    assert org["usage"] == {"active_jobs": 0, "queued_jobs": 0, "gpus": 0, "stored_bytes": 0}


def test_a_key_is_shown_once_and_stored_hashed(api_server: ThreadServer, admin: httpx.Client) -> None:
    created = _new_key(admin, "member", "ci")
    secret = created["value"]
    assert secret.startswith("tf-") and len(secret) > 40
    assert created["redacted_value"] == f"{secret[:8]}…{secret[-4:]}"
    assert created["id"].startswith("key_") and created["role"] == "member" and created["name"] == "ci"
    again = admin.get(f"/v1/organization/api_keys/{created['id']}").json()
    assert again["value"] is None and again["redacted_value"] == created["redacted_value"]
    listed = admin.get("/v1/organization/api_keys").json()
    assert secret not in json.dumps(listed)
    stored = {k.public_id: k for k in _db_keys(api_server)}[created["id"]]
    assert stored.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps([k.__dict__ for k in _db_keys(api_server)], default=str)
    with api_server.client(secret) as member:
        assert member.get("/v1/files").status_code == 200


def test_last_used_is_recorded_without_a_write_per_request(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", free_port(), auth={"last_used_resolution_seconds": 2})
    server = ThreadServer(settings, start_executor=False).start()
    try:
        with server.client() as admin:
            key = _new_key(admin, "read_only")
            assert key["last_used_at"] is None
            with server.client(key["value"]) as reader:
                for _ in range(20):
                    assert reader.get("/v1/files").status_code == 200
                first = admin.get(f"/v1/organization/api_keys/{key['id']}").json()["last_used_at"]
                assert first is not None and abs(first - time.time()) < 5
                # 20 requests within the resolution: the recorded time did not move with each of them
                for _ in range(5):
                    reader.get("/v1/files")
                assert admin.get(f"/v1/organization/api_keys/{key['id']}").json()["last_used_at"] == first
                time.sleep(2.5)
                reader.get("/v1/files")
                assert admin.get(f"/v1/organization/api_keys/{key['id']}").json()["last_used_at"] > first
    finally:
        server.stop()


def test_a_revoked_key_is_refused_on_the_next_request(api_server: ThreadServer, admin: httpx.Client) -> None:
    key = _new_key(admin, "member")
    with api_server.client(key["value"]) as member:
        file_id = upload(member, chat_file())["id"]
        job_id = create_job(member, file_id)["id"]
        assert member.get("/v1/files").status_code == 200
        deleted = admin.delete(f"/v1/organization/api_keys/{key['id']}")
        assert deleted.json() == {"id": key["id"], "object": "organization.api_key.deleted", "deleted": True}
        error = assert_error(member.get("/v1/files"), 401, code="api_key_revoked")
        assert key["redacted_value"] in error["message"] and key["value"] not in error["message"]
        assert_error(member.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"stream": "true"}), 401)
        assert_error(member.post("/v1/files", files={"file": ("a.jsonl", chat_file())}), 401)
    assert admin.get("/v1/organization/api_keys").json()["data"][0]["id"] != key["id"]  # not listed by default
    everything = admin.get("/v1/organization/api_keys", params={"include_revoked": "true"}).json()["data"]
    assert [k["revoked_at"] is not None for k in everything if k["id"] == key["id"]] == [True]
    # what the key made stays with the organization
    assert admin.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200


def test_an_open_event_stream_ends_when_its_key_is_revoked(api_server: ThreadServer, admin: httpx.Client) -> None:
    key = _new_key(admin, "member")
    with api_server.client(key["value"]) as member:
        job_id = create_job(member, upload(member, chat_file())["id"])["id"]
        lines: list[str] = []

        def read() -> None:
            with member.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/events/stream",
                               params={"heartbeat": 1}) as response:
                for line in response.iter_lines():
                    lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for("the stream's first event", lambda: any(line.startswith("data:") for line in lines), timeout=30)
        admin.delete(f"/v1/organization/api_keys/{key['id']}")
        reader.join(timeout=15)  # the server's periodic read (2 s by default) notices the revocation
        assert not reader.is_alive(), "the stream outlived its key's revocation"
        assert "event: error" in lines


def test_the_last_admin_key_cannot_be_revoked_or_demoted(admin: httpx.Client) -> None:
    own = admin.get("/v1/organization/api_keys").json()["data"][0]["id"]
    assert_error(admin.delete(f"/v1/organization/api_keys/{own}"), 409, code="last_admin_key")
    assert_error(admin.post(f"/v1/organization/api_keys/{own}", json={"role": "member"}), 409, code="last_admin_key")
    second = _new_key(admin, "admin")
    assert admin.delete(f"/v1/organization/api_keys/{own}").status_code == 200
    assert_error(admin.get("/v1/organization"), 401, code="api_key_revoked")
    with httpx.Client(base_url=str(admin.base_url), headers={"Authorization": f"Bearer {second['value']}"}) as new:
        assert new.get("/v1/organization/api_keys").json()["data"][0]["id"] == second["id"]


def test_roles_can_be_changed_and_apply_at_once(api_server: ThreadServer, admin: httpx.Client) -> None:
    key = _new_key(admin, "member")
    with api_server.client(key["value"]) as client:
        assert upload(client, chat_file())["id"]
        changed = admin.post(f"/v1/organization/api_keys/{key['id']}", json={"role": "read_only", "name": "ro"})
        assert (changed.json()["role"], changed.json()["name"]) == ("read_only", "ro")
        assert_error(client.post("/v1/files", files={"file": ("a.jsonl", chat_file())}), 403,
                     code="insufficient_permissions")
        assert client.get("/v1/files").status_code == 200


def test_an_organization_admin_manages_only_their_own_organization(admin: httpx.Client, acme: httpx.Client) -> None:
    assert [o["id"] for o in acme.get("/v1/organizations").json()["data"]] == ["acme"]
    mine = admin.get("/v1/organization/api_keys").json()["data"][0]["id"]
    # another organization is exactly as missing as one that does not exist
    for path in ["/v1/organizations/{org}", "/v1/organizations/{org}/api_keys", "/v1/organizations/{org}/audit_logs",
                 f"/v1/organizations/{{org}}/api_keys/{mine}"]:
        foreign, missing = acme.get(path.format(org="default")), acme.get(path.format(org="nowhere"))
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json() == json.loads(missing.text.replace("nowhere", "default"))
    assert_error(acme.delete(f"/v1/organizations/default/api_keys/{mine}"), 404)
    assert_error(acme.get(f"/v1/organization/api_keys/{mine}"), 404)  # a key of another organization
    assert_error(acme.post("/v1/organizations", json={"id": "evil"}), 403, code="insufficient_permissions")
    assert_error(acme.post("/v1/organizations/acme", json={"limits": {"max_active_jobs": 1000}}), 403)
    # the operator's admin still has its key
    assert admin.get(f"/v1/organization/api_keys/{mine}").status_code == 200


def test_the_operator_creates_an_organization_and_its_first_admin_key(api_server: ThreadServer,
                                                                      admin: httpx.Client) -> None:
    created = admin.post("/v1/organizations", json={"id": "globex", "name": "Globex",
                                                     "limits": {"max_active_jobs": 2, "max_gpus": 8}})
    assert created.status_code == 200, created.text
    org = created.json()
    assert (org["id"], org["name"], org["limits"]["max_active_jobs"], org["limits"]["max_gpus"]) == (
        "globex", "Globex", 2, 8)
    assert org["limits"]["max_upload_bytes"] == api_server.settings.limits.max_upload_bytes  # the default
    first = _new_key(admin, "admin", "globex admin", org="globex")
    assert first["organization_id"] == "globex"
    with api_server.client(first["value"]) as globex:
        assert globex.get("/v1/organization").json()["id"] == "globex"
        file_id = upload(globex, chat_file())["id"]
        for _ in range(2):
            create_job(globex, file_id)
        assert_error(globex.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": file_id}), 429,
                     code="quota_exceeded")
        assert globex.get("/v1/organization").json()["usage"]["active_jobs"] == 2
        # the operator raises the limit; null returns a limit to the default
        raised = admin.post("/v1/organizations/globex", json={"limits": {"max_active_jobs": 3, "max_gpus": None}})
        assert raised.json()["limits"]["max_active_jobs"] == 3 and raised.json()["limits"]["max_gpus"] == 0
        create_job(globex, file_id)
        assert admin.get("/v1/fine_tuning/jobs").json()["data"] == []  # the operator's own jobs, not globex's
    assert_error(admin.post("/v1/organizations", json={"id": "globex"}), 409, code="organization_exists")


@pytest.mark.parametrize("body,param", [
    ({"id": "Upper Case"}, "id"),
    ({"id": ""}, "id"),
    ({"id": "x" * 65}, "id"),
    ({"id": "ok", "limits": {"max_active_jobs": 0}}, "limits.max_active_jobs"),
    ({"id": "ok", "limits": {"no_such_limit": 1}}, "limits.no_such_limit"),
    ({"id": "ok", "colour": "red"}, "colour"),
])
def test_bad_organizations_are_refused_with_the_field(admin: httpx.Client, body: dict[str, Any], param: str) -> None:
    assert_error(admin.post("/v1/organizations", json=body), 400, param=param)
    assert [o["id"] for o in admin.get("/v1/organizations").json()["data"]] == ["default"]


@pytest.mark.parametrize("body,param", [
    ({"role": "owner"}, "role"), ({"name": "n" * 129}, "name"), ({"role": "admin", "scopes": ["all"]}, "scopes"),
])
def test_bad_keys_are_refused_with_the_field(admin: httpx.Client, body: dict[str, Any], param: str) -> None:
    assert_error(admin.post("/v1/organization/api_keys", json=body), 400, param=param)
    assert len(admin.get("/v1/organization/api_keys").json()["data"]) == 1


def test_the_audit_log_records_who_did_what_when(api_server: ThreadServer, admin: httpx.Client,
                                                 acme: httpx.Client) -> None:
    me = admin.get("/v1/organization/api_keys").json()["data"][0]
    started = int(time.time())
    created = admin.post("/v1/organization/api_keys", json={"name": "bot", "role": "member"},
                         headers={"x-request-id": "audit-test-1"})
    key = created.json()
    admin.post(f"/v1/organization/api_keys/{key['id']}", json={"role": "read_only"})
    admin.delete(f"/v1/organization/api_keys/{key['id']}")
    admin.post("/v1/organizations", json={"id": "initech"})
    log = admin.get("/v1/organization/audit_logs").json()["data"]
    assert [e["type"] for e in log] == ["api_key.revoked", "api_key.updated", "api_key.created"]
    for entry in log:
        assert entry["object"] == "organization.audit_log" and entry["organization_id"] == "default"
        assert entry["actor"] == {"type": "api_key", "api_key": {
            "id": me["id"], "redacted_value": me["redacted_value"], "organization_id": "default"}}
        assert entry["resource_id"] == key["id"] and entry["effective_at"] >= started
    assert log[2]["request_id"] == "audit-test-1" == created.headers["x-request-id"]
    assert log[2]["details"] == {"name": "bot", "role": "member", "redacted_value": key["redacted_value"]}
    assert log[1]["details"] == {"changes_requested": {"role": "read_only"}}
    assert key["value"] not in json.dumps(log)
    # filters, and the new organization's own log
    only = admin.get("/v1/organization/audit_logs", params={"event_types[]": "api_key.created"}).json()["data"]
    assert [e["id"] for e in only] == [log[2]["id"]]
    page = admin.get("/v1/organization/audit_logs", params={"limit": 2}).json()
    assert page["has_more"] and len(page["data"]) == 2
    rest = admin.get("/v1/organization/audit_logs", params={"after": page["last_id"]}).json()["data"]
    assert [e["id"] for e in rest] == [log[2]["id"]]
    initech = admin.get("/v1/organizations/initech/audit_logs").json()["data"]
    assert [e["type"] for e in initech] == ["organization.created"]
    # another organization's admin sees nothing of it; members and readers cannot read audit logs
    assert acme.get("/v1/organization/audit_logs").json()["data"] == []
    member = _new_key(admin, "member")
    with api_server.client(member["value"]) as client:
        assert_error(client.get("/v1/organization/audit_logs"), 403, code="insufficient_permissions")


def test_key_ids_of_another_organization_are_404_on_every_key_route(api_server: ThreadServer, admin: httpx.Client,
                                                          acme: httpx.Client) -> None:
    """A key names its organization; ids of another organization's keys are 404 on every key route."""
    theirs = _new_key(acme, "member")
    for method in ("GET", "POST", "DELETE"):
        response = admin.request(method, f"/v1/organization/api_keys/{theirs['id']}", json={})
        assert_error(response, 404, code="api_key_not_found")
    with api_server.client(theirs["value"]) as client:
        assert client.get("/v1/organization").json()["id"] == "acme"
