"""Run one JobSpec: resolve the model, build the method's trainer, train (resuming if possible), publish."""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tuneforge.contracts.jobspec import JobSpec
from tuneforge.storage import ObjectNotFound, ObjectStore, open_store
from tuneforge.trainer.callbacks import MESSAGE_KEYS, CheckpointCallback, ProgressCallback, rename_metrics
from tuneforge.trainer.checkpoints import CheckpointInfo, download_checkpoint, latest_complete
from tuneforge.trainer.context import RunContext, describe_gradient_checkpointing
from tuneforge.trainer.data import load_dataset_rows
from tuneforge.trainer.device import detect_device, peak_memory_bytes
from tuneforge.trainer.errors import BadInput, Preempted
from tuneforge.trainer.graders import check_grader
from tuneforge.trainer.initial_weights import fetch as fetch_initial_weights
from tuneforge.trainer.integrations import TrackerCallback, Trackers
from tuneforge.trainer.launch import is_main_process, world
from tuneforge.trainer.models import resolve_model
from tuneforge.trainer.preempt import PreemptFlag
from tuneforge.trainer.progress import ProgressReporter
from tuneforge.trainer.publish import fix_adapter_config, model_prefix, publish_model
from tuneforge.trainer.settings import trainer_settings

METHODS = {
    "supervised": "tuneforge.trainer.methods.sft",
    "dpo": "tuneforge.trainer.methods.dpo",
    "reward_model": "tuneforge.trainer.methods.reward",
    "reinforcement": "tuneforge.trainer.methods.rl",
}


def metrics_key(spec: JobSpec) -> str:
    return f"{spec.output_prefix.rstrip('/')}/metrics.jsonl"


def check_spec(spec: JobSpec) -> None:
    """What the contract cannot check alone: the grader's patterns compile with the ``regex`` module; PPO's rules
    on the resolved values (the adapter type, how an ``auto`` batch divides)."""
    method = spec.method
    if method.type == "reinforcement":
        assert method.grader is not None  # required by the contract
        check_grader(method.grader)
        if method.algorithm == "ppo":
            from tuneforge.trainer.methods.ppo import check as check_ppo

            check_ppo(spec)


def _workdir(spec: JobSpec) -> Path:
    base = trainer_settings().workdir
    rank, size = world()
    if base:
        path = Path(base).expanduser() / (spec.job_id if size == 1 else f"{spec.job_id}-rank{rank}")
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"tuneforge-{spec.job_id}-"))


def _prior_metrics(store: ObjectStore, spec: JobSpec, upto_step: int) -> list[dict[str, Any]]:
    try:
        raw = store.get_bytes(metrics_key(spec)).decode()
    except ObjectNotFound:
        return []
    rows = []
    for line in raw.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= upto_step:
            rows.append(row)
    return rows


def _resume_point(ctx: RunContext) -> tuple[CheckpointInfo | None, Path | None]:
    ckpt = latest_complete(ctx.store, ctx.spec.output_prefix)
    if ckpt is None:
        return None, None
    local = download_checkpoint(ctx.store, ckpt, ctx.workdir / "resume" / f"checkpoint-{ckpt.step}")
    ctx.reporter.info(f"Resuming from the checkpoint at step {ckpt.step}")
    return ckpt, local


def _baseline_eval(ctx: RunContext, trainer: Any) -> None:
    """Validation metrics of the untouched base model (step 0), so every job shows what training bought."""
    metrics = trainer.evaluate()
    _, valid = rename_metrics(metrics)
    if valid:
        parts = ", ".join(f"{k}={valid[k]:.4f}" for k in MESSAGE_KEYS if k in valid)
        ctx.reporter.emit("metrics", f"Before training: {parts}", step=0, **valid)


def _describe(ctx: RunContext, built: Any) -> str:
    hp = ctx.hp
    parts = [
        f"method={ctx.spec.method.type}",
        f"adapter={ctx.spec.adapter.type}",
        f"device={ctx.device.name}",
        f"precision={'bf16' if ctx.device.bf16 else 'fp16' if ctx.device.fp16 else 'fp32'}",
        f"batch_size={hp.batch_size}",
        f"max_length={hp.max_length}",
        f"gradient_checkpointing={describe_gradient_checkpointing(hp, ctx.device)}",
    ]
    parts += [f"{k}={v}" for k, v in ctx.notes.items()]
    return "Training setup: " + ", ".join(parts)


