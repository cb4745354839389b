"""Checkpoints in the object store: ``{output_prefix}/checkpoints/step-{n}/``.

A checkpoint is uploaded file by file and then marked complete by writing ``COMPLETE.json`` last (the
step, the metrics and a manifest with the size and sha256 of every file). A prefix without the marker is a
checkpoint that was being written when the trainer died: it is never used, and retention deletes it later.

Resume downloads only from the job's own checkpoint prefix and checks every file against the marker's manifest
before the Trainer reads it (HF Trainer's resume loads optimizer/scheduler/RNG state with
``weights_only=True``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.storage import ObjectStore, build_manifest
from tuneforge.storage.manifest import Manifest
from tuneforge.trainer.errors import TrainerError

MARKER = "COMPLETE.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
#: files of an HF checkpoint directory that are never uploaded (pickled arguments, not needed to resume)
SKIP_FILES = {"training_args.bin"}


@dataclass
class CheckpointInfo:
    step: int
    prefix: str
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: Manifest | None = None


def checkpoints_prefix(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/checkpoints"


def step_prefix(output_prefix: str, step: int) -> str:
    return f"{checkpoints_prefix(output_prefix)}/step-{step}"


def upload_checkpoint(
    store: ObjectStore, local_dir: Path, output_prefix: str, step: int, metrics: dict[str, Any]
) -> CheckpointInfo:
    """Upload ``local_dir`` as step ``step``; the marker goes last."""
    prefix = step_prefix(output_prefix, step)
    # a previous attempt at the same step (preempted mid-upload) may have left files: start clean
    store.delete_prefix(prefix + "/")
    skip = {p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.name in SKIP_FILES}
    for rel in skip:
        (local_dir / rel).unlink()
    store.upload_dir(local_dir, prefix)
    manifest = build_manifest(local_dir)
    marker = {"step": step, "metrics": metrics, "manifest": manifest.model_dump()}
    store.put_bytes(f"{prefix}/{MARKER}", json.dumps(marker, indent=2).encode())
    return CheckpointInfo(step=step, prefix=prefix, metrics=metrics, manifest=manifest)


def list_complete(store: ObjectStore, output_prefix: str) -> list[CheckpointInfo]:
    """Complete checkpoints of this job, oldest first."""
    base = checkpoints_prefix(output_prefix) + "/"
    out = []
    for info in store.list(base):
        rel = info.key[len(base) :]
        parts = rel.split("/")
        if len(parts) != 2 or parts[1] != MARKER:
            continue
        match = _STEP_DIR.match(parts[0])
        if not match:
            continue
        try:
            marker = json.loads(store.get_bytes(info.key))
            manifest = Manifest.model_validate(marker["manifest"])
        except (ValueError, KeyError, TypeError):
            continue  # an unreadable marker is as good as none
        out.append(
            CheckpointInfo(
                step=int(match.group(1)),
                prefix=f"{base}{parts[0]}",
                metrics=dict(marker.get("metrics") or {}),
                manifest=manifest,
            )
        )
    return sorted(out, key=lambda c: c.step)


def latest_complete(store: ObjectStore, output_prefix: str) -> CheckpointInfo | None:
    done = list_complete(store, output_prefix)
    return done[-1] if done else None


def download_checkpoint(store: ObjectStore, ckpt: CheckpointInfo, dest: Path) -> Path:
    """Download a complete checkpoint and verify it against its manifest; returns the local directory."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    assert ckpt.manifest is not None
    for entry in ckpt.manifest.files:
        path = dest / entry.name
        if not path.resolve().is_relative_to(dest.resolve()):
            raise TrainerError(f"checkpoint step {ckpt.step}: file name {entry.name!r} escapes the checkpoint")
        store.download_file(f"{ckpt.prefix}/{entry.name}", path)
    problems = ckpt.manifest.mismatches(dest)
    if problems:
        raise TrainerError(f"checkpoint step {ckpt.step}: does not match its manifest: {'; '.join(problems[:3])}")
    return dest


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def apply_retention(store: ObjectStore, output_prefix: str, keep_last: int, metric: str = "valid_loss") -> list[int]:
    """Keep the last ``keep_last`` complete checkpoints and the best one by ``metric`` (lower is better);
    delete the rest, and any incomplete step directory older than the newest complete one. Returns the
    deleted steps."""
    complete = list_complete(store, output_prefix)
    if not complete:
        return []
    keep = {c.step for c in complete[-max(1, keep_last) :]}
    scored = [c for c in complete if _finite(c.metrics.get(metric))]
    if scored:
        keep.add(min(scored, key=lambda c: (c.metrics[metric], -c.step)).step)
    newest = complete[-1].step
    base = checkpoints_prefix(output_prefix) + "/"
    steps_present = set()
    for info in store.list(base):
        match = _STEP_DIR.match(info.key[len(base) :].split("/")[0])
        if match:
            steps_present.add(int(match.group(1)))
    deleted = []
    for step in sorted(steps_present):
        if step in keep or step > newest:
            continue
        prefix = f"{base}step-{step}"
        store.delete(f"{prefix}/{MARKER}")  # unmark first: a half-deleted checkpoint is incomplete, not corrupt
        store.delete_prefix(prefix + "/")
        deleted.append(step)
    return deleted
