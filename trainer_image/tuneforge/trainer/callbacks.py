"""HF Trainer callbacks: progress/metrics reporting, checkpoint upload, retention and preemption."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tuneforge.storage import ObjectStore
from tuneforge.trainer.checkpoints import apply_retention, upload_checkpoint
from tuneforge.trainer.device import DeviceInfo, peak_memory_bytes
from tuneforge.trainer.preempt import PreemptFlag
from tuneforge.trainer.progress import ProgressReporter

#: trainer log keys renamed to the names the service knows (``tuneforge.service.domain.progress``)
TRAIN_ALIASES = {
    "loss": "train_loss",
    "reward": "mean_reward",
    "mean_token_accuracy": "train_mean_token_accuracy",
}
EVAL_ALIASES = {
    "eval_loss": "valid_loss",
    "eval_mean_token_accuracy": "valid_mean_token_accuracy",
    "eval_rewards/accuracies": "valid_preference_accuracy",
    "eval_accuracy": "valid_preference_accuracy",
    "eval_rewards/margins": "valid_reward_margin",
    "eval_reward": "valid_mean_reward",
}
#: HF speed/summary keys: not per-step metrics (tokens/s is measured per logging window instead)
DROP_KEYS = {
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_tokens_per_second",
    "total_flos",
    "num_input_tokens_seen",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
}
#: validation metrics named in the event message
MESSAGE_KEYS = ("valid_loss", "valid_mean_token_accuracy", "valid_preference_accuracy", "valid_mean_reward")


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)
    return _number(item()) if callable(item) else None


def _clean_key(key: str) -> str:
    return key.replace("/", "_").replace(" ", "_")


def rename_metrics(logs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one trainer log into (train metrics, validation metrics) with service names."""
    train: dict[str, Any] = {}
    valid: dict[str, Any] = {}
    for key, raw in logs.items():
        value = _number(raw)
        if value is None or key in DROP_KEYS:
            continue
        if key.startswith("eval_"):
            valid[EVAL_ALIASES.get(key, "valid_" + _clean_key(key[5:]))] = value
        else:
            train[TRAIN_ALIASES.get(key, _clean_key(key))] = value
    return train, valid


class ProgressCallback(TrainerCallback):
    """Reports ``status`` at the start and one ``metrics`` event per logging step / evaluation."""

    def __init__(self, reporter: ProgressReporter, device: DeviceInfo, flops_per_token: float | None = None) -> None:
        self.reporter = reporter
        self.device = device
        self.flops_per_token = flops_per_token
        self.last_train: dict[str, Any] = {}
        self.last_valid: dict[str, Any] = {}
        self._t_start: float | None = None
        self._step_start = 0
        self._t_step: float | None = None
        #: seconds spent inside training steps since the last log (excludes evaluation and checkpointing)
        self._busy = 0.0
        self._tokens_prev = 0
        self.tokens_per_second: float | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.reporter.status("running", f"Training started: {state.max_steps} steps", total_steps=state.max_steps)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        now = time.perf_counter()
        self._t_step = now
        if self._t_start is None:
            self._t_start = now
            self._step_start = state.global_step
            self._tokens_prev = int(state.num_input_tokens_seen or 0)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._t_step is not None:
            self._busy += time.perf_counter() - self._t_step
            self._t_step = None

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or ("train_loss" in logs and "loss" not in logs):
            return  # the summary log at the end of train()
        train, valid = rename_metrics(logs)
        base: dict[str, Any] = {"step": state.global_step, "total_steps": state.max_steps}
        if state.epoch is not None:
            base["epoch"] = round(float(state.epoch), 4)
        if valid:
            self.last_valid = valid
            parts = ", ".join(f"{k}={valid[k]:.4f}" for k in MESSAGE_KEYS if k in valid) or "evaluated"
            self.reporter.emit("metrics", f"Step {state.global_step}/{state.max_steps}: {parts}", **base, **valid)
        if "train_loss" not in train and "mean_reward" not in train:
            return
        now = time.perf_counter()
        tokens = int(state.num_input_tokens_seen or 0) or int(train.get("num_tokens") or 0)
        if self._busy > 0 and tokens > self._tokens_prev:
            self.tokens_per_second = (tokens - self._tokens_prev) / self._busy
        self._busy, self._tokens_prev = 0.0, tokens
        data = {**base, **train}
        data["trained_tokens"] = tokens
        if self.tokens_per_second is not None:
            data["tokens_per_second"] = round(self.tokens_per_second, 2)
            if self.device.cuda and self.device.peak_flops and self.flops_per_token:
                data["mfu"] = round(self.tokens_per_second * self.flops_per_token / self.device.peak_flops, 4)
        done = state.global_step - self._step_start
        if self._t_start is not None and done > 0:
            per_step = (now - self._t_start) / done
            data["eta_seconds"] = round(max(0, state.max_steps - state.global_step) * per_step, 1)
        memory = peak_memory_bytes()
        if memory is not None:
            data["gpu_memory_bytes"] = memory
        self.last_train = train
        loss = train.get("train_loss", train.get("mean_reward"))
        label = "training loss" if "train_loss" in train else "mean reward"
        self.reporter.emit("metrics", f"Step {state.global_step}/{state.max_steps}: {label}={loss:.4f}", **data)


class CheckpointCallback(TrainerCallback):
    """Uploads every HF checkpoint to the store (marker last), applies retention, honours SIGTERM."""

    def __init__(
        self,
        store: ObjectStore,
        output_prefix: str,
        reporter: ProgressReporter,
        progress: ProgressCallback,
        preempt: PreemptFlag,
        keep_last: int,
        after_upload: Callable[[], None] | None = None,
        best_metric: str = "valid_loss",
    ) -> None:
        self.store = store
        self.output_prefix = output_prefix
        self.reporter = reporter
        self.progress = progress
        self.preempt = preempt
        self.keep_last = keep_last
        self.after_upload = after_upload
        self.best_metric = best_metric
        self.saved_steps: list[int] = []
        self.stopped_for_preemption = False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.preempt.requested and not self.stopped_for_preemption:
            self.stopped_for_preemption = True
            control.should_log = True
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        step = state.global_step
        local = Path(str(args.output_dir)) / f"checkpoint-{step}"
        if not state.is_world_process_zero or not local.is_dir():  # rank 0 alone uploads
            return
        metrics: dict[str, Any] = {"step": step}
        for key in ("train_loss", "mean_reward", "train_mean_token_accuracy"):
            if key in self.progress.last_train:
                metrics[key] = self.progress.last_train[key]
        metrics.update(self.progress.last_valid)
        info = upload_checkpoint(self.store, local, self.output_prefix, step, metrics)
        self.saved_steps.append(step)
        self.reporter.emit(
            "checkpoint", f"Checkpoint saved at step {step}", step=step, prefix=info.prefix, metrics=metrics
        )
        deleted = apply_retention(self.store, self.output_prefix, self.keep_last, self.best_metric)
        if deleted:
            self.reporter.emit(
                "log",
                f"Removed old checkpoints: steps {', '.join(map(str, deleted))}",
                deleted_checkpoint_steps=deleted,
            )
        shutil.rmtree(local, ignore_errors=True)
        if self.after_upload is not None:
            self.after_upload()
