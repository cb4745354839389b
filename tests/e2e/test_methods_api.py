"""Every training method through the REST API, embedded mode (a real `tuneforge serve` process and the real
trainer subprocess) on the tiny model: upload in the method's format, create the job, wait, check the
validation metrics (events and checkpoint metrics) and the artifacts. Each job runs two optimizer steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.data import write_chat_file
from tests.support.live_server import ProcessServer, wait_for_status
from tests.support.models import TINY

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _upload(client: httpx.Client, path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        resp = client.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _pairs(n: int, seed: int = 0, openai_format: bool = False) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        prompt, good, bad = f"What is {a} plus {b}?", f"It is {a + b}.", f"It is {a + b + rng.randint(1, 9)}."
        if openai_format:
            rows.append({"input": {"messages": [{"role": "user", "content": prompt}]},
                         "preferred_output": [{"role": "assistant", "content": good}],
                         "non_preferred_output": [{"role": "assistant", "content": bad}]})  # fmt: skip
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return rows


def _hh_dialogues(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Raw HH-RLHF rows: two whole dialogues sharing the prompt, differing in the last assistant turn."""
    rows = []
    for i in range(n):
        a = (i + seed) % 9 + 1
        prompt = f"\n\nHuman: Hi, can you help me?\n\nAssistant: Sure.\n\nHuman: What is {a} times 2?"
        rows.append({"chosen": f"{prompt}\n\nAssistant: It is {a * 2}.",
                     "rejected": f"{prompt}\n\nAssistant: Go away."})  # fmt: skip
    return rows


def _prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"messages": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b)})
    return rows


