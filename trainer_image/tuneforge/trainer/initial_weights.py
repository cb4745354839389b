"""Continue training from an earlier job: fetch its tuned model or checkpoint and start from those weights.

The JobSpec's ``initial_weights`` names the prefix (``jobs/{id}/model``, published with ``manifest.json``, or
``jobs/{id}/checkpoints/step-{n}``, marked complete by ``COMPLETE.json``); every file is checked against the
manifest before it is read. An ``adapter`` is loaded onto the base model as a trainable PEFT adapter (so the
job trains it further instead of a fresh one); ``full`` weights replace the base model's directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tuneforge.contracts.jobspec import InitialWeights
from tuneforge.storage import ObjectStore
from tuneforge.storage.manifest import MANIFEST_NAME, read_manifest
from tuneforge.trainer.checkpoints import MARKER, download_checkpoint, list_complete
from tuneforge.trainer.errors import BadInput, TrainerError

ADAPTER_CONFIG = "adapter_config.json"


def _gone(init: InitialWeights) -> BadInput:
    return BadInput(f"cannot continue from {init.source or init.prefix!r}: its weights are no longer in the object "
                    "store (the job was deleted, or retention removed the checkpoint)")


def fetch(store: ObjectStore, init: InitialWeights, dest: Path) -> Path:
    """Download the weights under ``init.prefix`` into ``dest`` (verified); returns ``dest``."""
    prefix = init.prefix.strip("/")
    if dest.exists():
        shutil.rmtree(dest)
    if store.exists(f"{prefix}/{MANIFEST_NAME}"):
        published = read_manifest(store, prefix)
        if published is None:
            raise _gone(init)
        manifest, _ = published
        dest.mkdir(parents=True)
        for entry in manifest.files:
            path = dest / entry.name
            if not path.resolve().is_relative_to(dest.resolve()):
                raise TrainerError(f"{init.source}: file name {entry.name!r} escapes the model directory")
            store.download_file(f"{prefix}/{entry.name}", path)
        problems = manifest.mismatches(dest)
        if problems:
            raise TrainerError(f"{init.source}: the files under {prefix}/ do not match its {MANIFEST_NAME}: "
                               f"{'; '.join(problems[:3])}")
    elif store.exists(f"{prefix}/{MARKER}"):
        job_prefix = prefix.split("/checkpoints/")[0]
        found = [c for c in list_complete(store, job_prefix) if c.prefix.strip("/") == prefix]
        if not found:
            raise _gone(init)
        download_checkpoint(store, found[0], dest)
    else:
        raise _gone(init)
    if init.kind == "adapter" and not (dest / ADAPTER_CONFIG).is_file():
        raise BadInput(f"cannot continue from {init.source!r}: no {ADAPTER_CONFIG} in its weights")
    if init.kind == "full" and not (dest / "config.json").is_file():
        raise BadInput(f"cannot continue from {init.source!r}: no config.json in its weights")
    return dest


def load_adapter(model: Any, adapter_dir: Path) -> Any:
    """``model`` with the earlier job's adapter on it, trainable."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
