"""`tuneforge models push`: base models in the bucket's model cache (``models/{name}/``), published with a
``manifest.json`` written last; the trainer uses a ``models/{name}/`` prefix only once its manifest exists and
checks what it downloads against it. Every test but the slow CLI one runs on both backends."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.storage.conftest import make_s3_store
from tests.support.s3_server import MotoServer
from tuneforge.storage import MANIFEST_NAME, ObjectStore
from tuneforge.trainer.errors import BadInput, TrainerError
from tuneforge.trainer.models import CONVERTED_MARKER, publish_model_dir, resolve_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def fake_model(directory: Path, weights: bytes = b"\x01weights" * 5000) -> dict[str, bytes]:
    """What resolve_model checks for (config.json, *.safetensors) plus a nested file and a conversion marker."""
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": weights,
             "tokenizer.json": b'{"version": "1.0"}', "extra/special_tokens_map.json": b"{}"}
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    (directory / CONVERTED_MARKER).write_text('{"model_id": "fake"}')  # the local cache's, never published
    return files


def record_writes(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """(``start``|``done``, method, key) of every write and delete the store makes, in order (thread-safe: S3
    uploads a directory's files concurrently)."""
    log: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    for method in ("put_file", "put_bytes", "put_stream", "delete", "delete_prefix"):
        original = getattr(store, method)

        def wrapped(key: str, *args: Any, _original: Any = original, _method: str = method, **kwargs: Any) -> Any:
            with lock:
                log.append(("start", _method, key))
            result = _original(key, *args, **kwargs)
            with lock:
                log.append(("done", _method, key))
            return result

        monkeypatch.setattr(store, method, wrapped)
    return log


def test_push_writes_the_manifest_last(store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "fake"
    src.mkdir()
    files = fake_model(src)
    store.put_bytes(f"models/fake/{MANIFEST_NAME}", b'{"files": []}')  # an earlier push: replaced, not trusted
    store.put_bytes("models/fake/stale.safetensors", b"old")
    log = record_writes(store, monkeypatch)

    assert publish_model_dir(store, src, "fake") == "models/fake"

    manifest_key = f"models/fake/{MANIFEST_NAME}"
    # the old manifest goes before anything else changes, the new one comes after every file is stored
    assert log[0] == ("start", "delete", manifest_key)
    writes = [(phase, key) for phase, method, key in log if method.startswith("put")]
    first_manifest = next(i for i, (_, key) in enumerate(writes) if key == manifest_key)
    assert {key for _, key in writes[:first_manifest]} == {f"models/fake/{name}" for name in files}
    assert all(key == manifest_key for _, key in writes[first_manifest:])
    assert writes[-1] == ("done", manifest_key)

    manifest = json.loads(store.get_bytes(manifest_key))
    assert manifest["format"] == "tuneforge.model/v1" and manifest["base_model"] == "fake"
    assert {e["name"]: (e["bytes"], e["sha256"]) for e in manifest["files"]} == {
        name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()}
    # exactly the model: no conversion marker, no stale file of the earlier push
    assert sorted(i.key for i in store.list("models/fake/")) == sorted(
        [manifest_key] + [f"models/fake/{name}" for name in files])


def test_a_prefix_without_manifest_is_not_used(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "half"
    src.mkdir()
    files = fake_model(src)
    store.upload_dir(src, "models/half", skip={CONVERTED_MARKER})  # files, but the manifest never came

    for ref in ("half", "store:models/half"):
        with pytest.raises(BadInput, match=r"no manifest\.json under models/half/ in the object store"):
            resolve_model(ref, store)
    cached = tmp_path / "cache" / "store"
    assert not cached.exists() or not [p for p in cached.iterdir() if p.is_dir()]  # nothing downloaded

    publish_model_dir(store, src, "half")
    local = resolve_model("half", store)
    assert resolve_model("store:models/half", store) == local
    assert {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*")
            if p.is_file() and p.name != CONVERTED_MARKER} == files  # no manifest.json among the model's files


def test_downloads_are_checked_against_the_manifest(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "m"
    src.mkdir()
    fake_model(src, weights=b"A" * 4096)
    publish_model_dir(store, src, "m")
    store.put_bytes("models/m/model.safetensors", b"B" * 4096)  # same size, other bytes: not what was published
    with pytest.raises(TrainerError, match=r"model\.safetensors: sha256 differs from the manifest"):
        resolve_model("m", store)
    store.delete("models/m/config.json")
    with pytest.raises(TrainerError, match=r"config\.json: missing"):
        resolve_model("m", store)
    assert not any(p.name.startswith(".dl.") for p in (tmp_path / "cache" / "store").iterdir())  # no leftovers

    # pushed again (good this time): the local copy follows the new manifest
    publish_model_dir(store, src, "m")
    assert (resolve_model("m", store) / "model.safetensors").read_bytes() == b"A" * 4096
    (src / "model.safetensors").write_bytes(b"C" * 100)
    publish_model_dir(store, src, "m")
    assert (resolve_model("m", store) / "model.safetensors").read_bytes() == b"C" * 100


@pytest.mark.slow
def test_push_bundled_model_to_s3(moto_server: MotoServer) -> None:
    import os

    store = make_s3_store(moto_server.url)
    env = {**os.environ, **moto_server.env()}
    cmd = [sys.executable, "-m", "tuneforge.service.cli.main", "models", "push", "SmolLM2-135M-Instruct",
           "--store", store.url]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    local = Path(result.stdout.strip().splitlines()[-1])  # the trainer prints the converted model's directory
    pushed = {info.key: info.size for info in store.list("models/SmolLM2-135M-Instruct/")}
    expected = {f"models/SmolLM2-135M-Instruct/{p.relative_to(local).as_posix()}": p.stat().st_size
                for p in local.rglob("*") if p.is_file() and p.name != CONVERTED_MARKER}
    manifest_key = f"models/SmolLM2-135M-Instruct/{MANIFEST_NAME}"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {k.rsplit("/", 1)[1] for k in pushed}
    assert {k: v for k, v in pushed.items() if k != manifest_key} == expected
    manifest = json.loads(store.get_bytes(manifest_key))
    assert {f"models/SmolLM2-135M-Instruct/{e['name']}": e["bytes"] for e in manifest["files"]} == expected
    weights = next(e for e in manifest["files"] if e["name"] == "model.safetensors")
    assert weights["sha256"] == hashlib.sha256((local / "model.safetensors").read_bytes()).hexdigest()
    assert store.incomplete_uploads() == []
    store.delete_prefix("models/")
