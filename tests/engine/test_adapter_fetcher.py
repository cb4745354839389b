"""The engine pod's adapter-fetcher sidecar and weight fetcher (``python -m tuneforge.engine.adapter_fetcher``),
as real processes over a local object store: copies checked against the manifest, bad input refused, requests
without the shared bearer token refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import stop_process
from tests.support.waiting import free_port, wait_for
from tuneforge.contracts.servingengine import FETCHER_TOKEN_ENV
from tuneforge.storage import open_store
from tuneforge.storage.manifest import publish_dir

pytestmark = pytest.mark.timeout(120)
MODULE = "tuneforge.engine.adapter_fetcher"
TOKEN = "fetcher-token-of-the-test-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def publish(store_dir: Path, src: Path, prefix: str) -> None:
    src.mkdir(parents=True)
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(os.urandom(1024))
    (src / "optimizer.pt").write_bytes(b"x" * 10)
    publish_dir(open_store(store_dir.as_uri()), src, prefix)


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    store_dir, root = tmp_path / "store", tmp_path / "adapters"
    store_dir.mkdir()
    port = free_port()
    log = open(tmp_path / "fetcher.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", MODULE, "serve", "--store", store_dir.as_uri(), "--dir", str(root),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, FETCHER_TOKEN_ENV: TOKEN})
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "fetcher.log").read_text()
        try:
            return httpx.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("adapter fetcher", healthy, 60)
    try:
        yield url, store_dir, root
    finally:
        stop_process(proc, 10)
        log.close()


def test_fetch_checks_the_manifest_and_evicts(sidecar: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, store_dir, root = sidecar
    publish(store_dir, tmp_path / "src", "jobs/ftjob-1/checkpoints/step-10")
    with httpx.Client(base_url=url, trust_env=False, timeout=30, headers=AUTH) as http:
        files = ["adapter_config.json", "adapter_model.safetensors"]
        r = http.post("/fetch", json={"name": "ft:base:org:x:step-10", "prefix": "jobs/ftjob-1/checkpoints/step-10",
                                      "files": files})
        assert r.status_code == 200, r.text
        path = Path(r.json()["path"])
        assert path.is_relative_to(root) and sorted(p.name for p in path.iterdir()) == sorted([*files, ".complete"])
        assert (path / "adapter_model.safetensors").read_bytes() == (
            tmp_path / "src" / "adapter_model.safetensors").read_bytes()
        again = http.post("/fetch", json={"name": "ft:other", "prefix": "jobs/ftjob-1/checkpoints/step-10",
                                          "files": files})
        assert again.json()["path"] == str(path)

        # two names share the copy: it goes with the last of them
        assert http.delete("/adapters/ft:base:org:x:step-10").json()["deleted"] is True
        assert path.exists()
        assert http.delete("/adapters/ft:other").json()["deleted"] is True
        assert not path.exists()
        assert http.delete("/adapters/ft:never").json()["deleted"] is False

        # a damaged object in the store: refused, nothing left behind
        publish(store_dir, tmp_path / "src2", "jobs/ftjob-2/model")
        (store_dir / "jobs/ftjob-2/model/adapter_model.safetensors").write_bytes(b"tampered")
        bad = http.post("/fetch", json={"name": "ft:two", "prefix": "jobs/ftjob-2/model"})
        assert bad.status_code == 502 and "do not match their manifest" in bad.json()["error"]["message"]
        missing = http.post("/fetch", json={"name": "ft:three", "prefix": "jobs/ftjob-3/model"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "adapter_not_published"
        lacking = http.post("/fetch", json={"name": "ft:one", "prefix": "jobs/ftjob-1/checkpoints/step-10",
                                            "files": ["adapter_config.json", "nope.bin"]})
        assert lacking.status_code == 404 and "nope.bin" in lacking.json()["error"]["message"]


@pytest.mark.parametrize("body", [
    {"name": "../x", "prefix": "jobs/a/model"},
    {"name": "ok", "prefix": "../../etc"},
    {"name": "ok", "prefix": "/abs/path"},
    {"name": "ok", "prefix": "jobs/a/model", "files": ["../adapter_config.json"]},
    {"name": "ok", "prefix": "jobs/a/model", "files": "adapter_config.json"},
    {"name": "", "prefix": "jobs/a/model"},
    ["not", "an", "object"],
])
def test_bad_fetch_requests_are_refused(sidecar: tuple[str, Path, Path], body: object) -> None:
    url, _, root = sidecar
    r = httpx.post(f"{url}/fetch", json=body, trust_env=False, timeout=10, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert not any(root.iterdir())
    assert httpx.post(f"{url}/fetch", content=b"{not json", trust_env=False, timeout=10,
                      headers=AUTH).status_code == 400


WRONG_AUTHORIZATIONS = [
    None, "", "Bearer", f"Bearer  {TOKEN} x", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x",
    f"Bearer x{TOKEN}", f"Bearer {TOKEN.upper()}", TOKEN, "Bearer \u00e9t\u00e9-not-latin-1-\u4e2d\u6587-0123456789",
]


def test_requests_without_the_token_are_refused(sidecar: tuple[str, Path, Path], tmp_path: Path) -> None:
    """Without the api's token nothing is copied from the store and nothing is deleted; /health stays open."""
    url, store_dir, root = sidecar
    publish(store_dir, tmp_path / "src", "jobs/ftjob-1/model")
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
        for authorization in WRONG_AUTHORIZATIONS:
            headers = {} if authorization is None else {"Authorization": authorization.encode("utf-8")}
            for method, path, body in (("POST", "/fetch", {"name": "ft:a", "prefix": "jobs/ftjob-1/model"}),
                                       ("DELETE", "/adapters/ft:a", None), ("GET", "/fetch", None),
                                       ("GET", "/nowhere", None)):
                r = http.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (authorization, method, path, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                error = r.json()["error"]
                assert error["code"] == "invalid_token" and "bearer token" in error["message"]
                assert error["type"] == "invalid_request_error" and TOKEN not in r.text
        assert not root.exists() or not any(root.iterdir())
        assert http.get("/health").status_code == 200
        # the right token (the scheme is case-insensitive) is accepted; the copy is made, and deleted only with it
        r = http.post("/fetch", json={"name": "ft:a", "prefix": "jobs/ftjob-1/model"},
                      headers={"Authorization": f"bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        copy = Path(r.json()["path"])
        assert copy.exists()
        assert http.delete("/adapters/ft:a", headers={"Authorization": f"Bearer {TOKEN[:-1]}"}).status_code == 401
        assert http.delete("/adapters/ft:a").status_code == 401
        assert copy.exists()
        assert http.delete("/adapters/ft:a", headers=AUTH).json()["deleted"] is True
        assert not copy.exists()


@pytest.mark.parametrize("token", [None, "", "short-token"])
def test_the_sidecar_does_not_start_without_a_token(tmp_path: Path, token: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != FETCHER_TOKEN_ENV}
    if token is not None:
        env[FETCHER_TOKEN_ENV] = token
    done = subprocess.run([sys.executable, "-m", MODULE, "serve", "--store", (tmp_path / "store").as_uri(), "--dir",
                           str(tmp_path / "adapters"), "--port", str(free_port())], env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"needs a bearer token of at least 16 characters in {FETCHER_TOKEN_ENV}".encode() in done.stderr


def test_weights_from_a_store_prefix_are_linked_into_place(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    publish(store_dir, tmp_path / "src", "models/tiny")
    dest = tmp_path / "models" / "base"
    dest.parent.mkdir()
    for _ in range(2):  # a restarted init container links again
        done = subprocess.run([sys.executable, "-m", MODULE, "weights", "--store", store_dir.as_uri(), "--prefix",
                               "models/tiny", "--dest", str(dest)], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert dest.is_symlink() and (dest / "adapter_config.json").read_text() == '{"r": 8}'
    failed = subprocess.run([sys.executable, "-m", MODULE, "weights", "--store", store_dir.as_uri(), "--prefix",
                             "models/none", "--dest", str(dest)], capture_output=True, timeout=60)
    assert failed.returncode == 1 and b"tuneforge: cannot fetch the base weights" in failed.stderr
