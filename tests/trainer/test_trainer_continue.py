"""Continuing training from an earlier job's tuned model or checkpoint (``JobSpec.initial_weights``): the new
job starts from those weights (its first loss is where the earlier job ended, not where a fresh adapter
starts), on the same base model; weights that are gone are bad input."""

from __future__ import annotations

from tests.trainer.trainer_helpers import chat_rows, run_trainer

HP = {"n_epochs": 3, "batch_size": 4, "learning_rate": 3e-3, "max_length": 64, "checkpoint_every_steps": 4}


def _first_loss(result) -> float:  # type: ignore[no-untyped-def]
    losses = {e["data"]["step"]: e["data"]["train_loss"] for e in result.of("metrics") if "train_loss" in e["data"]}
    return float(losses[min(losses)])


def test_continue_from_a_model_and_from_a_checkpoint(make_job) -> None:  # type: ignore[no-untyped-def]
    rows = chat_rows(16)
    first = run_trainer(make_job(rows, hyperparameters=HP, job_id="ftjob-first"))
    assert first.returncode == 0, first.stderr[-3000:]
    losses = [e["data"]["train_loss"] for e in first.of("metrics") if "train_loss" in e["data"]]
    start, end = losses[0], losses[-1]
    assert end < start - 0.2, losses  # it learned something to continue from

    continued = run_trainer(make_job(rows, hyperparameters=HP, job_id="ftjob-second", initial_weights={
        "prefix": "jobs/ftjob-first/model", "kind": "adapter", "source": "ft:tiny:t::first"}))
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert any("Continuing training from ft:tiny:t::first" in e["message"] for e in continued.of("log"))
    # it starts where the first job ended, far below a fresh adapter's first loss
    assert _first_loss(continued) < (start + end) / 2, (start, end, _first_loss(continued))
    (result,) = continued.of("result")
    assert "adapter_model.safetensors" in result["data"]["files"]

    checkpoint = [c["data"]["prefix"] for c in first.of("checkpoint")][-1]  # older ones: removed by retention
    from_checkpoint = run_trainer(make_job(rows, hyperparameters=HP, job_id="ftjob-third", initial_weights={
        "prefix": checkpoint, "kind": "adapter"}))
    assert from_checkpoint.returncode == 0, from_checkpoint.stderr[-3000:]
    assert _first_loss(from_checkpoint) < start


def test_weights_that_are_gone_are_bad_input(make_job) -> None:  # type: ignore[no-untyped-def]
    job = make_job(chat_rows(4), hyperparameters=HP, job_id="ftjob-orphan", initial_weights={
        "prefix": "jobs/ftjob-deleted/model", "kind": "adapter", "source": "ft:tiny:t::deleted"})
    result = run_trainer(job)
    assert result.returncode == 65, result.stderr[-2000:]
    (error,) = result.of("error")
    assert "ft:tiny:t::deleted" in error["message"] and "no longer in the object store" in error["message"]
