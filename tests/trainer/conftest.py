"""Fixtures for trainer tests: a tiny random Llama and job specs over a local object store."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny_model import make_tiny_model
from tests.trainer.trainer_helpers import Job, write_jsonl


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("TUNEFORGE_TEST_MODEL_DIR")
    root = Path(cache) if cache else tmp_path_factory.mktemp("tiny-model")
    return make_tiny_model(root)


@pytest.fixture
def make_job(tmp_path: Path, tiny_model: Path) -> Callable[..., Job]:
    def make(
        rows: list[Any],
        *,
        method: dict[str, Any] | None = None,
        validation: list[Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        base_model: str | None = None,
        job_id: str = "ftjob-test",
        fmt: str = "chat",
        **extra: Any,
    ) -> Job:
        store = tmp_path / "store"
        write_jsonl(store / "files" / "file-train", rows)
        hp = {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_length": 128}
        hp.update(hyperparameters or {})
        spec: dict[str, Any] = {
            "job_id": job_id,
            "tenant_id": "tenant-test",
            "method": method or {"type": "supervised"},
            "base_model": base_model or str(tiny_model),
            "training_file": {
                "file_id": "file-train",
                "key": "files/file-train",
                "format": fmt,
                "rows": len(rows),
            },
            "hyperparameters": hp,
            "storage_url": store.as_uri(),
            "output_prefix": f"jobs/{job_id}",
            "seed": 7,
            **extra,
        }
        if validation is not None:
            write_jsonl(store / "files" / "file-valid", validation)
            spec["validation_file"] = {
                "file_id": "file-valid",
                "key": "files/file-valid",
                "format": fmt,
                "rows": len(validation),
            }
        spec_path = tmp_path / f"{job_id}.json"
        spec_path.write_text(json.dumps(spec))
        return Job(tmp_path, store, spec_path, spec)

    return make
