"""The end-to-end job with every byte in S3 (a moto server over HTTP): the deployment's configuration, by env.

The service process and the trainer subprocess it starts both get ``TUNEFORGE_STORAGE_URL=s3://...`` and
``AWS_ENDPOINT_URL``; the base model is read from the bucket's model registry (``models/{name}/``); the tuned model
is downloaded through presigned URLs, straight from the bucket; deleting the job removes its objects.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.data import write_chat_file
from tests.e2e.test_end_to_end import _load_and_generate
from tests.support.live_server import ProcessServer, wait_for_status
from tests.support.s3_server import MotoServer

pytestmark = pytest.mark.slow

BUCKET = "tuneforge-e2e"
BASE_MODEL = "tiny-llama-s3"  # registered in the bucket, as `tuneforge models register` does


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_env(moto: MotoServer, tmp_path: Path) -> dict[str, str]:
    return {
        **moto.env(),
        "TUNEFORGE_STORAGE_URL": f"s3://{BUCKET}/e2e-{uuid.uuid4().hex[:8]}",
        "TUNEFORGE_MODEL_CACHE": str(tmp_path / "model-cache"),  # the trainer fetches the base model afresh
    }


@pytest.fixture
def bucket(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The store as the service sees it (for setup and checks from the test)."""
    from tuneforge.storage.s3 import S3Store

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    store = S3Store.from_url(s3_env["TUNEFORGE_STORAGE_URL"])
    store.create_bucket()
    return store


@pytest.fixture
def s3_server(tmp_path: Path, s3_env: dict[str, str], bucket: Any) -> Iterator[ProcessServer]:
    srv = ProcessServer(tmp_path / "home", env=s3_env).start()
    yield srv
    srv.stop()


def test_job_end_to_end_on_s3(s3_server: ProcessServer, bucket: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    from tests.support.download import download_all
    from tests.support.models import register_model

    # the base model goes into the bucket's model registry, as `tuneforge models register` puts it there
    register_model(bucket, tiny_model_dir, BASE_MODEL)

    client = s3_server.client()
    data = write_chat_file(tmp_path / "train.jsonl")
    with open(data, "rb") as fh:
        file = client.post("/v1/files", files={"file": ("train.jsonl", fh)}, data={"purpose": "fine-tune"}).json()
    assert bucket.get_bytes(f"files/{file['id']}") == data.read_bytes()

    job = client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL, "training_file": file["id"], "suffix": "s3", "seed": 3,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    })
    assert job.status_code == 200, job.text
    job = job.json()
    final = wait_for_status(client, job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert final["status"] == "succeeded", (final, s3_server.log_tail())

    # everything the job wrote is in the bucket, and nothing in the service's home
    keys = [info.key for info in bucket.list(f"jobs/{job['id']}/")]
    assert f"jobs/{job['id']}/model/manifest.json" in keys and f"jobs/{job['id']}/metrics.jsonl" in keys
    local_objects = s3_server.home / "objects"
    assert not local_objects.exists() or not any(p.is_file() for p in local_objects.rglob("*"))
    assert bucket.incomplete_uploads() == []

    # artifacts come straight from the bucket through presigned URLs, verified against the manifest
    items = client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts").json()["data"]
    assert items and all("X-Amz-Signature=" in i["url"] for i in items)
    out = tmp_path / "download"
    names = download_all(s3_server.url, s3_server.api_key, job["id"], out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["name"] for f in manifest["files"]} | {"manifest.json"} == set(names)
    assert isinstance(_load_and_generate(tiny_model_dir, out), str)

    # deleting the job removes its objects; deleting the file removes the upload
    deleted = client.delete(f"/v1/fine_tuning/jobs/{job['id']}")
    assert deleted.status_code == 200, deleted.text
    assert list(bucket.list(f"jobs/{job['id']}/")) == []
    assert httpx.get(items[0]["url"]).status_code == 404  # the old link finds nothing
    assert client.delete(f"/v1/files/{file['id']}").status_code == 200
    assert not bucket.exists(f"files/{file['id']}")
