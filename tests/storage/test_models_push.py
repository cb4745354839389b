"""`tuneforge models push`: the bundled base model into the bucket's model cache (``models/{name}/``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.storage.conftest import make_s3_store
from tests.support.s3_server import MotoServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_push_bundled_model_to_s3(moto_server: MotoServer) -> None:
    import os

    from tuneforge.trainer.models import CONVERTED_MARKER

    store = make_s3_store(moto_server.url)
    env = {**os.environ, **moto_server.env()}
    cmd = [sys.executable, "-m", "tuneforge.service.cli.main", "models", "push", "SmolLM2-135M-Instruct",
           "--store", store.url]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    local = Path(result.stdout.strip().splitlines()[-1])  # the trainer prints the converted model's directory
    pushed = {info.key: info.size for info in store.list("models/SmolLM2-135M-Instruct/")}
    expected = {f"models/SmolLM2-135M-Instruct/{p.relative_to(local).as_posix()}": p.stat().st_size
                for p in local.rglob("*") if p.is_file() and p.name != CONVERTED_MARKER}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {k.rsplit("/", 1)[1] for k in pushed}
    assert pushed == expected
    assert store.incomplete_uploads() == []
    store.delete_prefix("models/")