def _create(client: httpx.Client, model: str, train: str, method: dict[str, Any],
            validation: str | None = None) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"model": model, "training_file": train, "seed": 5, "method": method}
    if validation:
        body["validation_file"] = validation
    resp = client.post("/v1/fine_tuning/jobs", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _run(server: ProcessServer, client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    final = wait_for_status(client, job["id"], TERMINAL, timeout=240)
    assert final["status"] == "succeeded", (final, server.log_tail())
    return final


def _metrics(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "asc", "limit": 100}).json()
    return [e["data"] for e in events["data"] if e["type"] == "metrics"]


def _check_outputs(client: httpx.Client, job: dict[str, Any], valid_keys: tuple[str, ...],
                   weights: str = "adapter_model.safetensors") -> list[dict[str, Any]]:  # fmt: skip
    """Validation metrics as metrics events (base model at step 0, tuned at the end) and checkpoint metrics;
    the tuned model listed as artifacts."""
    metrics = _metrics(client, job["id"])
    valid = [m for m in metrics if all(k in m for k in valid_keys)]
    assert valid, metrics
    assert valid[0]["step"] == 0, "the base model is evaluated before training"
    assert valid[-1]["step"] == 2
    ckpts = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert ckpts, "no checkpoint listed"
    assert all(k in ckpts[0]["metrics"] for k in valid_keys), ckpts[0]["metrics"]
    names = {a["name"] for a in client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts").json()["data"]}
    assert {weights, "manifest.json"} <= names, names
    return valid


HP: dict[str, Any] = {"max_steps": 2, "batch_size": 4, "checkpoint_every_steps": 2}
RL_HP: dict[str, Any] = {"max_steps": 2, "batch_size": 2, "num_generations": 2, "max_completion_length": 8,
                         "checkpoint_every_steps": 2, "learning_rate": 1e-4}  # fmt: skip


def test_supervised_chat_with_validation(process_server: ProcessServer, tiny_model_dir: Path,
                                         tmp_path: Path) -> None:  # fmt: skip
    client = process_server.client()
    train = _upload(client, write_chat_file(tmp_path / "train.jsonl", rows=16))
    valid = _upload(client, write_chat_file(tmp_path / "valid.jsonl", rows=8))
    assert train["format"] == "chat"
    job = _create(client, TINY, train["id"],
                  {"type": "supervised", "supervised": {"hyperparameters": HP}}, valid["id"])  # fmt: skip
    final = _run(process_server, client, job)
    assert final["method"]["type"] == "supervised" and final["trained_tokens"] > 0
    _check_outputs(client, job, ("valid_loss", "valid_mean_token_accuracy"))


@pytest.mark.parametrize("source", ["openai", "hh_rlhf"])
def test_dpo(process_server: ProcessServer, tiny_model_dir: Path, tmp_path: Path, source: str) -> None:
    client = process_server.client()
    if source == "openai":
        rows, vrows = _pairs(8, openai_format=True), _pairs(4, seed=1, openai_format=True)
    else:
        rows, vrows = _hh_dialogues(8), _hh_dialogues(4, seed=3)
    train = _upload(client, _write(tmp_path / "train.jsonl", rows))
    valid = _upload(client, _write(tmp_path / "valid.jsonl", vrows))
    assert train["format"] == valid["format"] == "preference", train
    method = {"type": "dpo", "dpo": {"hyperparameters": {**HP, "beta": 0.2}}}
    job = _create(client, TINY, train["id"], method, valid["id"])
    final = _run(process_server, client, job)
    assert final["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    valid_metrics = _check_outputs(client, job, ("valid_preference_accuracy", "valid_reward_margin"))
    assert 0.0 <= valid_metrics[-1]["valid_preference_accuracy"] <= 1.0


def test_reward_model_then_reinforcement_graded_by_it(process_server: ProcessServer, tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    client = process_server.client()
    train = _upload(client, _write(tmp_path / "pairs.jsonl", _pairs(8)))
    valid = _upload(client, _write(tmp_path / "valid.jsonl", _pairs(4, seed=1)))
    method = {"type": "reward_model", "reward_model": {"hyperparameters": HP}}
    job = _create(client, TINY, train["id"], method, valid["id"])
    rm = _run(process_server, client, job)
    valid_metrics = _check_outputs(client, job, ("valid_preference_accuracy",))
    assert 0.0 <= valid_metrics[-1]["valid_preference_accuracy"] <= 1.0
    assert rm["fine_tuned_model"]

    prompts = _upload(client, _write(tmp_path / "prompts.jsonl", _prompts(4)))
    assert prompts["format"] == "prompt_only", prompts
    method = {"type": "reinforcement", "reinforcement": {
        "algorithm": "grpo", "hyperparameters": RL_HP,
        "grader": {"type": "reward_model", "model": rm["fine_tuned_model"]}}}  # fmt: skip
    rl = _create(client, TINY, prompts["id"], method)
    # resolved to the reward model's store prefix inside the service; the object store's layout is not shown
    grader = rl["method"]["reinforcement"]["grader"]
    assert grader["model"] == rm["fine_tuned_model"] and grader.get("model_prefix") is None
    _run(process_server, client, rl)
    train_metrics = [m for m in _metrics(client, rl["id"]) if "mean_reward" in m]
    assert [m["step"] for m in train_metrics] == [1, 2], train_metrics


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_reinforcement_with_graders(process_server: ProcessServer, tiny_model_dir: Path, tmp_path: Path,
                                    algorithm: str) -> None:  # fmt: skip
    client = process_server.client()
    train = _upload(client, _write(tmp_path / "prompts.jsonl", _prompts(4)))
    valid = _upload(client, _write(tmp_path / "valid.jsonl", _prompts(2, seed=1)))
    # rloo: OpenAI's multi grader, a reference-free format check and the answer check combined
    grader: dict[str, Any] = (
        {"type": "string_check", "reference": "{{item.answer}}", "operation": "eq"}
        if algorithm == "grpo"
        else {"type": "multi", "calculate_output": "0.2 * digits + 0.8 * correct", "graders": {
            "digits": {"type": "regex", "pattern": r"\d", "reference": None},
            "correct": {"type": "regex", "pattern": r"(\d+)", "reference_field": "answer"}}}
    )  # fmt: skip
    method = {"type": "reinforcement",
              "reinforcement": {"algorithm": algorithm, "grader": grader, "hyperparameters": RL_HP}}  # fmt: skip
    job = _create(client, TINY, train["id"], method, valid["id"])
    _run(process_server, client, job)
    valid_metrics = _check_outputs(client, job, ("valid_mean_reward",))
    assert all(0.0 <= m["valid_mean_reward"] <= 1.0 for m in valid_metrics)
    train_metrics = [m for m in _metrics(client, job["id"]) if "mean_reward" in m]
    assert [m["step"] for m in train_metrics] == [1, 2], train_metrics
    if grader["type"] == "multi":
        assert all("reward_digits" in m and "reward_correct" in m for m in train_metrics), train_metrics
        assert all("valid_reward_correct" in m for m in valid_metrics), valid_metrics


def test_ppo_fails_at_once_with_a_clear_message(process_server: ProcessServer, tiny_model_dir: Path,
                                                tmp_path: Path) -> None:  # fmt: skip
    client = process_server.client()
    train = _upload(client, _write(tmp_path / "prompts.jsonl", _prompts(4)))
    method = {"type": "reinforcement", "reinforcement": {
        "algorithm": "ppo", "hyperparameters": RL_HP,
        "grader": {"type": "string_check", "reference": "{{item.answer}}", "operation": "eq"}}}  # fmt: skip
    job = _create(client, TINY, train["id"], method)
    final = wait_for_status(client, job["id"], TERMINAL, timeout=120)
    assert final["status"] == "failed", final
    assert "ppo" in final["error"]["message"] and "grpo" in final["error"]["message"], final["error"]
    assert final["error"]["code"] == "invalid_input", final["error"]
    assert final["trained_tokens"] in (None, 0)
