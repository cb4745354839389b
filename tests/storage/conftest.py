"""One object-store suite for every backend: the local directory and S3 (a real moto server over HTTP).

The S3 half also runs against MinIO when infra/testbed/minio/build.sh has built it (it is not built in CI: a
10-minute Go build for a second opinion on S3 compatibility; ``TUNEFORGE_TEST_MINIO=1`` builds it on demand).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3_server import TEST_ENV, FaultProxy, MinioServer, MotoServer
from tuneforge.storage.base import ObjectStore
from tuneforge.storage.local import LocalStore

BUCKET = "tuneforge-test"
MiB = 1 << 20
MINIO_BUILD = Path(__file__).resolve().parents[2] / "infra" / "testbed" / "minio" / "build.sh"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


def boto_session() -> Any:
    import boto3

    return boto3.session.Session(
        aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=TEST_ENV["AWS_DEFAULT_REGION"],
    )


def make_s3_store(endpoint: str, prefix: str | None = None, **settings: Any) -> Any:
    """A store on its own prefix of the test bucket; small parts so multipart paths run on small data."""
    from tuneforge.storage.s3 import S3Settings, S3Store

    defaults: dict[str, Any] = {"multipart_threshold": 5 * MiB, "part_size": 5 * MiB, "max_inflight": 4,
                                "memory_budget": 15 * MiB, "file_concurrency": 4, "max_attempts": 4,
                                "retry_mode": "standard"}
    defaults.update(settings)
    store = S3Store(BUCKET, prefix if prefix is not None else f"t-{uuid.uuid4().hex[:12]}",
                    settings=S3Settings(**defaults), endpoint_url=endpoint, session=boto_session())
    store.create_bucket()
    return store


@pytest.fixture(scope="session")
def minio_server() -> Iterator[MinioServer]:
    mode = "" if os.environ.get("TUNEFORGE_TEST_MINIO") == "1" else "--print-path"
    binary = subprocess.run(["bash", str(MINIO_BUILD), *([mode] if mode else [])], check=True,
                            stdout=subprocess.PIPE, text=True).stdout.strip()
    if not os.access(binary, os.X_OK):
        pytest.skip("MinIO is not built (run infra/testbed/minio/build.sh or set TUNEFORGE_TEST_MINIO=1)")
    with tempfile.TemporaryDirectory(prefix="tuneforge-minio-") as data:
        server = MinioServer(binary, data).start()
        yield server
        server.stop()


@pytest.fixture(params=["local", "s3", "minio"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    server: MotoServer | MinioServer = request.getfixturevalue(f"{request.param.replace('s3', 'moto')}_server")
    s3 = make_s3_store(server.url)
    yield s3
    s3.close()


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.url) as p:
        yield p


@pytest.fixture
def faulty_store(proxy: FaultProxy) -> Iterator[Any]:
    """An S3 store that reaches moto through the fault proxy (3 attempts per request: failures end fast)."""
    s3 = make_s3_store(proxy.url, max_attempts=3)
    yield s3
    s3.close()