def run(spec: JobSpec, reporter: ProgressReporter, preempt: PreemptFlag) -> dict[str, Any]:
    check_spec(spec)
    try:
        store = open_store(spec.storage_url)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    device = detect_device()
    reporter.status("starting", f"Trainer starting on {device.name}", device=device.name)
    workdir = _workdir(spec)
    try:
        return _run(spec, store, reporter, preempt, device, workdir)
    finally:
        if not trainer_settings().keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(
    spec: JobSpec,
    store: ObjectStore,
    reporter: ProgressReporter,
    preempt: PreemptFlag,
    device: Any,
    workdir: Path,
) -> dict[str, Any]:
    # data first: a wrong file fails in seconds, before the model is fetched
    train_format, train_rows = load_dataset_rows(store, spec.training_file, spec.method.type, "training")
    valid_format, valid_rows = (
        load_dataset_rows(store, spec.validation_file, spec.method.type, "validation")
        if spec.validation_file is not None
        else (None, None)
    )
    model_dir = resolve_model(spec.base_model, store)
    initial_adapter = None
    if spec.initial_weights is not None:
        fetched = fetch_initial_weights(store, spec.initial_weights, workdir / "initial")
        if spec.initial_weights.kind == "full":
            model_dir = fetched
        else:
            initial_adapter = fetched
        reporter.info(f"Continuing training from {spec.initial_weights.source or spec.initial_weights.prefix}")
    if preempt.requested:
        raise Preempted("stopped before training started; nothing new to checkpoint")
    ctx = RunContext(
        spec,
        store,
        reporter,
        preempt,
        device,
        workdir,
        model_dir,
        train_format=train_format,
        train_rows=train_rows,
        valid_format=valid_format,
        valid_rows=valid_rows,
        initial_adapter=initial_adapter,
    )
    built = importlib.import_module(METHODS[spec.method.type]).build(ctx)
    ckpt, resume_dir = _resume_point(ctx)
    prior = _prior_metrics(store, spec, ckpt.step) if ckpt else []

    main_process = is_main_process()

    def write_metrics() -> None:
        if not main_process:
            return
        rows = prior + reporter.metrics_rows
        store.put_bytes(metrics_key(spec), "".join(json.dumps(r) + "\n" for r in rows).encode())

    progress_cb = ProgressCallback(reporter, device, built.flops_per_token)
    checkpoint_cb = CheckpointCallback(
        store,
        spec.output_prefix,
        reporter,
        progress_cb,
        preempt,
        keep_last=spec.hyperparameters.keep_checkpoints,
        after_upload=write_metrics,
    )
    trainer = built.trainer
    # HF's printer/progress-bar callbacks would write to stdout, which carries JSON events without a channel
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as BarCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(BarCallback)
    if ckpt is None and ctx.valid_rows and not trainer_settings().skip_baseline_eval:
        _baseline_eval(ctx, trainer)
    trainer.add_callback(progress_cb)
    trainer.add_callback(checkpoint_cb)
    trackers = Trackers(spec, reporter) if spec.integrations and main_process else None
    if trackers is not None:
        trainer.add_callback(TrackerCallback(trackers))
    reporter.info(_describe(ctx, built))
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    except BaseException:
        if trackers is not None:
            trackers.finish("FAILED")
        raise
    state = trainer.state
    if checkpoint_cb.stopped_for_preemption and state.global_step < state.max_steps:
        write_metrics()
        if trackers is not None:
            trackers.finish("KILLED")  # paused or preempted: the resumed run logs into the same one
        raise Preempted(f"preempted at step {state.global_step}/{state.max_steps}; checkpoint saved")

    reporter.status("saving", "Saving and uploading the tuned model")
    final_dir = workdir / "final"
    built.save(final_dir)
    if not main_process:
        return {"steps": state.global_step}  # rank 0 publishes and reports
    fix_adapter_config(final_dir, spec.base_model)
    files = publish_model(store, spec, final_dir, extra=built.manifest_extra)
    write_metrics()
    trained_tokens = int(state.num_input_tokens_seen or 0) or int(progress_cb._tokens_prev)
    final_metrics = {"step": state.global_step, **progress_cb.last_train, **progress_cb.last_valid}
    result = {
        "trained_tokens": trained_tokens,
        "model_prefix": model_prefix(spec),
        "files": files,
        "steps": state.global_step,
        "metrics": final_metrics,
        "train_runtime_s": round(float(output.metrics.get("train_runtime", 0.0)), 3),
    }
    memory = peak_memory_bytes()
    if memory is not None:
        result["peak_gpu_memory_bytes"] = memory
    if trackers is not None:
        trackers.log_model(final_dir, result)
        trackers.finish("FINISHED")
    reporter.emit("result", f"Training finished after {state.global_step} steps; model uploaded", **result)
    return result
