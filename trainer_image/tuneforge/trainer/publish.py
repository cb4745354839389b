"""Publish the tuned model: files to ``{output_prefix}/model/``, ``manifest.json`` last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.contracts.jobspec import JobSpec
from tuneforge.storage import MANIFEST_NAME, ObjectStore, publish_dir

#: files a PEFT/transformers save may write that do not belong in the published model
SKIP = {"training_args.bin", MANIFEST_NAME}


def model_prefix(spec: JobSpec) -> str:
    return f"{spec.output_prefix.rstrip('/')}/model"


def fix_adapter_config(directory: Path, base_model: str) -> None:
    """Point the adapter at the job's base-model reference instead of the trainer's local cache path."""
    path = directory / "adapter_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config["base_model_name_or_path"] = base_model
        path.write_text(json.dumps(config, indent=2, sort_keys=True))


def publish_model(store: ObjectStore, spec: JobSpec, directory: Path, extra: dict[str, Any] | None = None) -> list[str]:
    """Upload every file, then the manifest; returns the published file names (manifest included)."""
    for name in SKIP:
        (directory / name).unlink(missing_ok=True)
    manifest = publish_dir(store, directory, model_prefix(spec), extra=extra, base_model=spec.base_model,
                           adapter=spec.adapter.type, job_id=spec.job_id)
    return [entry.name for entry in manifest.files] + [MANIFEST_NAME]
