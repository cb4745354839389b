"""Copy a published prefix (a model or an adapter, ``manifest.json`` last) out of the store, checked file by file.

Used by whatever serves models: the embedded service's engines and, in a cluster, the engine pod's weight fetcher
and adapter sidecar. The copy lands in ``root/<sha256(prefix)[:16]>/<sha256(manifest)[:16]>/``: a model pushed
again (a new manifest) gets a new directory, and a finished copy (``.complete``) is reused as it is.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from tuneforge.storage.base import ObjectStore, StoreError, check_key
from tuneforge.storage.manifest import MANIFEST_NAME, read_manifest

COMPLETE_MARKER = ".complete"


class NotPublished(StoreError):
    """The prefix has no manifest (nothing published there, or an upload still in progress), or lacks a file."""


class CopyMismatch(StoreError):
    """The downloaded files differ from their manifest."""


def fetch_published(store: ObjectStore, prefix: str, root: Path, files: Sequence[str] = ()) -> Path:
    """The files published under ``prefix`` (only ``files`` when given) in a local directory under ``root``."""
    prefix = check_key(prefix.strip("/"))
    found = read_manifest(store, prefix)
    if found is None:
        raise NotPublished(f"the model files under {prefix}/ are not published (no manifest)")
    manifest, digest = found
    entries = [e for e in manifest.files if not files or e.name in files]
    if files and len(entries) != len(set(files)):
        raise NotPublished(f"{prefix}/ lacks {sorted(set(files) - {e.name for e in entries})}")
    target = root / hashlib.sha256(prefix.encode()).hexdigest()[:16] / digest[:16]
    if (target / COMPLETE_MARKER).is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for entry in entries:
        local = (partial / entry.name).resolve()
        if not local.is_relative_to(partial.resolve()):
            raise CopyMismatch(f"{prefix}/manifest.json names {entry.name!r}, which escapes the model directory")
        store.download_file(f"{prefix}/{entry.name}", local)
    problems = manifest.model_copy(update={"files": entries}).mismatches(partial)
    if problems:
        shutil.rmtree(partial, ignore_errors=True)
        raise CopyMismatch(f"the files under {prefix}/ do not match their manifest: {problems[0]}")
    if not files:
        # a whole model keeps its manifest: what it is (a reward model's task) and what it was trained on
        raw = store.get_bytes(f"{prefix}/{MANIFEST_NAME}")
        if hashlib.sha256(raw).hexdigest() != digest:
            shutil.rmtree(partial, ignore_errors=True)
            raise CopyMismatch(f"the model under {prefix}/ was published again while it was copied")
        (partial / MANIFEST_NAME).write_bytes(raw)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    (target / COMPLETE_MARKER).touch()
    return target
