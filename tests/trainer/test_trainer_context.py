"""Per-device resolution of ``gradient_checkpointing`` (None = "auto") and the TrainingArguments it yields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuneforge.contracts.hyperparameters import SupervisedHyperparameters as Hyperparameters
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.trainer.context import (
    RunContext,
    describe_gradient_checkpointing,
    training_args_kwargs,
    use_gradient_checkpointing,
)
from tuneforge.trainer.device import DeviceInfo

CPU = DeviceInfo("cpu", "cpu", bf16=False, fp16=False, peak_flops=None)
CUDA = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", bf16=True, fp16=False, peak_flops=989e12)


def _hp(**extra: Any) -> Hyperparameters:
    return Hyperparameters(n_epochs=1, batch_size=4, learning_rate=1e-3, **extra)


@pytest.mark.parametrize("value,device,expected", [
    ("auto", CPU, False),  # memory is plentiful on the CPU and recomputation costs speed
    ("auto", CUDA, True),  # GPU memory limits the batch
    (True, CPU, True),
    (True, CUDA, True),
    (False, CPU, False),
    (False, CUDA, False),
])  # fmt: skip
def test_explicit_choice_wins_and_auto_follows_the_device(value: bool | str, device: DeviceInfo,
                                                          expected: bool) -> None:
    assert use_gradient_checkpointing(_hp(gradient_checkpointing=value), device) is expected


def test_absent_means_auto_and_version_1_specs_with_null_or_a_bool_still_load() -> None:
    assert _hp().gradient_checkpointing == "auto"
    for v1_value, now in ((None, "auto"), (False, False)):
        spec = JobSpec.model_validate({
            "version": "tuneforge.dev/v1", "job_id": "j", "tenant_id": "t", "method": {"type": "supervised"},
            "base_model": "m", "training_file": {"file_id": "f", "key": "files/f", "format": "chat", "rows": 8},
            "hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate": 1e-4,
                                "gradient_checkpointing": v1_value},
            "storage_url": "file:///s", "output_prefix": "jobs/j"})
        assert spec.hyperparameters.gradient_checkpointing == now


@pytest.mark.parametrize("value,device,text", [
    ("auto", CPU, "off (auto)"),
    ("auto", CUDA, "on (auto)"),
    (True, CPU, "on"),
    (False, CUDA, "off"),
])  # fmt: skip
def test_training_setup_wording(value: bool | str, device: DeviceInfo, text: str) -> None:
    assert describe_gradient_checkpointing(_hp(gradient_checkpointing=value), device) == text


def _ctx(tmp_path: Path, device: DeviceInfo, value: bool | str) -> RunContext:
    spec = JobSpec.model_validate({
        "job_id": "ftjob-c", "tenant_id": "t", "method": {"type": "supervised"}, "base_model": "/m",
        "training_file": {"file_id": "f", "key": "files/f", "format": "chat", "rows": 8},
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "gradient_checkpointing": value},
        "storage_url": "file:///tmp/s", "output_prefix": "jobs/ftjob-c", "seed": 1,
    })  # fmt: skip
    none: Any = None
    return RunContext(spec=spec, store=none, reporter=none, preempt=none, device=device, workdir=tmp_path,
                      model_dir=tmp_path)


@pytest.mark.parametrize("value,device,expected", [("auto", CPU, False), ("auto", CUDA, True), (True, CPU, True)])
def test_training_arguments_get_the_resolved_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   value: bool | str, device: DeviceInfo, expected: bool) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    kwargs = training_args_kwargs(_ctx(tmp_path, device, value), rows=8, has_eval=False)
    assert kwargs["gradient_checkpointing"] is expected
    assert ("gradient_checkpointing_kwargs" in kwargs) is expected
