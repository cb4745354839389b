"""S3-compatible object store (AWS S3, MinIO, Ceph RGW, Cloudflare R2) on boto3.

``s3://bucket/prefix`` names the store. Endpoint, region and credentials come from boto3's standard chain
(``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, profiles, IRSA, ...);
``TUNEFORGE_S3_*`` variables tune transfers (see :class:`S3Settings` and ``docs/storage.md``).

Uploads
    One engine serves ``put_stream``, ``put_bytes``, ``put_file`` and ``upload_dir``. It reads the source
    sequentially, one part at a time, and holds at most ``memory_budget`` bytes of upload data across the
    whole store (every concurrent upload shares that budget). An object of at most ``multipart_threshold``
    bytes goes up as a single ``PutObject``; a larger one as a multipart upload of ``part_size`` parts sent
    by a shared pool of ``max_inflight`` threads. Every request carries a CRC32 of its bytes (the server
    rejects a damaged part), and a multipart upload is completed with a ``FULL_OBJECT`` CRC32 of the whole
    object, combined from the parts' CRC32s (each computed once, by the thread that sends the part), which the
    server checks against the parts. boto3's transfer manager cannot do the latter while streaming (it wants
    the whole-object checksum before it starts), hence this engine; its knobs are those of a
    ``TransferConfig`` (threshold, chunk size, concurrency, memory).

Atomic visibility
    An object appears under its key only when its ``PutObject`` or ``CompleteMultipartUpload`` succeeds. Any
    failure or interruption (``KeyboardInterrupt`` included) aborts the multipart upload, so no partial object
    is ever published and no parts are left behind (unless the abort itself cannot reach the server: keep an
    ``AbortIncompleteMultipartUpload`` lifecycle rule on the bucket).

Downloads
    ``GetObject`` asks for the stored checksum (``ChecksumMode=ENABLED``) and botocore verifies it as the body
    streams; a mismatch raises :class:`~tuneforge.storage.base.ChecksumMismatch`. ``download_file`` and
    ``download_prefix`` fetch an object larger than ``multipart_threshold`` as parallel ranged GETs of
    ``part_size`` (one GET is bound by one connection) and check the CRC32 of the ranges, combined, against the
    object's ``FULL_OBJECT`` CRC32. ``download_file`` and ``get_bytes`` retry a broken or corrupted transfer a
    few times, writing aside and renaming, so a destination file is complete and verified or absent.

Retries
    botocore retries throttling (``SlowDown``), 5xx and dropped connections with exponential backoff and
    jitter: ``standard`` mode, 10 attempts, unless ``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS`` (or the AWS config
    file) say otherwise.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import functools
import io
import logging
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar, cast
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from tuneforge.contracts.settings import EnvSettings, describe_settings_error
from tuneforge.storage.base import ChecksumMismatch, ObjectInfo, ObjectNotFound, ObjectStore, StoreError, check_key
from tuneforge.storage.crc32 import crc32_combine

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MiB = 1 << 20
#: S3's limits: parts 5 MiB .. 5 GiB (the last may be smaller), at most 10,000 parts
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
#: SigV4 presigned URLs live at most 7 days
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


class S3EnvSettings(EnvSettings):
    """The object store's tuning from ``TUNEFORGE_S3_*`` variables (every process that opens an S3 store);
    sizes in MiB here, bytes in :class:`S3Settings`. Unset fields keep S3Settings' measured defaults."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_S3_")

    multipart_threshold_mb: int | None = Field(None, ge=5, le=5 * 1024, description="S3: objects up to this size "
                                               "go up in one PUT", json_schema_extra={"default_text": "64"})
    part_size_mb: int | None = Field(None, ge=5, le=5 * 1024, description="S3: part size of larger uploads",
                                     json_schema_extra={"default_text": "16"})
    memory_mb: int | None = Field(None, ge=5, description="S3: upload bytes held in memory at once",
                                  json_schema_extra={"default_text": "512"})
    max_inflight: int | None = Field(None, ge=1, description="S3: part uploads in flight at once",
                                     json_schema_extra={"default_text": "16"})
    file_concurrency: int | None = Field(None, ge=1, description="S3: files transferred at once",
                                         json_schema_extra={"default_text": "16"})
    checksum: Literal["full", "composite", "off"] | None = Field(
        None, description="S3: full (CRC32 of every request and whole object), composite (servers without "
        "full-object checksums) or off", json_schema_extra={"default_text": "full"})
    addressing_style: Literal["path", "virtual", "auto"] | None = Field(
        None, description="S3: addressing style (unset: path-style with an endpoint URL, else boto3's default)")
    presign_expiry_seconds: int | None = Field(None, ge=1, le=MAX_PRESIGN_SECONDS,
                                               description="S3: default lifetime of presigned URLs",
                                               json_schema_extra={"default_text": "300"})
    public_endpoint_url: str | None = Field(None, description="S3: the endpoint presigned URLs name, when clients "
                                            "reach the server by another address")
    checkpoint_tag: str | None = Field(None, description="S3: one key=value object tag put on checkpoints, for a "
                                       "bucket lifecycle rule (unset: none)")

    @field_validator("checksum", "addressing_style", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() or None if isinstance(value, str) else value

    @field_validator("public_endpoint_url", "checkpoint_tag", mode="before")
    @classmethod
    def _stripped(cls, value: object) -> object:
        return value.strip() or None if isinstance(value, str) else value


@dataclass(frozen=True)
class S3Settings:
    """Transfer and client tuning; defaults measured in ``bench/object_store.py`` (see bench/README.md)."""

    #: objects up to this size go up in one PutObject (one request: the cheapest for the server)
    multipart_threshold: int = 64 * MiB
    #: larger objects go up in parts of this size (grown when 10,000 parts would not hold the object)
    part_size: int = 16 * MiB
    #: part uploads in flight at once, across every upload of this store
    max_inflight: int = 16
    #: bytes of upload data held in memory at once, across every upload of this store
    memory_budget: int = 512 * MiB
    #: files transferred at once by ``upload_dir`` and ``download_prefix``
    file_concurrency: int = 16
    #: "full": a CRC32 on every request and a FULL_OBJECT CRC32 of every multipart object, verified on every
    #: download; "composite": per-request CRC32s only, for servers without full-object checksums (a multipart
    #: object's download is then checked for length, not content); "off": for servers that reject checksums
    checksum: str = "full"
    #: "path", "virtual" or "auto"; None: path-style when an endpoint URL is configured, else boto3's default
    addressing_style: str | None = None
    #: None: boto3's chain (AWS_RETRY_MODE, AWS_MAX_ATTEMPTS, config file), else standard mode, 10 attempts
    retry_mode: str | None = None
    max_attempts: int | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    #: default lifetime of presigned GET URLs (seconds): short
    presign_expiry: int = 300
    #: endpoint the presigned URLs should name, when clients reach the server by another address
    #: (e.g. MinIO as http://minio:9000 inside the cluster, https://minio.example.com outside)
    public_endpoint_url: str | None = None
    #: whole-transfer attempts of a download whose body breaks off or fails its checksum
    download_attempts: int = 3
    #: S3 object tag ("key=value") put on checkpoint objects (jobs/{id}/checkpoints/...), so that a bucket
    #: lifecycle rule can expire old checkpoints and keep the tuned models; None: no tagging (stores without
    #: object tags, e.g. R2, refuse it)
    checkpoint_tag: str | None = None

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ValueError(f"S3 part size must be between 5 MiB and 5 GiB, not {self.part_size} bytes")
        if not MIN_PART_SIZE <= self.multipart_threshold <= MAX_PART_SIZE:
            raise ValueError(f"S3 multipart threshold must be between 5 MiB and 5 GiB, not {self.multipart_threshold}")
        if self.memory_budget < self.part_size:
            raise ValueError("the S3 memory budget must hold at least one part")
        if self.max_inflight < 1 or self.file_concurrency < 1 or self.download_attempts < 1:
            raise ValueError("S3 concurrency settings and download attempts must be at least 1")
        if self.checksum not in ("full", "composite", "off"):
            raise ValueError(f"S3 checksum must be 'full', 'composite' or 'off', not {self.checksum!r}")
        if self.addressing_style not in (None, "path", "virtual", "auto"):
            raise ValueError(f"S3 addressing style must be path, virtual or auto, not {self.addressing_style!r}")
        if not 1 <= self.presign_expiry <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"presigned URL expiry must be 1 s .. 7 days, not {self.presign_expiry}")
        if self.checkpoint_tag is not None and not _CHECKPOINT_TAG.fullmatch(self.checkpoint_tag):
            raise ValueError(f"TUNEFORGE_S3_CHECKPOINT_TAG must be one tag as key=value (letters, digits, "
                             f"'_.:/-'), not {self.checkpoint_tag!r}")

    @classmethod
    def from_env(cls, **overrides: Any) -> S3Settings:
        """Defaults, then ``TUNEFORGE_S3_*`` variables, then ``overrides``; a bad variable is a ValueError
        that names it."""
        try:
            env = S3EnvSettings()
        except ValidationError as exc:
            raise ValueError(describe_settings_error(exc, S3EnvSettings)) from None
        mib = {"multipart_threshold": env.multipart_threshold_mb, "part_size": env.part_size_mb,
               "memory_budget": env.memory_mb}
        values: dict[str, Any] = {name: size * MiB for name, size in mib.items() if size is not None}
        values |= {name: value for name, value in (
            ("max_inflight", env.max_inflight), ("file_concurrency", env.file_concurrency),
            ("checksum", env.checksum), ("addressing_style", env.addressing_style),
            ("presign_expiry", env.presign_expiry_seconds), ("public_endpoint_url", env.public_endpoint_url),
            ("checkpoint_tag", env.checkpoint_tag)) if value is not None}
        values.update(overrides)
        return cls(**values)


