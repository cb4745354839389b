"""``manifest.json``: sizes and sha256 of every file of a published model, written last."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

MANIFEST_NAME = "manifest.json"


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


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(directory: str | Path, **fields: str) -> Manifest:
    root = Path(directory)
    entries = [
        ManifestEntry(name=p.relative_to(root).as_posix(), bytes=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    ]
    return Manifest(files=entries, **fields)
