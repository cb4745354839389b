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
from tuneforge.trainer.settings import trainer_settings

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


def test_liger_when_installed_on_cuda_unless_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Liger is used on CUDA whenever the package is importable; TUNEFORGE_LIGER=0 turns it off (benchmarks)."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TUNEFORGE_LIGER", "TUNEFORGE_TORCH_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    trainer_settings.cache_clear()
    site = tmp_path / "site"
    (site / "liger_kernel").mkdir(parents=True)
    (site / "liger_kernel" / "__init__.py").write_text("")  # an installed (empty) liger_kernel package
    monkeypatch.syspath_prepend(str(site))
    ctx = _ctx(tmp_path, CUDA, None)
    assert training_args_kwargs(ctx, rows=8, has_eval=False).get("use_liger_kernel") is True
    assert ctx.notes["liger"] is True
    monkeypatch.setenv("TUNEFORGE_LIGER", "0")
    trainer_settings.cache_clear()
    ctx = _ctx(tmp_path, CUDA, None)
    assert "use_liger_kernel" not in training_args_kwargs(ctx, rows=8, has_eval=False)
    assert ctx.notes["liger"] is False
    monkeypatch.delenv("TUNEFORGE_LIGER")
    trainer_settings.cache_clear()
    cpu = _ctx(tmp_path, CPU, None)  # never on the CPU (Triton kernels), and not mentioned there
    assert "use_liger_kernel" not in training_args_kwargs(cpu, rows=8, has_eval=False) and "liger" not in cpu.notes


@pytest.mark.parametrize("value,expected", [(None, False), ("1", True), ("yes", True), ("0", False)])
def test_torch_compile_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None,
                                       expected: bool) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TUNEFORGE_TORCH_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    if value is not None:
        monkeypatch.setenv("TUNEFORGE_TORCH_COMPILE", value)
    trainer_settings.cache_clear()
    kwargs = training_args_kwargs(_ctx(tmp_path, CPU, None), rows=8, has_eval=False)
    assert kwargs.get("torch_compile", False) is expected
    trainer_settings.cache_clear()


def test_a_flag_that_is_not_a_boolean_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_TORCH_COMPILE", "bogus")
    trainer_settings.cache_clear()
    with pytest.raises(ValueError, match="torch_compile"):
        trainer_settings()
    monkeypatch.delenv("TUNEFORGE_TORCH_COMPILE")
    trainer_settings.cache_clear()
