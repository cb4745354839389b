"""The object-store interface every backend implements."""

from __future__ import annotations

import abc
import builtins
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class StoreError(Exception):
    """The store failed in a way the caller cannot fix by changing its input."""


class ObjectNotFound(StoreError, KeyError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"object not found: {self.key}"


class ChecksumMismatch(StoreError):
    """An object's bytes do not match the checksum stored with it (damaged in transit or at rest)."""

    def __init__(self, key: str, detail: str = "") -> None:
        super().__init__(key, detail)
        self.key = key
        self.detail = detail

    def __str__(self) -> str:
        return f"checksum mismatch reading {self.key}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectStore(abc.ABC):
    """Keys are ``/``-separated relative paths such as ``jobs/ftjob-1/model/adapter_model.safetensors``.

    Writes are atomic per object: a reader sees the whole object under its final key or nothing.
    """

    url: str

    @abc.abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, size_hint: int | None = None) -> int:
        """Store everything read from ``stream`` under ``key``; returns the number of bytes."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open an object for streaming reads."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error."""

    # -- conveniences built on the primitives; backends override where they can do better --

    def put_bytes(self, key: str, data: bytes) -> int:
        import io

        return self.put_stream(key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def put_file(self, key: str, path: str | os.PathLike[str]) -> int:
        with open(path, "rb") as fh:
            return self.put_stream(key, fh, os.path.getsize(path))

    def download_file(self, key: str, path: str | os.PathLike[str]) -> int:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        total = 0
        with self.open(key) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                total += len(chunk)
        os.replace(tmp, dest)
        return total

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def upload_dir(self, local_dir: str | os.PathLike[str], prefix: str, skip: set[str] | None = None
    ) -> builtins.list[str]:
        """Upload every file under ``local_dir`` to ``prefix/``; returns the keys written."""
        root = Path(local_dir)
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if skip and rel in skip:
                continue
            key = f"{prefix.rstrip('/')}/{rel}"
            self.put_file(key, path)
            keys.append(key)
        return keys

    def download_prefix(self, prefix: str, local_dir: str | os.PathLike[str]) -> builtins.list[Path]:
        root = Path(local_dir)
        base = prefix.rstrip("/") + "/"
        paths = []
        for info in self.list(base):
            dest = root / info.key[len(base):]
            self.download_file(info.key, dest)
            paths.append(dest)
        return paths

    def presigned_url(self, key: str, expires_in: int | None = None) -> str | None:
        """A time-limited GET URL, or None when the backend cannot make one (the service serves it).

        ``expires_in`` seconds; None: the backend's short default."""
        return None


def check_key(key: str) -> str:
    """Reject keys that could escape a prefix (``..``, absolute paths, empty parts)."""
    if not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"invalid object key: {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts[:-1]) or parts[-1] in (".", ".."):
        raise ValueError(f"invalid object key: {key!r}")
    return key
