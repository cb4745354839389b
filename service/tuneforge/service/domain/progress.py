"""Apply the trainer's progress reports to a job: events, live progress, checkpoints, results."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session

from tuneforge.contracts.progress import ProgressEvent
from tuneforge.contracts.status import TERMINAL_STATUSES, JobStatus
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import Checkpoint, Job, now
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.lifecycle import add_event, notifier

#: metrics copied into the job's live ``progress`` field (and exported to Prometheus)
PROGRESS_KEYS = (
    "step", "total_steps", "epoch", "train_loss", "valid_loss", "learning_rate", "tokens_per_second",
    "eta_seconds", "trained_tokens", "gpu_memory_bytes", "mfu", "valid_mean_token_accuracy",
    "valid_preference_accuracy", "valid_mean_reward", "mean_reward",
    # PPO (reinforcement, algorithm ppo)
    "kl", "kl_coef", "policy_loss", "value_loss", "value_explained_variance",
)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _metrics_message(data: dict[str, Any]) -> str:
    parts = [f"Step {data.get('step', '?')}/{data.get('total_steps', '?')}"]
    for key, label in (("train_loss", "training loss"), ("valid_loss", "validation loss")):
        if _finite(data.get(key)):
            parts.append(f"{label}={data[key]:.4f}")
    return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def apply_events(session: Session, job: Job, events: list[ProgressEvent], checkpoint_name: str) -> int:
    """Returns how many events were new; duplicates (same or lower ``seq``) are dropped."""
    applied = 0
    for event in sorted(events, key=lambda e: e.seq):
        if event.seq and event.seq <= job.last_seq:
            continue
        job.last_seq = max(job.last_seq, event.seq)
        applied += 1
        data = {k: v for k, v in event.data.items() if v is None or not isinstance(v, float) or math.isfinite(v)}
        if event.kind == "metrics":
            progress = dict(job.progress or {})
            progress.update({k: data[k] for k in PROGRESS_KEYS if k in data})
            job.progress = progress
            if _finite(data.get("eta_seconds")) and job.status == JobStatus.RUNNING:  # not while paused
                job.estimated_finish = now() + int(data["eta_seconds"])
            add_event(session, job, event.message or _metrics_message(data), type="metrics", data=data,
                      commit=False)
        elif event.kind == "status":
            if "total_steps" in data:
                job.progress = {**(job.progress or {}), "total_steps": data["total_steps"]}
            add_event(session, job, event.message or f"Trainer {data.get('phase', 'status')}", data=data,
                      commit=False)
        elif event.kind == "checkpoint":
            step = int(data.get("step", 0))
            metrics = {"step": step, **(data.get("metrics") or {})}
            session.add(Checkpoint(
                id=new_id("ftckpt"), job_id=job.id, tenant_id=job.tenant_id, step_number=step,
                metrics=metrics, prefix=str(data.get("prefix", "")),
                fine_tuned_model_checkpoint=f"{checkpoint_name}:ckpt-step-{step}",
            ))
            add_event(session, job, event.message or f"Checkpoint saved at step {step}", data=data, commit=False)
        elif event.kind == "result":
            job.result = data
            if isinstance(data.get("trained_tokens"), int):
                job.trained_tokens = data["trained_tokens"]
            add_event(session, job, event.message or "Trainer finished; model uploaded", data=data, commit=False)
        elif event.kind == "error":
            job.trainer_error = {"code": str(data.get("code", "training_error")),
                                 "message": event.message or str(data.get("message", "training failed"))}
            add_event(session, job, event.message or "Trainer reported an error", level="error", data=data,
                      commit=False)
        else:
            deleted = data.get("deleted_checkpoint_steps")
            if isinstance(deleted, list) and deleted:
                # retention removed these from the store: the checkpoints API must not list them any more
                SystemRepo(session).delete_checkpoints(job, [int(s) for s in deleted])
            add_event(session, job, event.message, level=event.level, data=data or None, commit=False)
    if job.status in TERMINAL_STATUSES:
        job.estimated_finish = None
    session.commit()
    if applied:
        notifier.notify(job.id)
    return applied
