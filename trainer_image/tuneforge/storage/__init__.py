"""Object stores: one interface, a local-directory backend and an S3 backend (keys: contracts.store_layout)."""

from tuneforge.storage.base import ChecksumMismatch, ObjectInfo, ObjectNotFound, ObjectStore, StoreError
from tuneforge.storage.factory import open_store
from tuneforge.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    build_manifest,
    publish_dir,
    read_manifest,
)

__all__ = [
    "MANIFEST_NAME",
    "ChecksumMismatch",
    "Manifest",
    "ManifestEntry",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "StoreError",
    "build_manifest",
    "open_store",
    "publish_dir",
    "read_manifest",
]
