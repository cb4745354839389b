"""Pick an object-store backend from one URL setting."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from tuneforge.storage.base import ObjectStore


def open_store(url: str) -> ObjectStore:
    """``file:///abs/dir`` or a plain path: local directory; ``s3://bucket/prefix``: S3-compatible."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        from tuneforge.storage.local import LocalStore

        return LocalStore(unquote(parsed.path) if parsed.scheme else url)
    if parsed.scheme == "s3":
        from tuneforge.storage.s3 import S3Store

        return S3Store.from_url(url)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")
