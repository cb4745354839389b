"""The object-store contract, run against every backend (LocalStore, and S3Store on a real moto server)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.storage.conftest import MiB
from tuneforge.storage import ObjectNotFound, ObjectStore, open_store
from tuneforge.storage.local import LocalStore


class GeneratorStream(io.RawIOBase):
    """A non-seekable stream of ``total`` pseudo-random bytes produced on the fly (never all in memory)."""

    def __init__(self, total: int, chunk: int = 256 * 1024, seed: int = 7) -> None:
        self.remaining = total
        self.chunk = chunk
        self.block = hashlib.sha256(str(seed).encode()).digest() * (chunk // 32)
        self.counter = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def _next_block(self, n: int) -> bytes:
        self.counter += 1
        data = self.counter.to_bytes(8, "big") + self.block[8:n] if n > 8 else self.block[:n]
        self.digest.update(data)
        return data

    def read(self, size: int | None = -1) -> bytes:  # short reads on purpose, like a socket
        if self.remaining <= 0:
            return b""
        n = min(self.chunk, self.remaining, size if size is not None and size >= 0 else self.chunk)
        self.remaining -= n
        return self._next_block(n)


def sha256_of(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def read_chunks(fh: Any, size: int = MiB) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk


# -- basics --


def test_put_get_overwrite_and_stat(store: ObjectStore) -> None:
    assert store.put_bytes("files/file-1", b"hello") == 5
    assert store.get_bytes("files/file-1") == b"hello"
    assert store.stat("files/file-1").size == 5 and store.stat("files/file-1").key == "files/file-1"
    store.put_bytes("files/file-1", b"second version")
    assert store.get_bytes("files/file-1") == b"second version"
    assert store.exists("files/file-1") and not store.exists("files/file-2")


def test_empty_object(store: ObjectStore) -> None:
    assert store.put_bytes("jobs/j/empty", b"") == 0
    assert store.get_bytes("jobs/j/empty") == b"" and store.stat("jobs/j/empty").size == 0


def test_put_stream_of_unknown_length_and_streaming_read(store: ObjectStore) -> None:
    stream = GeneratorStream(3 * MiB + 123)
    assert store.put_stream("jobs/j/data.bin", stream) == 3 * MiB + 123  # type: ignore[arg-type]
    with store.open("jobs/j/data.bin") as fh:
        first = fh.read(10)
        rest = fh.read()
    assert len(first) == 10 and hashlib.sha256(first + rest).hexdigest() == stream.digest.hexdigest()


def test_put_file_and_download_file(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(200_000))
    assert store.put_file("models/m/weights.bin", src) == 200_000
    dest = tmp_path / "out" / "deep" / "w.bin"
    assert store.download_file("models/m/weights.bin", dest) == 200_000
    assert dest.read_bytes() == src.read_bytes()
    assert not dest.with_name("w.bin.part").exists()


def test_list_is_ordered_and_prefix_is_a_string_prefix(store: ObjectStore) -> None:
    for key in ["jobs/b/x", "jobs/a/2", "jobs/a/1", "jobs/ab/1", "files/f", "jobs/a/sub/deep"]:
        store.put_bytes(key, key.encode())
    assert [i.key for i in store.list("jobs/a/")] == ["jobs/a/1", "jobs/a/2", "jobs/a/sub/deep"]
    assert [i.key for i in store.list("jobs/a")] == ["jobs/a/1", "jobs/a/2", "jobs/a/sub/deep", "jobs/ab/1"]
    assert [(i.key, i.size) for i in store.list("files/")] == [("files/f", 7)]
    assert list(store.list("nothing/")) == []
    assert len(list(store.list(""))) == 6


def test_missing_objects(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound) as info:
        store.stat("files/missing")
    assert info.value.key == "files/missing" and "files/missing" in str(info.value)
    with pytest.raises(ObjectNotFound):
        store.open("files/missing")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("files/missing")
    with pytest.raises(KeyError):  # ObjectNotFound is a KeyError too
        store.get_bytes("files/missing")
    with pytest.raises(ObjectNotFound):
        store.download_file("files/missing", tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
    store.delete("files/missing")  # not an error


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    for key in ["jobs/j1/a", "jobs/j1/model/b", "jobs/j10/c", "jobs/j2/d"]:
        store.put_bytes(key, b"x")
    store.delete("jobs/j2/d")
    assert not store.exists("jobs/j2/d")
    assert store.delete_prefix("jobs/j1/") == 2
    assert [i.key for i in store.list("jobs/")] == ["jobs/j10/c"]
    assert store.delete_prefix("jobs/none/") == 0


def test_delete_prefix_many(store: ObjectStore) -> None:
    for i in range(30):
        store.put_bytes(f"jobs/many/checkpoints/step-{i}/f", b"x")
    assert store.delete_prefix("jobs/many/") == 30
    assert list(store.list("jobs/many/")) == []


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "../x", "a//b", "a/./b", "a\\b", "a/.."])
def test_invalid_keys_are_rejected(store: ObjectStore, key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.stat(key)
    with pytest.raises(ValueError):
        store.get_bytes(key)
    with pytest.raises(ValueError):
        store.delete(key)
    with pytest.raises(ValueError):
        store.put_file(key, tmp_path / "nope")  # the key is checked before the file is opened


def test_upload_dir_and_download_prefix(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    files = {"model.safetensors": os.urandom(300_000), "config.json": b"{}", "sub/opt.pt": os.urandom(70_000),
             "skip-me": b"no"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    keys = store.upload_dir(src, "jobs/j/checkpoints/step-5/", skip={"skip-me"})
    assert keys == ["jobs/j/checkpoints/step-5/config.json", "jobs/j/checkpoints/step-5/model.safetensors",
                    "jobs/j/checkpoints/step-5/sub/opt.pt"]
    assert [i.key for i in store.list("jobs/j/")] == keys
    out = tmp_path / "restored"
    paths = store.download_prefix("jobs/j/checkpoints/step-5", out)
    assert sorted(p.relative_to(out).as_posix() for p in paths) == ["config.json", "model.safetensors",
                                                                   "sub/opt.pt"]
    for name in ("config.json", "model.safetensors", "sub/opt.pt"):
        assert (out / name).read_bytes() == files[name]


def test_upload_dir_of_many_files(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        (src / f"shard-{i:03d}.bin").write_bytes(bytes([i]) * (1000 + i))
    keys = store.upload_dir(src, "models/many")
    assert len(keys) == 40 and keys == sorted(keys)
    assert {i.key: i.size for i in store.list("models/many/")} == {k: 1000 + n for n, k in enumerate(keys)}


def test_large_streamed_object_keeps_memory_bounded(store: ObjectStore, tmp_path: Path) -> None:
    """64 MiB from a generator, up and down, while Python allocations stay far below the object's size."""
    size = 64 * MiB
    stream = GeneratorStream(size, chunk=MiB)
    tracemalloc.start()
    try:
        assert store.put_stream("jobs/big/model.safetensors", stream) == size  # type: ignore[arg-type]
        _, peak_up = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with store.open("jobs/big/model.safetensors") as fh:
            down = sha256_of(read_chunks(fh))
        _, peak_down = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert down == stream.digest.hexdigest()
    assert store.stat("jobs/big/model.safetensors").size == size
    # S3: a 15 MiB budget (and the part being joined); local: 1 MiB chunks
    assert peak_up < 32 * MiB, f"upload peaked at {peak_up / MiB:.0f} MiB of Python memory"
    assert peak_down < 16 * MiB, f"download peaked at {peak_down / MiB:.0f} MiB of Python memory"
    dest = tmp_path / "big.bin"
    assert store.download_file("jobs/big/model.safetensors", dest) == size
    with open(dest, "rb") as fh:
        assert sha256_of(read_chunks(fh)) == stream.digest.hexdigest()


