"""``manifest.json``: sizes and sha256 of every file of a published model, written last.

A model prefix in the store (``jobs/{id}/model/``, ``models/{name}/``) is published once its ``manifest.json``
exists: :func:`publish_dir` writes the files first and the manifest last, readers ask :func:`read_manifest`
and treat a prefix without one as absent (an upload in progress, or one that died half-way).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tuneforge.contracts.store_layout import MANIFEST_NAME
from tuneforge.storage.base import ObjectNotFound

if TYPE_CHECKING:
    from tuneforge.storage.base import ObjectStore



class ManifestEntry(BaseModel):
    name: str
    bytes: int
    sha256: str


class Manifest(BaseModel):
    format: str = "tuneforge.model/v1"
    base_model: str = ""
    adapter: str = ""
    job_id: str = ""
    files: list[ManifestEntry]

    def entry(self, name: str) -> ManifestEntry | None:
        return next((f for f in self.files if f.name == name), None)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2)

    def mismatches(self, directory: str | Path) -> list[str]:
        """What in ``directory`` differs from this manifest (missing files, sizes, sha256); empty: it matches."""
        root = Path(directory).resolve()
        problems = []
        for entry in self.files:
            path = (root / entry.name).resolve()
            if not path.is_relative_to(root):
                problems.append(f"{entry.name}: the name escapes the model directory")
            elif not path.is_file():
                problems.append(f"{entry.name}: missing")
            elif path.stat().st_size != entry.bytes:
                problems.append(f"{entry.name}: {path.stat().st_size} bytes, the manifest says {entry.bytes}")
            elif sha256_file(path) != entry.sha256:
                problems.append(f"{entry.name}: sha256 differs from the manifest")
        return problems


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(directory: str | Path, skip: set[str] | None = None, **fields: str) -> Manifest:
    """The manifest of every file under ``directory`` except ``manifest.json`` and the relative paths in ``skip``."""
    root = Path(directory)
    entries = [
        ManifestEntry(name=p.relative_to(root).as_posix(), bytes=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and p.relative_to(root).as_posix() not in (skip or set())
    ]
    return Manifest(files=entries, **fields)


def publish_dir(store: ObjectStore, directory: str | Path, prefix: str, skip: set[str] | None = None,
                extra: dict[str, Any] | None = None, **fields: str) -> Manifest:
    """Publish ``directory`` under ``prefix/``: whatever was there goes (the old manifest first, so no reader
    takes the old model for complete while it is replaced), then every file, then ``manifest.json`` last.

    ``skip``: relative paths left out of the upload and the manifest; ``extra``: more top-level manifest keys."""
    prefix = prefix.strip("/")
    skip = set(skip or ()) | {MANIFEST_NAME}
    store.delete(f"{prefix}/{MANIFEST_NAME}")
    store.delete_prefix(prefix + "/")  # a retried publish must not leave stale files behind
    store.upload_dir(directory, prefix, skip=skip)
    manifest = build_manifest(directory, skip=skip, **fields)
    body = manifest.model_dump()
    body.update(extra or {})
    store.put_bytes(f"{prefix}/{MANIFEST_NAME}", json.dumps(body, indent=2).encode())
    return manifest


def read_manifest(store: ObjectStore, prefix: str) -> tuple[Manifest, str] | None:
    """The manifest published under ``prefix/`` and the sha256 of its bytes; None when there is none (the prefix
    is not published, or not completely). An unreadable manifest raises ``ValueError``."""
    try:
        raw = store.get_bytes(f"{prefix.strip('/')}/{MANIFEST_NAME}")
    except ObjectNotFound:
        return None
    return Manifest.model_validate_json(raw), hashlib.sha256(raw).hexdigest()
