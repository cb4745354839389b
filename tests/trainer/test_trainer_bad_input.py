"""Bad input ends with exit code 65 and one clear error event; other failures with 1 and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.trainer.trainer_helpers import chat_rows, parse_events, run_trainer, trainer_env


def _error(result) -> str:  # type: ignore[no-untyped-def]
    (err,) = result.of("error")
    assert "Traceback" not in err["message"]
    assert "\n" not in err["message"]
    return str(err["message"])


def test_wrong_format_for_method(make_job) -> None:
    job = make_job(chat_rows(4), method={"type": "dpo"})
    result = run_trainer(job)
    assert result.returncode == 65, result.stderr[-2000:]
    assert "preference" in _error(result)


def test_unknown_base_model(make_job) -> None:
    job = make_job(chat_rows(4), base_model="no-such-model-anywhere")
    result = run_trainer(job)
    assert result.returncode == 65
    assert "unknown base model 'no-such-model-anywhere'" in _error(result)


def test_missing_training_file(make_job) -> None:
    job = make_job(chat_rows(4))
    (job.store_dir / "files" / "file-train").unlink()
    result = run_trainer(job)
    assert result.returncode == 65
    assert "not found" in _error(result)


def test_invalid_line_in_data(make_job) -> None:
    bad = {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    job = make_job([*chat_rows(2), bad])
    result = run_trainer(job)
    assert result.returncode == 65
    assert "line 3" in _error(result)


def test_invalid_spec(tmp_path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"job_id": "x"}))
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge.trainer", "--spec", str(spec)],
        env=trainer_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 65
    (event,) = parse_events(proc.stdout)
    assert event["kind"] == "error" and "invalid job spec" in event["message"]


@pytest.mark.parametrize("hp", [{"learning_rate": float("nan")}])
def test_unexpected_failure_is_one_line(make_job, hp) -> None:
    # a NaN learning rate passes the schema but breaks training: one-line error, traceback on stderr only
    job = make_job(chat_rows(4), hyperparameters=hp)
    result = run_trainer(job)
    assert result.returncode in (1, 65)
    _error(result)


def test_bad_multi_grader_formula_is_refused_before_training(make_job) -> None:
    grader = {
        "type": "multi",
        "graders": {"correct": {"type": "string_check", "reference_field": "answer"}},
        "calculate_output": "correct.__class__",
    }
    job = make_job(
        [{"prompt": "2+2?", "answer": "4"}],
        fmt="prompt_only",
        method={"type": "reinforcement", "algorithm": "grpo", "grader": grader},
    )
    result = run_trainer(job)
    assert result.returncode == 65, result.stderr[-2000:]
    assert "attribute access 'correct.__class__' is not allowed" in _error(result)
