"""The service on each store backend: uploads, file content, artifact links, and deleting files and jobs."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import add_tenant, assert_error, chat_file, create_job, update_job, upload
from tests.storage.conftest import BUCKET
from tests.support.live_server import ThreadServer, make_settings
from tests.support.s3_server import MotoServer
from tests.support.waiting import free_port
from tuneforge.storage import ObjectStore


@pytest.fixture(params=["local", "s3"])
def svc(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadServer]:
    """The API (no executor) on the local store or on S3 (moto), configured the way a deployment is: by env."""
    storage_url = ""
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        for name, value in moto.env().items():
            monkeypatch.setenv(name, value)
        storage_url = f"s3://{BUCKET}/svc-{uuid.uuid4().hex[:8]}"
        from tuneforge.storage.s3 import S3Store

        S3Store.from_url(storage_url).create_bucket()
    settings = make_settings(tmp_path / "home", free_port(), storage_url=storage_url)
    server = ThreadServer(settings, start_executor=False).start()
    yield server
    server.stop()


def store_of(server: ThreadServer) -> ObjectStore:
    store: ObjectStore = server.state.store
    return store


def test_upload_content_and_delete_file(svc: ThreadServer) -> None:
    content = chat_file(4)
    with svc.client() as client:
        file = upload(client, content)
        store = store_of(svc)
        assert store.get_bytes(f"files/{file['id']}") == content
        got = client.get(f"/v1/files/{file['id']}/content")
        assert got.status_code == 200 and got.content == content
        assert client.delete(f"/v1/files/{file['id']}").json()["deleted"] is True
        assert not store.exists(f"files/{file['id']}")


def _publish_fake_model(store: ObjectStore, job_id: str) -> dict[str, bytes]:
    files = {"adapter_model.safetensors": b"\x00weights" * 1000, "adapter_config.json": b'{"r": 8}'}
    for name, data in files.items():
        store.put_bytes(f"jobs/{job_id}/model/{name}", data)
    manifest = {"format": "tuneforge.model/v1", "files": [
        {"name": n, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()]}
    store.put_bytes(f"jobs/{job_id}/model/manifest.json", json.dumps(manifest).encode())
    store.put_bytes(f"jobs/{job_id}/checkpoints/step-2/adapter_model.safetensors", b"ckpt")
    store.put_bytes(f"jobs/{job_id}/metrics.jsonl", b"{}\n")
    return files


def test_artifact_links(svc: ThreadServer) -> None:
    with svc.client() as client:
        file = upload(client, chat_file(3))
        job = create_job(client, file["id"])
        files = _publish_fake_model(store_of(svc), job["id"])
        update_job(svc, job["id"], status="succeeded")
        items = client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts").json()["data"]
    assert {i["name"] for i in items} == {*files, "manifest.json"}
    for item in items:
        if svc.state.settings.storage.url.startswith("s3://"):
            assert "X-Amz-Signature=" in item["url"]  # straight from the bucket, not through the service
            assert f"X-Amz-Expires={svc.state.settings.storage.link_expiry_seconds}" in item["url"]
        response = httpx.get(item["url"])  # no API key: the link is the credential
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == item["sha256"]


def test_delete_job(svc: ThreadServer) -> None:
    store = store_of(svc)
    with svc.client() as client:
        file = upload(client, chat_file(3))
        job = create_job(client, file["id"])
        other = create_job(client, file["id"])
        _publish_fake_model(store, job["id"])
        _publish_fake_model(store, other["id"])

        # an active job cannot be deleted
        assert_error(client.delete(f"/v1/fine_tuning/jobs/{job['id']}"), 409, code="job_not_deletable")
        update_job(svc, job["id"], status="succeeded")
        # nor can another tenant's
        with add_tenant(svc, "org-b", "sk-other-tenant-key") as stranger:
            assert_error(stranger.delete(f"/v1/fine_tuning/jobs/{job['id']}"), 404)

        response = client.delete(f"/v1/fine_tuning/jobs/{job['id']}")
        assert response.status_code == 200, response.text
        assert response.json() == {"id": job["id"], "object": "fine_tuning.job", "deleted": True}
        assert list(store.list(f"jobs/{job['id']}/")) == []
        assert len(list(store.list(f"jobs/{other['id']}/"))) == 5  # untouched
        assert store.exists(f"files/{file['id']}")  # files are deleted on their own
        assert_error(client.get(f"/v1/fine_tuning/jobs/{job['id']}"), 404)
        assert_error(client.get(f"/v1/fine_tuning/jobs/{job['id']}/events"), 404)
        assert job["id"] not in {j["id"] for j in client.get("/v1/fine_tuning/jobs").json()["data"]}
        assert_error(client.delete(f"/v1/fine_tuning/jobs/{job['id']}"), 404)
