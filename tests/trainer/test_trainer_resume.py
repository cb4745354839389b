"""Never lose work: SIGTERM → checkpoint + exit 75; a rerun resumes and matches an uninterrupted run.

Tolerance: with the same seed, the resumed run must end at the same step count and every per-step training
loss must match the uninterrupted run within 1e-3 absolute (observed: identical to ~1e-6 on the CPU, since
optimizer, scheduler, RNG and data position are all restored).
"""

from __future__ import annotations

import json
import random
import signal
import time

from tests.trainer.trainer_helpers import Result, chat_rows, parse_events, run_trainer, start_trainer
from tuneforge.storage import open_store
from tuneforge.trainer.checkpoints import apply_retention, latest_complete, list_complete, upload_checkpoint

LOSS_TOLERANCE = 1e-3
HP = {"n_epochs": 2, "batch_size": 2, "checkpoint_every_steps": 3, "keep_checkpoints": 2, "max_length": 96}


def _losses(events: list[dict]) -> dict[int, float]:
    return {
        e["data"]["step"]: e["data"]["train_loss"]
        for e in events
        if e["kind"] == "metrics" and "train_loss" in e["data"]
    }


def test_sigterm_then_resume_matches_uninterrupted(make_job) -> None:
    rows = chat_rows(40)
    reference = run_trainer(make_job(rows, hyperparameters=HP, job_id="ftjob-ref"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    ref_losses = _losses(reference.events)
    total = max(ref_losses)
    assert total == 40

    job = make_job(rows, hyperparameters=HP, job_id="ftjob-resume")
    kill_after = random.Random().randint(4, 25)
    proc = start_trainer(job)
    assert proc.stdout is not None
    first_events = []
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        first_events.append(event)
        if event["kind"] == "metrics" and event["data"].get("step") == kill_after:
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    first_events += parse_events(rest)
    first = Result(proc.returncode, first_events, err)
    assert first.returncode == 75, (kill_after, err[-3000:])
    assert [e for e in first.of("status") if e["data"].get("phase") == "preempted"]
    stopped_at = max(_losses(first.events))
    assert kill_after <= stopped_at < total
    assert [c["data"]["step"] for c in first.of("checkpoint")][-1] == stopped_at
    assert not (job.job_dir / "model").exists()

    # a half-written newer checkpoint (no COMPLETE.json marker) must be ignored on resume
    fake = job.job_dir / "checkpoints" / "step-39"
    fake.mkdir(parents=True)
    (fake / "optimizer.pt").write_bytes(b"garbage that must never be unpickled")

    time.sleep(0.01)
    second = run_trainer(job)
    assert second.returncode == 0, second.stderr[-3000:]
    assert any("Resuming from the checkpoint at step" in e["message"] for e in second.of("log"))
    assert min(e["seq"] for e in second.events) > max(e["seq"] for e in first.events)
    resumed = _losses(second.events)
    assert min(resumed) == stopped_at + 1 and max(resumed) == total

    combined = {**_losses(first.events), **resumed}
    assert sorted(combined) == list(range(1, total + 1))
    worst = max(abs(combined[s] - ref_losses[s]) for s in combined)
    assert worst <= LOSS_TOLERANCE, worst

    (res,) = second.of("result")
    (ref_res,) = reference.of("result")
    assert res["data"]["steps"] == total
    assert res["data"]["trained_tokens"] == ref_res["data"]["trained_tokens"]
    # metrics.jsonl holds the whole curve across both runs, one row per step
    rows_out = [json.loads(x) for x in (job.job_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows_out if "train_loss" in r) == list(range(1, total + 1))


def test_incomplete_checkpoints_are_ignored_and_pruned(tmp_path) -> None:
    store = open_store(str(tmp_path / "store"))
    prefix = "jobs/j1"
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "adapter_model.safetensors").write_bytes(b"x" * 10)
    for step, loss in ((2, 1.0), (4, 0.5), (6, 0.9), (8, 0.8)):
        upload_checkpoint(store, local, prefix, step, {"step": step, "valid_loss": loss})
    # half-written: files but no marker, one older and one newer than the newest complete checkpoint
    store.put_bytes(f"{prefix}/checkpoints/step-5/optimizer.pt", b"partial")
    store.put_bytes(f"{prefix}/checkpoints/step-10/optimizer.pt", b"partial")
    assert [c.step for c in list_complete(store, prefix)] == [2, 4, 6, 8]
    latest = latest_complete(store, prefix)
    assert latest is not None and latest.step == 8

    deleted = apply_retention(store, prefix, keep_last=2)
    assert deleted == [2, 5]
    remaining = {info.key.split("/")[3] for info in store.list(f"{prefix}/checkpoints/")}
    # last two (6, 8), best by valid_loss (4), and the newer in-progress one (10)
    assert remaining == {"step-4", "step-6", "step-8", "step-10"}
