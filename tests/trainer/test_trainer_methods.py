"""DPO, reward model and reinforcement (GRPO, RLOO) end to end on the tiny model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.trainer.trainer_helpers import preference_rows, prompt_rows, run_trainer


def _train_steps(result) -> list[int]:  # type: ignore[no-untyped-def]
    return [e["data"]["step"] for e in result.of("metrics") if "train_loss" in e["data"]]


def test_dpo_openai_format_with_validation(make_job) -> None:
    job = make_job(
        preference_rows(8, openai_format=True),
        validation=preference_rows(4, seed=1, openai_format=True),
        fmt="preference",
        method={"type": "dpo"},
        hyperparameters={"max_steps": 2, "batch_size": 4, "beta": 0.2, "loss_type": "sigmoid"},
    )
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _train_steps(result) == [1, 2]
    valid = [e["data"] for e in result.of("metrics") if "valid_loss" in e["data"]]
    assert valid and "valid_preference_accuracy" in valid[-1] and "valid_reward_margin" in valid[-1]
    (res,) = result.of("result")
    assert "adapter_model.safetensors" in res["data"]["files"]
    assert res["data"]["trained_tokens"] > 0


def test_reward_model_reports_pairwise_accuracy(make_job) -> None:
    job = make_job(
        preference_rows(8),
        validation=preference_rows(4, seed=1),
        fmt="preference",
        method={"type": "reward_model"},
        hyperparameters={"max_steps": 2, "batch_size": 4},
    )
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    valid = [e["data"] for e in result.of("metrics") if "valid_loss" in e["data"]]
    assert valid and 0.0 <= valid[-1]["valid_preference_accuracy"] <= 1.0
    manifest = json.loads((job.job_dir / "model" / "manifest.json").read_text())
    assert manifest["task"] == "sequence_classification"


REGEX_GRADER = {
    "type": "regex",
    "reference_field": "answer",
    "pattern": r"(\d+)",
    "reference_pattern": r"####\s*(\d+)",
}
MULTI_GRADER = {
    "type": "multi",
    "graders": {"digits": {"type": "regex", "reference_field": None, "pattern": r"\d"}, "correct": REGEX_GRADER},
    "calculate_output": "0.2 * digits + 0.8 * correct",
}


@pytest.mark.parametrize("algorithm,grader", [("grpo", REGEX_GRADER), ("rloo", MULTI_GRADER)], ids=["grpo", "rloo"])
def test_reinforcement_with_regex_or_multi_grader(make_job, algorithm: str, grader: dict[str, Any]) -> None:
    job = make_job(
        prompt_rows(4),
        validation=prompt_rows(2, seed=1),
        fmt="prompt_only",
        method={"type": "reinforcement", "algorithm": algorithm, "grader": grader},
        hyperparameters={
            "max_steps": 2,
            "batch_size": 2,
            "num_generations": 2,
            "max_completion_length": 8,
            "kl_coef": 0.05,
            "learning_rate": 1e-4,
        },
    )
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    train = [e["data"] for e in result.of("metrics") if "mean_reward" in e["data"]]
    assert [m["step"] for m in train] == [1, 2]
    assert all(0.0 <= m["mean_reward"] <= 1.0 for m in train)
    valid = [e["data"] for e in result.of("metrics") if "valid_mean_reward" in e["data"]]
    assert valid, [e["data"] for e in result.of("metrics")]
    if grader["type"] == "multi":
        # one combined reward for the advantages, each sub-grader's mean logged next to it
        for m in train:
            assert 0.0 <= m["reward_digits"] <= 1.0 and 0.0 <= m["reward_correct"] <= 1.0, m
            combined = 0.2 * m["reward_digits"] + 0.8 * m["reward_correct"]
            assert m["mean_reward"] == pytest.approx(combined, abs=1e-5), m
        assert all("valid_reward_digits" in m and "valid_reward_correct" in m for m in valid), valid
    (res,) = result.of("result")
    assert res["data"]["trained_tokens"] > 0


def test_reinforcement_with_reward_model_grader(make_job) -> None:
    rm_job = make_job(
        preference_rows(4),
        fmt="preference",
        method={"type": "reward_model"},
        hyperparameters={"max_steps": 1, "batch_size": 4},
        job_id="ftjob-rm",
    )
    assert run_trainer(rm_job).returncode == 0
    grader = {"type": "reward_model", "model_prefix": "jobs/ftjob-rm/model"}
    job = make_job(
        prompt_rows(2),
        fmt="prompt_only",
        job_id="ftjob-rl",
        method={"type": "reinforcement", "algorithm": "grpo", "grader": grader},
        hyperparameters={"max_steps": 1, "batch_size": 2, "num_generations": 2, "max_completion_length": 6},
    )
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [e["data"]["step"] for e in result.of("metrics") if "mean_reward" in e["data"]] == [1]


def test_reward_model_grader_rejects_a_non_reward_model(make_job) -> None:
    sft = make_job(
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
        hyperparameters={"max_steps": 1},
        job_id="ftjob-sft",
    )
    assert run_trainer(sft).returncode == 0
    job = make_job(
        prompt_rows(2),
        fmt="prompt_only",
        job_id="ftjob-rl2",
        method={
            "type": "reinforcement",
            "grader": {"type": "reward_model", "model_prefix": "jobs/ftjob-sft/model"},
        },
        hyperparameters={"max_steps": 1, "batch_size": 2, "num_generations": 2, "max_completion_length": 4},
    )
    result = run_trainer(job)
    assert result.returncode == 65
    assert "not a reward model" in result.of("error")[0]["message"]
