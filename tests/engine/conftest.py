"""Engine test fixtures: real engine processes (``python -m tuneforge.engine``) on tiny models and SmolLM2."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.engine_models import make_lora, make_peaked_model
from tuneforge.engine_client import EngineProcess, EngineSpec


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("TUNEFORGE_TEST_MODEL_DIR")
    return Path(cache) if cache else tmp_path_factory.mktemp("engine-models")


@pytest.fixture(scope="session")
def peaked_model(model_root: Path) -> Path:
    return make_peaked_model(model_root)


@pytest.fixture(scope="session")
def peaked_loras(model_root: Path, peaked_model: Path) -> list[Path]:
    return [make_lora(peaked_model, model_root, seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="session")
def smol_model() -> Path:
    from tuneforge.trainer.models import resolve_model

    return resolve_model("SmolLM2-135M-Instruct")  # converted once into the model cache


def tuneforge_spec(model: Path | str, served: str, tmp: Path, *args: str, **kw: object) -> EngineSpec:
    return EngineSpec(kind="tuneforge", model=str(model), served_name=served, python=sys.executable,
                      extra_args=tuple(args), log_dir=tmp, start_timeout=900, **kw)  # type: ignore[arg-type]


def start_engine(spec: EngineSpec) -> EngineProcess:
    process = EngineProcess(spec)

    async def start() -> None:
        async with httpx.AsyncClient(trust_env=False) as http:
            await process.start(http)

    asyncio.run(start())
    return process


def stop_engine(process: EngineProcess) -> None:
    asyncio.run(process.stop())


@pytest.fixture(scope="module")
def tiny_engine(peaked_model: Path, peaked_loras: list[Path],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """The peaked tiny model, adapter ``a1`` loaded at start, context 256, at most 2 adapters in the model."""
    spec = tuneforge_spec(peaked_model, "tiny", tmp_path_factory.mktemp("engine-logs"),
                          "--adapter", f"a1={peaked_loras[0]}", max_model_len=256, max_loras=2, max_batch=8)
    process = start_engine(spec)
    yield process
    stop_engine(process)