def test_presigned_url(store: ObjectStore) -> None:
    store.put_bytes("jobs/j/model/adapter.safetensors", b"weights")
    url = store.presigned_url("jobs/j/model/adapter.safetensors", 60)
    if isinstance(store, LocalStore):
        assert url is None  # the service signs its own links for the local store
        return
    assert url is not None
    response = httpx.get(url)  # plain HTTP, no credentials
    assert response.status_code == 200 and response.content == b"weights"
    assert "X-Amz-Expires=60" in url and "X-Amz-Signature=" in url
    default = store.presigned_url("jobs/j/model/adapter.safetensors")
    assert default is not None and "X-Amz-Expires=300" in default  # short by default
    with pytest.raises(ValueError):
        store.presigned_url("jobs/j/model/adapter.safetensors", 8 * 24 * 3600)


def test_open_store_urls(tmp_path: Path, moto_server: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.s3_server import MotoServer
    from tuneforge.storage.s3 import S3Store

    assert isinstance(open_store(tmp_path.as_uri()), LocalStore)
    assert isinstance(open_store(str(tmp_path / "plain")), LocalStore)
    assert isinstance(moto_server, MotoServer)
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    s3 = open_store("s3://tuneforge-test/some/prefix/")
    assert isinstance(s3, S3Store) and s3.url == "s3://tuneforge-test/some/prefix"
    assert s3.endpoint_url == moto_server.url and s3.prefix == "some/prefix"
    assert s3._client.meta.config.s3 == {"addressing_style": "path"}  # an endpoint means path-style
    s3.create_bucket()
    s3.put_bytes("k", b"v")
    assert S3Store.from_url("s3://tuneforge-test").get_bytes("some/prefix/k") == b"v"
    with pytest.raises(ValueError):
        open_store("s3:///no-bucket")
    with pytest.raises(ValueError):
        open_store("s3://bucket/p?region=x")
    with pytest.raises(ValueError):
        open_store("gs://bucket/p")


def test_presigned_url_expires(moto_server: object, proxy: object) -> None:
    """moto does not check expiry; the proxy in front of it does, as S3 does."""
    from tests.storage.conftest import make_s3_store
    from tests.support.s3_server import FaultProxy

    assert isinstance(proxy, FaultProxy)
    s3 = make_s3_store(proxy.url)
    s3.put_bytes("jobs/j/model/a.bin", b"abc")
    url = s3.presigned_url("jobs/j/model/a.bin", 1)
    assert httpx.get(url).content == b"abc"
    time.sleep(2.1)
    expired = httpx.get(url)
    assert expired.status_code == 403 and b"expired" in expired.content