# -- helpers --

_CHECKPOINT_TAG = re.compile(r"[A-Za-z0-9_.:/-]{1,128}=[A-Za-z0-9_.:/-]{0,256}")
_CHECKPOINT_KEY = re.compile(r"jobs/[^/]+/checkpoints/")


def _b64_crc32(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def _read_exact(read: Callable[[int], bytes], n: int, head: bytes = b"") -> bytes:
    """``head`` and then bytes from ``read`` up to ``n`` in all: fewer only at end of stream (streams may return
    short reads)."""
    if not head:
        head = read(n) or b""
        if not head or len(head) >= n:
            return head
    chunks = [head]
    got = len(head)
    while got < n:
        chunk = read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _is_transient_read_error(exc: BaseException) -> bool:
    """A GET whose body broke off or arrived damaged: worth fetching again."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    return isinstance(exc, ChecksumMismatch | BotoConnectionError | IncompleteReadError | ReadTimeoutError
                      | ResponseStreamingError | ConnectionError | TimeoutError)


class _Reader(io.RawIOBase):
    """A GetObject body as a file object: checksum failures and broken streams become store errors."""

    def __init__(self, body: Any, key: str, url: str, length: int) -> None:
        super().__init__()
        self._body = body
        self._key = key
        self._url = url
        self._length = length
        self._seen = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        from botocore.exceptions import FlexibleChecksumError

        try:
            if size is None or size < 0:
                data = cast(bytes, self._body.read())
                self._seen += len(data)
                return data
            data = cast(bytes, self._body.read(size))
            self._seen += len(data)
            if data and self._seen >= self._length:
                # the last byte: read on to the end of the body so the checksum is verified now, before the
                # caller treats the object as complete
                self._body.read(1)
            return data
        except FlexibleChecksumError as exc:
            raise ChecksumMismatch(self._key, f"{self._url}: {exc}") from exc
        except Exception as exc:
            if _is_transient_read_error(exc):
                raise StoreError(f"reading {self._url} broke off after {self._seen} bytes: {exc}") from exc
            raise

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


class _ByteBudget:
    """Bytes of upload data in memory. A reader acquires what it is about to read and the request that sends
    those bytes gives them back; a reader holds at most one part while it waits for more, and requests always
    finish, so waiting here cannot deadlock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while self.used and self.used + n > self.capacity:
                self._cond.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


@dataclass
class _Multipart:
    key: str
    upload_id: str
    #: one per part, in part order: (the part for CompleteMultipartUpload, its CRC32, its length)
    futures: list[Future[tuple[dict[str, Any], int, int]]] = field(default_factory=list)
    #: the whole object's CRC32 (combined from the parts' once they are all sent) and size
    crc: int = 0
    size: int = 0


@dataclass(frozen=True)
class _RangePlan:
    size: int
    etag: str
    crc32: str | None  # base64 FULL_OBJECT CRC32; None when checksums are off


class S3Store(ObjectStore):
    """Objects under ``s3://{bucket}/{prefix}/``; see the module docstring for the guarantees."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        settings: S3Settings | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: Any = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        if not bucket:
            raise ValueError("an S3 store needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.settings = settings or S3Settings.from_env()
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._session = session or boto3.session.Session()
        botocore_session = self._session._session
        self.endpoint_url = endpoint_url or self._configured_endpoint(botocore_session)
        self.region = region or self._session.region_name or "us-east-1"

        s = self.settings
        addressing = s.addressing_style or ("path" if self.endpoint_url else None)
        retries: dict[str, Any] = {}
        scoped = botocore_session.get_scoped_config()
        if not (os.environ.get("AWS_RETRY_MODE") or scoped.get("retry_mode")):
            retries["mode"] = s.retry_mode or "standard"
        if not (os.environ.get("AWS_MAX_ATTEMPTS") or scoped.get("max_attempts")):
            retries["total_max_attempts"] = s.max_attempts or 10
        checksums = "when_supported" if s.checksum != "off" else "when_required"
        config = Config(
            region_name=self.region,
            s3={"addressing_style": addressing} if addressing else {},
            retries=retries,
            max_pool_connections=s.max_inflight + s.file_concurrency + 4,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
            signature_version="s3v4",
        )
        self._client = self._session.client("s3", endpoint_url=self.endpoint_url, config=config)
        # presigned URLs name the endpoint clients use, which may differ from ours (made now: sessions are
        # not thread-safe)
        self._presign_client: Any = self._client
        if s.public_endpoint_url:
            self._presign_client = self._session.client("s3", endpoint_url=s.public_endpoint_url, config=config)
        # one memory budget for every upload of this store
        self._budget = _ByteBudget(s.memory_budget)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @staticmethod
    def _configured_endpoint(botocore_session: Any) -> str | None:
        # boto3 reads AWS_ENDPOINT_URL(_S3) itself; we want to know it too (path-style default, messages)
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(name):
                return os.environ[name]
        scoped = botocore_session.get_scoped_config()
        s3_cfg = scoped.get("s3")
        if isinstance(s3_cfg, dict) and s3_cfg.get("endpoint_url"):
            return str(s3_cfg["endpoint_url"])
        endpoint = scoped.get("endpoint_url")
        return str(endpoint) if endpoint else None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3Store:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an S3 store URL: {url!r} (expected s3://bucket/prefix)")
        if parsed.query or parsed.fragment:
            raise ValueError(f"S3 store URL {url!r}: configure the client with AWS_*/TUNEFORGE_S3_* variables, "
                             "not a query string")
        return cls(parsed.netloc, parsed.path, **kwargs)

    def with_settings(self, **changes: Any) -> S3Store:
        """The same bucket and prefix with other settings (a new client)."""
        return S3Store(self.bucket, self.prefix, settings=replace(self.settings, **changes),
                       endpoint_url=self.endpoint_url, region=self.region, session=self._session)

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint_url!r})"

    # -- keys and errors --

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def _error(self, op: str, key: str, exc: Exception) -> StoreError:
        code = _error_code(exc)
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}{key}"
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFound(key)
        if code == "NoSuchBucket":
            return StoreError(f"{op} {where}: bucket {self.bucket!r} does not exist"
                              f"{' at ' + self.endpoint_url if self.endpoint_url else ''}")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StoreError(f"{op} {where}: access denied ({code}); check the credentials and bucket policy")
        return StoreError(f"{op} {where} failed: {exc}")

    # -- primitives --

    def put_stream(self, key: str, stream: BinaryIO, size_hint: int | None = None) -> int:
        self._full(key)  # validate before reading anything
        return self._upload(key, stream.read, size_hint)

    def put_bytes(self, key: str, data: bytes) -> int:
        return self.put_stream(key, io.BytesIO(data), len(data))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> int:
        self._full(key)
        with open(path, "rb") as fh:
            return self.put_stream(key, fh, os.fstat(fh.fileno()).st_size)

    def _get(self, key: str) -> tuple[Any, int]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}  # ValueError before any request
        if self.settings.checksum != "off":
            args["ChecksumMode"] = "ENABLED"
        try:
            response = self._client.get_object(**args)
        except Exception as exc:
            raise self._error("GET", key, exc) from exc
        return response["Body"], int(response.get("ContentLength", 0))

    def open(self, key: str) -> BinaryIO:
        body, length = self._get(key)
        return cast(BinaryIO, _Reader(body, key, self._where(key), length))

    def stat(self, key: str) -> ObjectInfo:
        full = self._full(key)
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._error("HEAD", key, exc) from exc
        return ObjectInfo(key=key, size=int(response["ContentLength"]))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(base):]
                    if key and not key.endswith("/"):  # skip "folder" markers made by consoles
                        yield ObjectInfo(key=key, size=int(item["Size"]))
        except Exception as exc:
            raise self._error("LIST", prefix, exc) from exc

    def delete(self, key: str) -> None:
        full = self._full(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            err = self._error("DELETE", key, exc)
            if not isinstance(err, ObjectNotFound):
                raise err from exc

    # -- conveniences done better than one request at a time --

    def get_bytes(self, key: str) -> bytes:
        def fetch() -> bytes:
            with self.open(key) as fh:
                return fh.read()

        return self._retrying_read(key, fetch)

    def download_file(self, key: str, path: str | os.PathLike[str]) -> int:
        return self._download_file(key, path, None)

    def _download_file(self, key: str, path: str | os.PathLike[str], size: int | None) -> int:
        """``size``: the object's size when a listing told it (a small object then needs no HEAD)."""
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")

        def fetch() -> int:
            try:
                plan = self._range_plan(key) if size is None or size > self.settings.multipart_threshold else None
                total = self._fetch_ranges(key, tmp, plan) if plan else self._fetch_whole(key, tmp)
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return total

        return self._retrying_read(key, fetch)

    def _fetch_whole(self, key: str, tmp: Path) -> int:
        total = 0
        with self.open(key) as src, open(tmp, "wb") as out:
            while chunk := src.read(MiB):
                out.write(chunk)
                total += len(chunk)
        return total

    def _range_plan(self, key: str) -> _RangePlan | None:
        """How to fetch ``key`` as parallel ranged GETs, or None for one GET: the object is small, or its stored
        checksum covers parts, not the whole object, so only one GET can be verified (by botocore)."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if self.settings.checksum != "off":
            args["ChecksumMode"] = "ENABLED"
        try:
            head = self._client.head_object(**args)
        except Exception as exc:
            raise self._error("HEAD", key, exc) from exc
        size = int(head["ContentLength"])
        if size <= self.settings.multipart_threshold:
            return None
        crc = head.get("ChecksumCRC32")
        # a whole-object CRC32: FULL_OBJECT said, or no type said of an object that was not uploaded in parts
        # (moto's HEAD names neither the type nor the part count of a COMPOSITE checksum)
        kind = head.get("ChecksumType") or ("COMPOSITE" if "-" in str(head.get("ETag", "")) else "FULL_OBJECT")
        whole = bool(crc) and "-" not in crc and kind == "FULL_OBJECT"
        if self.settings.checksum != "off" and not whole:
            return None
        return _RangePlan(size=size, etag=str(head.get("ETag", "")), crc32=crc if whole else None)

    def _fetch_ranges(self, key: str, tmp: Path, plan: _RangePlan) -> int:
        """``part_size`` ranges fetched by the part pool into their places in ``tmp``; each range's CRC32 is
        computed as it arrives and the combination checked against the object's ``FULL_OBJECT`` CRC32. Every
        GET names the HEAD's ETag, so an object replaced meanwhile fails (412) instead of mixing versions."""
        step = self.settings.part_size
        spans = [(start, min(start + step, plan.size)) for start in range(0, plan.size, step)]
        with open(tmp, "wb") as out:
            out.truncate(plan.size)
            futures = [self._parts.submit(self._fetch_range, key, plan.etag, out.fileno(), start, end)
                       for start, end in spans]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                # also on an interrupt: running ranges write through ``out``'s descriptor, so it stays open
                # until they end (a closed descriptor's number may be reused by another file)
                for fut in futures:
                    fut.cancel()
                wait(futures)
        failed = next((f.exception() for f in futures if not f.cancelled() and f.exception() is not None), None)
        if failed is not None:
            raise failed
        crc = 0
        for (start, end), fut in zip(spans, futures, strict=True):
            crc = crc32_combine(crc, fut.result(), end - start)
        if plan.crc32 is not None and _b64_crc32(crc) != plan.crc32:
            raise ChecksumMismatch(key, f"{self._where(key)}: the CRC32 of {len(spans)} ranges is "
                                        f"{_b64_crc32(crc)}, the stored full-object CRC32 is {plan.crc32}")
        return plan.size

    def _fetch_range(self, key: str, etag: str, fd: int, start: int, end: int) -> int:
        """Bytes ``start``..``end - 1`` of ``key`` written at their offset in ``fd``; returns their CRC32."""
        from botocore.exceptions import IncompleteReadError

        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), "Range": f"bytes={start}-{end - 1}"}
        if etag:
            args["IfMatch"] = etag
        try:
            response = self._client.get_object(**args)
        except Exception as exc:
            raise self._error("GET", key, exc) from exc
        crc, offset = 0, start
        with _Reader(response["Body"], key, self._where(key), end - start) as body:
            while offset < end and (chunk := body.read(min(MiB, end - offset))):
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
                crc = zlib.crc32(chunk, crc)
        if offset != end:
            raise StoreError(f"reading {self._where(key)} bytes {start}-{end - 1} broke off after "
                             f"{offset - start} bytes") from IncompleteReadError(actual_bytes=offset - start,
                                                                                 expected_bytes=end - start)
        return crc

    def _retrying_read(self, key: str, fetch: Callable[[], _T]) -> _T:
        attempts = self.settings.download_attempts
        for attempt in range(1, attempts + 1):
            try:
                return fetch()
            except StoreError as exc:
                cause = exc.__cause__
                # a broken or damaged body, or an object replaced between the HEAD and a ranged GET (412)
                transient = isinstance(exc, ChecksumMismatch) or (cause is not None and (
                    _is_transient_read_error(cause) or _error_code(cause) == "PreconditionFailed"))
                if not transient or attempt == attempts:
                    raise
                log.warning("GET %s failed (attempt %d of %d), fetching again: %s",
                            self._where(key), attempt, attempts, exc)
        raise AssertionError("unreachable")

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            try:
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True},
                )
            except Exception as exc:
                raise self._error("DELETE", prefix, exc) from exc
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StoreError(f"deleting {len(errors)} object(s) under {self._where(prefix)} failed; "
                                 f"first: {first.get('Key')}: {first.get('Code')} {first.get('Message')}")
        return len(keys)

    def upload_dir(self, local_dir: str | os.PathLike[str], prefix: str, skip: set[str] | None = None
                   ) -> builtins.list[str]:
        """Upload every file under ``local_dir`` concurrently; returns when all are stored (keys in path order).

        Ordering among these files is not defined; a caller that publishes (e.g. a manifest) writes that
        object after this returns.
        """
        root = Path(local_dir)
        jobs: builtins.list[tuple[str, Path]] = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if skip and rel in skip:
                continue
            jobs.append((self._full_key_checked(f"{prefix.rstrip('/')}/{rel}"), path))
        self._run_all([functools.partial(self.put_file, k, p) for k, p in jobs])
        return [k for k, _ in jobs]

    def download_prefix(self, prefix: str, local_dir: str | os.PathLike[str]) -> builtins.list[Path]:
        root = Path(local_dir)
        base = prefix.rstrip("/") + "/"
        found = [(info, root / info.key[len(base):]) for info in self.list(base)]
        self._run_all([functools.partial(self._download_file, i.key, d, i.size) for i, d in found])
        return [d for _, d in found]

    def _full_key_checked(self, key: str) -> str:
        self._full(key)
        return key

    def _run_all(self, tasks: builtins.list[Callable[[], object]]) -> None:
        """Run tasks ``file_concurrency`` at a time; the first failure cancels those not started and is raised
        once the running ones have finished."""
        if len(tasks) <= 1:
            for task in tasks:
                task()
            return
        workers = min(self.settings.file_concurrency, len(tasks))
        with ThreadPoolExecutor(workers, thread_name_prefix="tuneforge-s3-file") as pool:
            futures = [pool.submit(task) for task in tasks]
            wait(futures, return_when=FIRST_EXCEPTION)
            for fut in futures:
                fut.cancel()
        for fut in futures:
            if not fut.cancelled() and fut.exception() is not None:
                raise cast(BaseException, fut.exception())

    def presigned_url(self, key: str, expires_in: int | None = None) -> str | None:
        """A GET URL valid for ``expires_in`` seconds (default: the short ``presign_expiry``)."""
        expiry = self.settings.presign_expiry if expires_in is None else int(expires_in)
        if not 1 <= expiry <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"presigned URL expiry must be 1 s .. 7 days, not {expiry}")
        return cast(str, self._presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=expiry))

    # -- buckets (tests, development, `tuneforge` setup helpers) --

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (for development servers; production buckets come from IaC)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except Exception as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error("HEAD bucket", "", exc) from exc
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**args)
        except Exception as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou",):
                raise self._error("CREATE bucket", "", exc) from exc

    def incomplete_uploads(self, prefix: str = "") -> builtins.list[str]:
        """Keys of multipart uploads started and neither completed nor aborted (tests, operations)."""
        base = f"{self.prefix}/" if self.prefix else ""
        response = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=base + prefix)
        return [u["Key"][len(base):] for u in response.get("Uploads", [])]

    # -- the upload engine --

    @property
    def _parts(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.max_inflight, thread_name_prefix="tuneforge-s3-part")
            return self._pool

    def _part_size(self, size_hint: int | None, part_number: int) -> int:
        size = self.settings.part_size
        if size_hint is not None and size_hint > size * (MAX_PARTS - 1):
            size = -(-size_hint // (MAX_PARTS - 1))  # big enough for the announced size
        elif size_hint is None:
            # unknown length: grow parts as the stream goes on so 10,000 parts reach S3's 5 TB limit
            size <<= min(part_number // 1000, 10)
        return min(max(size, MIN_PART_SIZE), MAX_PART_SIZE)

    def _checksum_args(self, data: bytes) -> tuple[dict[str, str], int]:
        """The request's checksum arguments and the CRC32 of ``data`` (0, not computed, when checksums are off)."""
        if self.settings.checksum == "off":
            return {}, 0
        crc = zlib.crc32(data)
        return {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": _b64_crc32(crc)}, crc

    def _tagging(self, key: str) -> dict[str, str]:
        """The checkpoint tag for objects under jobs/{id}/checkpoints/ (for the bucket's lifecycle rule)."""
        if self.settings.checkpoint_tag and _CHECKPOINT_KEY.match(key):
            return {"Tagging": self.settings.checkpoint_tag}
        return {}

    def _upload(self, key: str, read: Callable[[int], bytes], size_hint: int | None) -> int:
        full = self._full(key)
        threshold = self.settings.multipart_threshold
        if size_hint is None:
            want = threshold  # read up to the threshold: one request if the stream ends by then
        elif size_hint <= threshold:
            want = max(size_hint, 0)
        else:
            want = self._part_size(size_hint, 1)
        self._budget.acquire(want)
        try:
            first = _read_exact(read, want) if want else b""
            carry = read(1) if len(first) == want else b""
            if carry and len(first) < MIN_PART_SIZE:
                # the size hint was too small: a first part must be at least 5 MiB (over budget, but rare)
                first = _read_exact(read, threshold, head=first + carry)
                carry = read(1) if len(first) == threshold else b""
        except BaseException:
            self._budget.release(want)
            raise
        if not carry:
            # the whole object in one request
            try:
                args, _ = self._checksum_args(first)
                self._client.put_object(Bucket=self.bucket, Key=full, Body=first, **args, **self._tagging(key))
            except Exception as exc:
                raise self._error("PUT", key, exc) from exc
            finally:
                self._budget.release(want)
            return len(first)
        holder = [first]
        del first  # the multipart loop owns the first part now: no second reference keeps it in memory
        return self._multipart(key, read, size_hint, holder, want, carry)

    def _multipart(self, key: str, read: Callable[[int], bytes], size_hint: int | None,
                   holder: builtins.list[bytes], held: int, carry: bytes) -> int:
        """Upload ``holder``'s first part (``held`` bytes of budget), then the rest of the stream, as one
        multipart upload."""
        full = self._full(key)
        create: dict[str, Any] = {"Bucket": self.bucket, "Key": full, **self._tagging(key)}
        if self.settings.checksum != "off":
            create["ChecksumAlgorithm"] = "CRC32"
        if self.settings.checksum == "full":
            create["ChecksumType"] = "FULL_OBJECT"
        try:
            upload_id = self._client.create_multipart_upload(**create)["UploadId"]
        except Exception as exc:
            self._budget.release(held)
            raise self._error("CREATE MULTIPART", key, exc) from exc
        mpu = _Multipart(key=full, upload_id=upload_id)
        try:
            # each part is read with one read() into the bytes that are sent (no copy), and its CRC32 computed
            # once, by the thread that sends it; the whole object's CRC32 is combined from the parts' at the end
            data, part_number, requested = holder.pop(), 1, held
            while True:
                length = len(data)
                mpu.size += length
                fut = self._parts.submit(self._upload_part, mpu, part_number, data)
                fut.add_done_callback(functools.partial(self._release_after, held))
                held = 0  # handed to the part upload
                mpu.futures.append(fut)
                del data
                failed = next((f for f in mpu.futures if f.done() and f.exception() is not None), None)
                if failed is not None:
                    failed.result()  # raises: stop reading, abort
                if length < requested:
                    break  # a short read is the end of the stream
                size = self._part_size(size_hint, part_number + 1)
                self._budget.acquire(size)
                held = requested = size
                data = _read_exact(read, size, head=carry)  # carry (one byte) only before the second part
                carry = b""
                if not data:
                    self._budget.release(held)
                    held = 0
                    break
                part_number += 1
                if part_number > MAX_PARTS:
                    raise StoreError(f"PUT {self._where(key)}: more than {MAX_PARTS} parts; "
                                     "raise TUNEFORGE_S3_PART_SIZE_MB or pass the object's size")
            parts = []
            for fut in mpu.futures:
                part, crc, length = fut.result()
                parts.append(part)
                mpu.crc = crc32_combine(mpu.crc, crc, length)
            self._complete(key, mpu, parts)
        except BaseException as exc:
            if held:
                self._budget.release(held)
            for fut in mpu.futures:
                fut.cancel()
            wait(mpu.futures)
            self._abort(mpu)
            if isinstance(exc, BotoCoreError | ClientError):
                raise self._error("PUT", key, exc) from exc
            raise  # the source stream's own errors, StoreErrors, interrupts: as they are
        return mpu.size

    def _release_after(self, n: int, _future: Future[Any]) -> None:
        self._budget.release(n)

    def _upload_part(self, mpu: _Multipart, part_number: int, data: bytes) -> tuple[dict[str, Any], int, int]:
        args, crc = self._checksum_args(data)
        response = self._client.upload_part(Bucket=self.bucket, Key=mpu.key, UploadId=mpu.upload_id,
                                            PartNumber=part_number, Body=data, **args)
        part: dict[str, Any] = {"PartNumber": part_number, "ETag": response["ETag"]}
        if "ChecksumCRC32" in args:
            part["ChecksumCRC32"] = response.get("ChecksumCRC32") or args["ChecksumCRC32"]
        return part, crc, len(data)

    def _complete(self, key: str, mpu: _Multipart, parts: builtins.list[dict[str, Any]]) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": mpu.key, "UploadId": mpu.upload_id,
                                "MultipartUpload": {"Parts": parts}, "MpuObjectSize": mpu.size}
        if self.settings.checksum == "full":
            args.update(ChecksumCRC32=_b64_crc32(mpu.crc), ChecksumType="FULL_OBJECT")
        try:
            self._client.complete_multipart_upload(**args)
        except Exception as exc:
            # a retried Complete whose first attempt succeeded (response lost) finds no upload: accept it
            # when the object under the key is ours (same size, same full-object CRC32)
            if _error_code(exc) == "NoSuchUpload" and self._is_our_object(mpu):
                log.info("CompleteMultipartUpload for %s was retried after succeeding; object verified", key)
                return
            raise

    def _is_our_object(self, mpu: _Multipart) -> bool:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=mpu.key, ChecksumMode="ENABLED")
        except Exception:
            return False
        if int(head.get("ContentLength", -1)) != mpu.size:
            return False
        stored = head.get("ChecksumCRC32")
        return self.settings.checksum != "full" or stored == _b64_crc32(mpu.crc)

    def _abort(self, mpu: _Multipart) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=mpu.key, UploadId=mpu.upload_id)
        except Exception as exc:
            if _error_code(exc) != "NoSuchUpload":
                log.warning("could not abort multipart upload %s of s3://%s/%s (%s); its parts stay until a "
                            "lifecycle rule removes them, the object itself was never published",
                            mpu.upload_id, self.bucket, mpu.key, exc)
