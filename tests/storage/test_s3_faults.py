"""S3 under faults: a proxy in front of the moto server answers 500/503, drops connections or corrupts bodies.

Uploads retry and succeed through transient faults; persistent faults fail with a clear error and never leave
an object (or a dangling multipart upload) under the final key; damaged downloads are detected.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.storage.conftest import BUCKET, MiB, make_s3_store
from tests.support.s3_server import FaultProxy, MotoServer, Request, first_try
from tuneforge.storage import ChecksumMismatch, ObjectNotFound, StoreError

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

BIG = 17 * MiB  # four parts of 5 MiB (the last one 2 MiB)


def data_of(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def no_trace(store: Any, key: str) -> None:
    """Nothing under ``key``: no object and no multipart upload left open."""
    assert not store.exists(key)
    assert key not in store.incomplete_uploads()


def _observe(proxy: FaultProxy) -> list[Request]:
    """Every request the proxy sees from now on (a rule that never fires)."""
    seen: list[Request] = []

    def observe(r: Request) -> bool:
        seen.append(r)
        return False  # never a fault

    proxy.inject("500", observe)
    return seen


# -- per-part and whole-object checksums --


def test_checksums_are_sent_per_part_and_for_the_whole_object(faulty_store: Any, proxy: FaultProxy) -> None:
    seen = _observe(proxy)
    data = data_of(BIG)
    assert faulty_store.put_bytes("jobs/j/model/model.safetensors", data) == BIG
    parts = [r for r in seen if r.is_upload_part]
    assert len(parts) == 4 and all("x-amz-checksum-crc32" in r.headers for r in parts)
    create = next(r for r in seen if r.is_create_multipart)
    assert create.headers.get("x-amz-checksum-type") == "FULL_OBJECT"
    head = faulty_store._client.head_object(Bucket=BUCKET, Key=faulty_store._full("jobs/j/model/model.safetensors"),
                                            ChecksumMode="ENABLED")
    # the stored checksum is the CRC32 of the whole object (not a checksum of checksums): a full GET verifies it
    import base64
    import zlib

    assert head["ChecksumCRC32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert head.get("ChecksumType") == "FULL_OBJECT"
    small = [r for r in seen if r.is_put_object]
    faulty_store.put_bytes("jobs/j/small", b"tiny")
    assert all("x-amz-checksum-crc32" in r.headers for r in small)


@pytest.mark.parametrize("size,hint,parts", [
    (15 * MiB, 15 * MiB, 3),       # exactly three parts: no empty fourth one
    (15 * MiB, None, 3),           # unknown length, the stream ends on a part boundary
    (15 * MiB + 1, None, 4),       # one byte over: a fourth part of one byte
    (12 * MiB, 6 * MiB, 3),        # the hint was too small: the stream decides
    (11 * MiB, 40 * MiB, 3),       # the hint was too large: the stream decides
])  # fmt: skip
def test_parts_follow_the_stream_and_the_whole_object_crc32_is_right(
        faulty_store: Any, proxy: FaultProxy, size: int, hint: int | None, parts: int) -> None:
    """Each part is read once and CRC'd once (by its sender); the whole object's CRC32 is combined from the
    parts' and the server checks it (FULL_OBJECT): a wrong combination would fail the upload."""
    import base64
    import zlib

    seen = _observe(proxy)
    data = data_of(size, size % 97)
    assert faulty_store.put_stream("jobs/j/w.bin", io.BytesIO(data), hint) == size
    uploaded = [r for r in seen if r.is_upload_part]
    assert len(uploaded) == parts, [r.headers.get("content-length") for r in uploaded]
    head = faulty_store._client.head_object(Bucket=BUCKET, Key=faulty_store._full("jobs/j/w.bin"),
                                            ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert faulty_store.get_bytes("jobs/j/w.bin") == data


@pytest.mark.parametrize("mode", ["composite", "off"])
def test_other_checksum_modes(proxy: FaultProxy, mode: str, tmp_path: Path) -> None:
    """"composite" for servers without full-object checksums, "off" for servers that reject checksum headers."""
    store = make_s3_store(proxy.url, checksum=mode)
    seen = _observe(proxy)
    data = data_of(BIG, 11)
    assert store.put_bytes("jobs/j/w.bin", data) == BIG
    assert store.put_bytes("jobs/j/s.bin", b"small") == 5
    parts = [r for r in seen if r.is_upload_part or r.is_put_object]
    assert all(("x-amz-checksum-crc32" in r.headers) == (mode == "composite") for r in parts)
    assert not any(r.headers.get("x-amz-checksum-type") for r in seen)
    assert store.get_bytes("jobs/j/w.bin") == data and store.get_bytes("jobs/j/s.bin") == b"small"
    # a multipart object's composite checksum covers parts, not the object: one GET, not a ranged download
    # checked against it (moto's HEAD does not say COMPOSITE: the ETag's part count does)
    store.download_file("jobs/j/w.bin", tmp_path / "w.bin")
    assert (tmp_path / "w.bin").read_bytes() == data


# -- transient faults: retried, the upload succeeds --


@pytest.mark.parametrize("fault", ["500", "503", "slowdown", "drop"])
def test_uploads_survive_transient_faults(faulty_store: Any, proxy: FaultProxy, fault: str) -> None:
    # the first try of every request that writes fails: each part, the create, the complete, single puts
    proxy.inject(fault, first_try(lambda r: r.method in ("PUT", "POST")))
    big, small = data_of(BIG, 2), data_of(100_000, 3)
    assert faulty_store.put_bytes("jobs/j/big", big) == BIG
    assert faulty_store.put_bytes("jobs/j/small", small) == len(small)
    assert proxy.stats.faults[fault] == 4 + 2 + 1
    proxy.clear()
    assert faulty_store.get_bytes("jobs/j/big") == big and faulty_store.get_bytes("jobs/j/small") == small
    assert faulty_store.incomplete_uploads() == []


def test_upload_dir_survives_transient_faults(faulty_store: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    files = {f"shard-{i}.bin": data_of(200_000 + i, i) for i in range(12)}
    files["optimizer.pt"] = data_of(11 * MiB, 99)
    for name, blob in files.items():
        (src / name).write_bytes(blob)
    proxy.inject("503", first_try(lambda r: r.method in ("PUT", "POST")), every=3)
    keys = faulty_store.upload_dir(src, "jobs/j/checkpoints/step-1")
    assert len(keys) == len(files) and proxy.stats.faults["503"] >= 4
    proxy.clear()
    out = tmp_path / "out"
    faulty_store.download_prefix("jobs/j/checkpoints/step-1", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_complete_that_succeeded_but_lost_its_answer(faulty_store: Any, proxy: FaultProxy) -> None:
    """The server completes the upload and the connection drops; botocore retries; S3 (and moto) answer a
    repeated Complete with success."""
    proxy.inject("drop_after", lambda r: r.is_complete, times=1)
    data = data_of(BIG, 4)
    assert faulty_store.put_bytes("jobs/j/model/w.bin", data) == BIG
    assert proxy.stats.faults["drop_after"] == 1
    proxy.clear()
    assert faulty_store.get_bytes("jobs/j/model/w.bin") == data


def test_retried_complete_answered_no_such_upload(faulty_store: Any, proxy: FaultProxy,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Servers that are not idempotent answer the retried Complete with NoSuchUpload: the store accepts it only
    when the object under the key is the one it sent (size and full-object CRC32)."""
    proxy.inject("drop_after", lambda r: r.is_complete, times=1)
    proxy.inject("nosuchupload", lambda r: r.is_complete, times=1)
    data = data_of(BIG, 4)
    with caplog.at_level(logging.INFO, logger="tuneforge.storage.s3"):
        assert faulty_store.put_bytes("jobs/j/model/w.bin", data) == BIG
    assert proxy.stats.faults == {"drop_after": 1, "nosuchupload": 1}
    assert "retried after succeeding" in caplog.text
    # ... and refuses it when someone else's object is there
    faulty_store.put_bytes("jobs/j/model/x.bin", b"another writer")
    proxy.inject("nosuchupload", lambda r: r.is_complete, times=1)
    with pytest.raises(StoreError, match="NoSuchUpload"):
        faulty_store.put_bytes("jobs/j/model/x.bin", data)
    proxy.clear()
    assert faulty_store.get_bytes("jobs/j/model/x.bin") == b"another writer"


def test_downloads_retry_a_dropped_connection(faulty_store: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    data = data_of(3 * MiB, 5)
    faulty_store.put_bytes("files/f", data)
    proxy.inject("drop", lambda r: r.is_get_object, times=2)
    assert faulty_store.download_file("files/f", tmp_path / "f") == len(data)
    assert (tmp_path / "f").read_bytes() == data


# -- persistent faults: a clean failure and nothing published --


def test_persistent_part_failure_aborts_the_upload(faulty_store: Any, proxy: FaultProxy) -> None:
    proxy.inject("500", lambda r: r.is_upload_part and r.part_number == 3)
    with pytest.raises(StoreError) as info:
        faulty_store.put_bytes("jobs/j/model/model.safetensors", data_of(BIG))
    assert "jobs/j/model/model.safetensors" in str(info.value)
    assert proxy.stats.faults["500"] == 3  # max_attempts
    assert any(m == "DELETE" and "uploadId" in q for m, q, _ in proxy.stats.log)  # aborted
    proxy.clear()
    no_trace(faulty_store, "jobs/j/model/model.safetensors")


def test_persistent_complete_failure_leaves_nothing(faulty_store: Any, proxy: FaultProxy) -> None:
    proxy.inject("503", lambda r: r.is_complete)
    with pytest.raises(StoreError):
        faulty_store.put_bytes("jobs/j/w", data_of(BIG))
    proxy.clear()
    no_trace(faulty_store, "jobs/j/w")


def test_persistent_put_failure_keeps_the_previous_version(faulty_store: Any, proxy: FaultProxy) -> None:
    faulty_store.put_bytes("jobs/j/metrics.jsonl", b"old\n")
    proxy.inject("drop", lambda r: r.is_put_object)
    with pytest.raises(StoreError):
        faulty_store.put_bytes("jobs/j/metrics.jsonl", b"new\n")
    proxy.clear()
    assert faulty_store.get_bytes("jobs/j/metrics.jsonl") == b"old\n"


class FailingStream(io.RawIOBase):
    """Yields ``good`` bytes, then raises: a client that disconnects mid-upload, a disk that fails."""

    def __init__(self, good: int, exc: BaseException) -> None:
        self.left = good
        self.exc = exc

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.left <= 0:
            raise self.exc
        n = min(self.left, 1 << 20, size if size and size > 0 else 1 << 20)
        self.left -= n
        return b"x" * n


@pytest.mark.parametrize("exc", [OSError("disk gone"), KeyboardInterrupt()])
def test_interrupted_stream_publishes_nothing(faulty_store: Any, proxy: FaultProxy, exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        faulty_store.put_stream("files/upload", FailingStream(12 * MiB, exc))
    assert any(r[0] == "DELETE" and "uploadId" in r[1] for r in proxy.stats.log)  # aborted
    no_trace(faulty_store, "files/upload")
    # the store is still usable: every memory slot was given back
    assert faulty_store.put_bytes("files/after", data_of(BIG)) == BIG


def test_upload_dir_with_a_failing_file_raises(faulty_store: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(data_of(50_000, i))
    proxy.inject("500", lambda r: r.path.endswith("/f3.bin"))
    with pytest.raises(StoreError, match=r"f3\.bin"):
        faulty_store.upload_dir(src, "jobs/j/checkpoints/step-2")
    proxy.clear()
    assert not faulty_store.exists("jobs/j/checkpoints/step-2/f3.bin")


# -- damaged downloads --


def test_corrupted_download_is_detected(faulty_store: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    big, small = data_of(BIG, 6), data_of(300_000, 7)
    faulty_store.put_bytes("jobs/j/model/big.bin", big)
    faulty_store.put_bytes("jobs/j/model/small.bin", small)
    proxy.inject("corrupt", lambda r: r.is_get_object)
    for key in ("jobs/j/model/big.bin", "jobs/j/model/small.bin"):
        with pytest.raises(ChecksumMismatch, match="checksum mismatch") as info:
            faulty_store.get_bytes(key)
        assert info.value.key == key
        dest = tmp_path / "dl.bin"
        with pytest.raises(ChecksumMismatch):
            faulty_store.download_file(key, dest)
        assert not dest.exists() and not dest.with_name("dl.bin.part").exists()
        with pytest.raises(ChecksumMismatch), faulty_store.open(key) as fh:
            while fh.read(MiB):
                pass


def test_a_corrupted_transfer_is_fetched_again(faulty_store: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    data = data_of(BIG, 8)
    faulty_store.put_bytes("jobs/j/model/big.bin", data)
    proxy.inject("corrupt", lambda r: r.is_get_object, times=1)
    assert faulty_store.download_file("jobs/j/model/big.bin", tmp_path / "big.bin") == BIG
    assert (tmp_path / "big.bin").read_bytes() == data and proxy.stats.faults["corrupt"] == 1


def test_large_objects_download_as_verified_ranges(faulty_store: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    data, small = data_of(BIG, 12), data_of(1000, 13)
    faulty_store.put_bytes("jobs/j/model/big.bin", data)
    faulty_store.put_bytes("jobs/j/model/small.json", small)
    seen = _observe(proxy)
    assert faulty_store.download_file("jobs/j/model/big.bin", tmp_path / "big.bin") == BIG
    assert (tmp_path / "big.bin").read_bytes() == data and not (tmp_path / "big.bin.part").exists()
    gets = [r for r in seen if r.is_get_object]
    # four 5 MiB ranges of one version, each naming the ETag the HEAD saw
    assert {r.headers["range"] for r in gets} == {
        f"bytes={s}-{min(s + 5 * MiB, BIG) - 1}" for s in range(0, BIG, 5 * MiB)}
    assert len(gets) == 4
    assert len({r.headers["if-match"] for r in gets}) == 1
    # a listed prefix: the listing gives sizes, so the small file needs no HEAD and comes in one GET
    seen.clear()
    paths = faulty_store.download_prefix("jobs/j/model", tmp_path / "dir")
    assert sorted(p.name for p in paths) == ["big.bin", "small.json"]
    assert (tmp_path / "dir" / "big.bin").read_bytes() == data
    assert (tmp_path / "dir" / "small.json").read_bytes() == small
    heads = [r for r in seen if r.method == "HEAD"]
    assert len(heads) == 1 and heads[0].path.endswith("/big.bin")


def test_a_damaged_range_fails_the_whole_object_check(faulty_store: Any, proxy: FaultProxy,
                                                      tmp_path: Path) -> None:
    data = data_of(BIG, 14)
    faulty_store.put_bytes("jobs/j/model/big.bin", data)
    proxy.inject("corrupt", lambda r: r.is_get_object and r.headers.get("range", "").startswith("bytes=0-"))
    with pytest.raises(ChecksumMismatch, match="CRC32 of 4 ranges"):
        faulty_store.download_file("jobs/j/model/big.bin", tmp_path / "big.bin")
    assert not (tmp_path / "big.bin").exists() and not (tmp_path / "big.bin.part").exists()


def test_an_object_replaced_during_a_ranged_download_is_fetched_again(
        faulty_store: Any, proxy: FaultProxy, moto_server: MotoServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    old, new = data_of(BIG, 15), data_of(BIG + 3, 16)
    faulty_store.put_bytes("jobs/j/model/big.bin", old)
    direct = make_s3_store(moto_server.url, prefix=faulty_store.prefix)
    replaced: list[bool] = []

    def replace_once(r: Request) -> bool:
        if r.is_get_object and r.headers.get("range", "").startswith("bytes=0-") and not replaced:
            replaced.append(True)
            direct.put_bytes("jobs/j/model/big.bin", new)  # another writer, between the HEAD and the GETs
        return False

    proxy.inject("500", replace_once)
    # the ranges of the old version fail their If-Match (412); the retry sees the new version whole
    with caplog.at_level(logging.WARNING, logger="tuneforge.storage.s3"):
        assert faulty_store.download_file("jobs/j/model/big.bin", tmp_path / "big.bin") == len(new)
    assert (tmp_path / "big.bin").read_bytes() == new
    assert "PreconditionFailed" in caplog.text and "attempt 1 of 3" in caplog.text
    direct.close()


def test_missing_bucket_and_missing_key_are_clear(moto_server: MotoServer) -> None:
    from tests.storage.conftest import boto_session
    from tuneforge.storage.s3 import S3Settings, S3Store

    store = S3Store("no-such-bucket-here", "p", settings=S3Settings(max_attempts=2), endpoint_url=moto_server.url,
                    session=boto_session())
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        store.put_bytes("k", b"v")
    ok = make_s3_store(moto_server.url)
    with pytest.raises(ObjectNotFound):
        ok.get_bytes("files/none")


def test_unreachable_endpoint_fails_cleanly() -> None:
    from tests.storage.conftest import boto_session
    from tests.support.waiting import free_port
    from tuneforge.storage.s3 import S3Settings, S3Store

    store = S3Store(BUCKET, "p", settings=S3Settings(max_attempts=2, connect_timeout=1),
                    endpoint_url=f"http://127.0.0.1:{free_port()}", session=boto_session())
    with pytest.raises(StoreError, match="s3://tuneforge-test/p/k"):
        store.put_bytes("k", b"v")
