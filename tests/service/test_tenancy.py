"""Organizations are isolated: another tenant's ids behave exactly like ids that do not exist."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.helpers import (
    BASE_MODEL,
    add_tenant,
    assert_error,
    chat_file,
    create_job,
    load_job,
    store_snapshot,
    update_job,
    upload,
)
from tests.support.live_server import ThreadServer

B_KEY = "tf-second-tenant-key-0123456789abcdef"


@pytest.fixture
def other(api_server: ThreadServer) -> Iterator[httpx.Client]:
    with add_tenant(api_server, "acme", B_KEY) as client:
        yield client


def assert_like_missing(foreign: httpx.Response, missing: httpx.Response, foreign_id: str, missing_id: str) -> None:
    """Same status and same body once the ids are swapped: nothing tells a foreign id from a made-up one."""
    assert foreign.status_code == missing.status_code == 404, (foreign.text, missing.text)
    assert_error(foreign, 404)
    assert foreign.json() == _swap(missing.json(), missing_id, foreign_id)


def _swap(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return value.replace(old, new) if isinstance(value, str) else value


def test_the_second_key_belongs_to_another_organization(client: httpx.Client, other: httpx.Client) -> None:
    file_id = upload(other, chat_file(), "b.jsonl")["id"]
    assert create_job(other, file_id)["organization_id"] == "acme"
    assert client.get("/v1/files").json()["data"] == []


def test_files_of_another_tenant_are_invisible(client: httpx.Client, other: httpx.Client,
                                               api_server: ThreadServer) -> None:
    content = chat_file(3)
    file_id = upload(client, content, "mine.jsonl")["id"]
    missing = "file-000000000000000000000000"
    assert other.get("/v1/files").json()["data"] == []
    for method, suffix in [("GET", ""), ("GET", "/content"), ("DELETE", "")]:
        assert_like_missing(other.request(method, f"/v1/files/{file_id}{suffix}"),
                            other.request(method, f"/v1/files/{missing}{suffix}"), file_id, missing)
    # the owner still has it, content intact
    assert client.get(f"/v1/files/{file_id}").status_code == 200
    assert client.get(f"/v1/files/{file_id}/content").content == content
    assert f"files/{file_id}" in store_snapshot(api_server)


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_another_tenants_file_cannot_be_used_in_a_job(client: httpx.Client, other: httpx.Client,
                                                      param: str) -> None:
    theirs = upload(client, chat_file(), "a.jsonl")["id"]
    own = upload(other, chat_file(), "b.jsonl")["id"]
    missing = "file-000000000000000000000000"

    def attempt(file_id: str) -> httpx.Response:
        body = {"model": BASE_MODEL, "training_file": own, param: file_id}
        return other.post("/v1/fine_tuning/jobs", json=body)

    foreign = attempt(theirs)
    assert_error(foreign, 404, code="file_not_found", param=param)
    assert_like_missing(foreign, attempt(missing), theirs, missing)
    assert other.get("/v1/fine_tuning/jobs").json()["data"] == []


@pytest.mark.parametrize("method,suffix", [
    ("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/checkpoints"), ("GET", "/artifacts"),
])
def test_jobs_of_another_tenant_are_invisible(client: httpx.Client, other: httpx.Client, api_server: ThreadServer,
                                              method: str, suffix: str) -> None:
    job = create_job(client, upload(client, chat_file())["id"])
    job_id = job["id"]
    missing = "ftjob-000000000000000000000000"
    assert_like_missing(other.request(method, f"/v1/fine_tuning/jobs/{job_id}{suffix}"),
                        other.request(method, f"/v1/fine_tuning/jobs/{missing}{suffix}"), job_id, missing)
    assert other.get("/v1/fine_tuning/jobs").json()["data"] == []
    # the owner's job is untouched (in particular not cancelled) and has no extra events
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json() == job
    assert len(client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]) == 1
    assert load_job(api_server, job_id).status == "validating_files"


def test_idempotency_keys_are_per_tenant(client: httpx.Client, other: httpx.Client) -> None:
    mine = create_job(client, upload(client, chat_file())["id"], headers={"Idempotency-Key": "nightly"})
    theirs = create_job(other, upload(other, chat_file())["id"], headers={"Idempotency-Key": "nightly"})
    assert theirs["id"] != mine["id"]
    assert theirs["organization_id"] == "acme" and mine["organization_id"] == "default"
    assert [j["id"] for j in other.get("/v1/fine_tuning/jobs").json()["data"]] == [theirs["id"]]


@pytest.mark.limits(max_active_jobs_per_tenant=1)
def test_quota_is_per_tenant(client: httpx.Client, other: httpx.Client, api_server: ThreadServer) -> None:
    create_job(client, upload(client, chat_file())["id"])
    assert_error(client.post("/v1/fine_tuning/jobs",
                             json={"model": BASE_MODEL, "training_file": upload(client, chat_file())["id"]}), 429)
    create_job(other, upload(other, chat_file())["id"])


def test_tuned_models_are_per_tenant(client: httpx.Client, other: httpx.Client, api_server: ThreadServer) -> None:
    job = create_job(client, upload(client, chat_file())["id"], suffix="mine")
    name = f"ft:{BASE_MODEL}:default:mine:{job['id'].removeprefix('ftjob-')[:12]}"
    update_job(api_server, job["id"], status="succeeded", fine_tuned_model=name, finished_at=job["created_at"])
    assert name in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert client.get(f"/v1/models/{name}").json()["fine_tuning_job_id"] == job["id"]
    assert name not in [m["id"] for m in other.get("/v1/models").json()["data"]]
    missing = f"ft:{BASE_MODEL}:default:mine:000000000000"
    assert_like_missing(other.get(f"/v1/models/{name}"), other.get(f"/v1/models/{missing}"), name, missing)


def test_cursor_of_another_tenant_is_like_an_unknown_cursor(client: httpx.Client, other: httpx.Client) -> None:
    """A foreign id as ``after`` must not leak where it sits in the other tenant's list."""
    b1 = upload(other, chat_file(), "b1.jsonl")["id"]
    a1 = upload(client, chat_file(), "a1.jsonl")["id"]
    b2 = upload(other, chat_file(), "b2.jsonl")["id"]
    unknown = other.get("/v1/files", params={"after": "file-000000000000000000000000"}).json()
    foreign = other.get("/v1/files", params={"after": a1}).json()
    assert [f["id"] for f in unknown["data"]] == [b2, b1]
    assert foreign == unknown

    jb1 = create_job(other, b1)["id"]
    ja1 = create_job(client, a1)["id"]
    jb2 = create_job(other, b2)["id"]
    unknown_jobs = other.get("/v1/fine_tuning/jobs", params={"after": "ftjob-000000000000000000000000"}).json()
    foreign_jobs = other.get("/v1/fine_tuning/jobs", params={"after": ja1}).json()
    assert [j["id"] for j in unknown_jobs["data"]] == [jb2, jb1]
    assert foreign_jobs == unknown_jobs

    # events: a cursor from another job (even of the same tenant) does not page this job's events
    a_event = client.get(f"/v1/fine_tuning/jobs/{ja1}/events").json()["data"][0]["id"]
    other.post(f"/v1/fine_tuning/jobs/{jb1}/cancel")
    unknown_events = other.get(f"/v1/fine_tuning/jobs/{jb1}/events",
                               params={"after": "ftevent-000000000000000000000000"}).json()
    foreign_events = other.get(f"/v1/fine_tuning/jobs/{jb1}/events", params={"after": a_event}).json()
    assert len(unknown_events["data"]) == 2
    assert foreign_events == unknown_events


def test_a_tenant_api_key_is_not_a_job_token(client: httpx.Client, other: httpx.Client,
                                             api_server: ThreadServer) -> None:
    job_id = create_job(client, upload(client, chat_file())["id"])["id"]
    update_job(api_server, job_id, status="running")
    payload = {"events": [{"kind": "log", "message": "hi", "seq": 1}]}
    for key in (api_server.api_key, B_KEY):
        resp = httpx.post(f"{api_server.url}/internal/v1/jobs/{job_id}/progress", json=payload,
                          headers={"Authorization": f"Bearer {key}"})
        assert_error(resp, 401, code="invalid_api_key")
    assert len(client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]) == 1
