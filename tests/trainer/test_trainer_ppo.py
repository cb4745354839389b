"""PPO jobs end to end on the tiny model: every metric, checkpoints, the reward model on the shared base, exact
resume after SIGTERM, refusals, torchrun, and a toy task it must learn."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.trainer_helpers import Result, parse_events, preference_rows, prompt_rows, run_trainer, start_trainer

#: every per-step metric a PPO job reports (besides step/total_steps/epoch/eta)
PPO_METRICS = (
    "train_loss", "mean_reward", "mean_reward_normalized", "kl", "kl_coef", "mean_non_score_reward", "policy_loss",
    "value_loss", "policy_clipfrac", "value_clipfrac", "approx_kl", "entropy", "value_explained_variance",
    "completions_mean_length", "completions_clipped_ratio", "learning_rate", "tokens_per_second", "trained_tokens",
)  # fmt: skip
DIGITS_GRADER = {"type": "regex", "reference_field": None, "pattern": r"\d"}
MULTI_GRADER = {
    "type": "multi",
    "graders": {
        "digits": DIGITS_GRADER,
        "correct": {"type": "regex", "reference_field": "answer", "pattern": r"(\d+)",
                    "reference_pattern": r"####\s*(\d+)"},
    },
    "calculate_output": "0.2 * digits + 0.8 * correct",
}


def _ppo(grader: dict[str, Any]) -> dict[str, Any]:
    return {"type": "reinforcement", "algorithm": "ppo", "grader": grader}


def _train_metrics(result: Result) -> list[dict[str, Any]]:
    return [e["data"] for e in result.of("metrics") if "policy_loss" in e["data"]]


def _setup_line(result: Result) -> str:
    return next(e["message"] for e in result.of("log") if e["message"].startswith("Training setup"))


def test_ppo_job_reports_every_metric_and_publishes_the_policy(make_job: Any) -> None:
    job = make_job(
        prompt_rows(4), validation=prompt_rows(2, seed=1), fmt="prompt_only", method=_ppo(MULTI_GRADER),
        hyperparameters={"max_steps": 2, "batch_size": 2, "num_generations": 2, "checkpoint_every_steps": 2,
                         "learning_rate": 1e-3, "max_length": 48, "max_completion_length": 6, "num_mini_batches": 2,
                         "ppo_epochs": 2},
    )  # fmt: skip
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    train = _train_metrics(result)
    assert [m["step"] for m in train] == [1, 2]
    for m in train:
        missing = [k for k in PPO_METRICS if k not in m]
        assert not missing, (missing, m)
        assert 0.0 <= m["mean_reward"] <= 1.0 and 0.0 <= m["policy_clipfrac"] <= 1.0
        assert 0.0 <= m["reward_digits"] <= 1.0 and 0.0 <= m["reward_correct"] <= 1.0, m
        assert 1 <= m["completions_mean_length"] <= 6
    # the first rollout comes from the starting policy: no KL to it yet, beta at its start value
    assert train[0]["kl"] == 0.0 and train[0]["kl_coef"] == 0.15
    valid = [e["data"] for e in result.of("metrics") if "valid_mean_reward" in e["data"]]
    assert [v["step"] for v in valid] == [0, 2], valid
    assert valid[0]["valid_kl"] == 0.0, "step 0 evaluates the base model itself"
    assert "valid_reward_digits" in valid[-1]
    assert "algorithm=ppo" in _setup_line(result) and "value_head_init=zero" in _setup_line(result)

    (res,) = result.of("result")
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(res["data"]["files"])
    assert res["data"]["trained_tokens"] == train[-1]["trained_tokens"] > 0
    manifest = json.loads((job.job_dir / "model" / "manifest.json").read_text())
    assert (manifest["algorithm"], manifest["task"]) == ("ppo", "causal_lm")
    config = json.loads((job.job_dir / "model" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == job.spec["base_model"]
    ckpt = job.job_dir / "checkpoints" / "step-2"
    for name in ("COMPLETE.json", "adapter_model.safetensors", "critic_adapter.safetensors",
                 "value_head.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "ppo_state.json"):
        assert (ckpt / name).is_file(), name  # fmt: skip
    state = json.loads((ckpt / "ppo_state.json").read_text())
    assert state["global_step"] == 2 and state["reward_normalizer"]["fitted"] is True


def test_ppo_scores_with_the_reward_model_adapter_on_its_own_base(make_job: Any, tiny_model: Path) -> None:
    """A LoRA reward model on the same base is attached as a frozen adapter (no second copy of the base); its
    scores equal those of the merged sequence classifier, and the critic starts from it."""
    rm_job = make_job(preference_rows(4), fmt="preference", method={"type": "reward_model"},
                      hyperparameters={"max_steps": 1, "batch_size": 4}, job_id="ftjob-rm")  # fmt: skip
    assert run_trainer(rm_job).returncode == 0
    grader = {"type": "reward_model", "model_prefix": "jobs/ftjob-rm/model"}
    job = make_job(prompt_rows(2), validation=prompt_rows(2, seed=3), fmt="prompt_only", job_id="ftjob-ppo-rm",
                   method=_ppo(grader), hyperparameters={"max_steps": 1, "batch_size": 2, "max_length": 48,
                                                        "max_completion_length": 5})  # fmt: skip
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    setup = _setup_line(result)
    assert "reward=reward model adapter on the shared base" in setup and "value_head_init=reward_model" in setup
    assert [m["step"] for m in _train_metrics(result)] == [1]

    import torch

    from tuneforge.contracts.graders import RewardModelGrader
    from tuneforge.storage import open_store
    from tuneforge.trainer.graders import download_reward_model, load_downloaded_reward_model
    from tuneforge.trainer.methods import ppo_models
    from tuneforge.trainer.models import load_causal_lm, load_tokenizer

    store = open_store(rm_job.store_dir.as_uri())
    rm_grader = RewardModelGrader(model="rm", model_prefix=grader["model_prefix"])
    rm_dir, manifest = download_reward_model(rm_grader, store, job.root / "check")
    merged = load_downloaded_reward_model(rm_dir, manifest, store, torch.float32)
    tokenizer = load_tokenizer(rm_dir)
    from peft import LoraConfig

    shared = ppo_models.SharedBaseModels(load_causal_lm(tiny_model, torch.float32),
                                         LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"))  # fmt: skip
    weights, head = ppo_models.split_reward_adapter(rm_dir)
    shared.add_reward(ppo_models.lora_config_from(rm_dir), weights, head)
    weights, head = ppo_models.split_reward_adapter(rm_dir)
    shared.add_critic(ppo_models.lora_config_from(rm_dir), weights, head)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                           tokenize=False) for q, a in (("1+1=", "2"), ("What is 3 plus 4?", "7!"))]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        expected = merged(**enc).logits[:, 0]
        got = shared.reward_scores(enc["input_ids"], enc["attention_mask"], tokenizer.pad_token_id)
        # the critic starts as a copy of the reward model: its value where the reward model pools is the reward
        last = ppo_models.last_non_pad(enc["input_ids"], tokenizer.pad_token_id)
        with shared.adapter(ppo_models.CRITIC):
            hidden = shared.hidden_states(ppo_models.Batch(enc["input_ids"], enc["attention_mask"], 1))
        values = shared.value_head(hidden[torch.arange(2), last]).squeeze(-1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(values, expected, atol=1e-4, rtol=1e-4)
    # policy, critic, reference and reward model together hold ONE copy of the base weights
    base = sum(p.numel() for p in load_causal_lm(tiny_model, torch.float32).parameters())
    assert sum(p.numel() for n, p in shared.peft.named_parameters() if "lora_" not in n) == base


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"adapter": {"type": "full"}}, "trains LoRA adapters"),
        ({"hyperparameters": {"num_generations": 2, "num_mini_batches": 3}}, "must divide the rollout"),
        ({"hyperparameters": {"value_head_init": "reward_model"}}, "value_head_init 'reward_model'"),
        ({"hyperparameters": {"max_length": 16, "max_completion_length": 16}}, "room for the prompt"),
        ({"method": {"type": "reinforcement", "algorithm": "grpo", "grader": DIGITS_GRADER},
          "hyperparameters": {"num_generations": 2, "cliprange": 0.1}}, "applies only with algorithm 'ppo'"),
    ],
    ids=["full", "minibatches", "value-init", "length", "ppo-field-with-grpo"],
)
def test_ppo_refuses_what_cannot_work(make_job: Any, extra: dict[str, Any], needle: str) -> None:
    hp = {"max_steps": 1, "batch_size": 2, **extra.get("hyperparameters", {})}
    job = make_job(prompt_rows(2), fmt="prompt_only", hyperparameters=hp,
                   **{"method": _ppo(DIGITS_GRADER), **{k: v for k, v in extra.items() if k != "hyperparameters"}})
    result = run_trainer(job)
    assert result.returncode == 65, result.stderr[-2000:]
    (error,) = result.of("error")
    assert needle in error["message"] and error["data"]["code"] == "invalid_input", error


RESUME_HP = {"max_steps": 6, "batch_size": 2, "num_generations": 2, "checkpoint_every_steps": 2,
             "keep_checkpoints": 1, "learning_rate": 2e-3, "max_length": 40, "warmup_ratio": 0,
             "max_completion_length": 6, "num_mini_batches": 2, "ppo_epochs": 2, "target_kl": 0.5,
             "kl_horizon": 50}  # fmt: skip
#: per-step figures that must match an uninterrupted run: losses, and what the rollouts produced
RESUME_KEYS = ("train_loss", "policy_loss", "value_loss", "mean_reward", "kl", "kl_coef")
RESUME_TOLERANCE = 1e-4


def _per_step(events: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    return {e["data"]["step"]: {k: e["data"][k] for k in RESUME_KEYS}
            for e in events if e["kind"] == "metrics" and "policy_loss" in e["data"]}  # fmt: skip


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(make_job: Any) -> None:
    rows = prompt_rows(6)
    reference = run_trainer(make_job(rows, fmt="prompt_only", method=_ppo(DIGITS_GRADER), hyperparameters=RESUME_HP,
                                     job_id="ftjob-ppo-ref"))  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = _per_step(reference.events)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]

    job = make_job(rows, fmt="prompt_only", method=_ppo(DIGITS_GRADER), hyperparameters=RESUME_HP,
                   job_id="ftjob-ppo-resume")  # fmt: skip
    kill_after = random.Random().randint(1, 4)
    proc = start_trainer(job)
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:
        if line.startswith("{"):
            events.append(json.loads(line))
            if events[-1]["kind"] == "metrics" and events[-1]["data"].get("step") == kill_after:
                proc.send_signal(signal.SIGTERM)
                break
    rest, err = proc.communicate(timeout=300)
    events += parse_events(rest)
    assert proc.returncode == 75, (kill_after, err[-3000:])
    first = _per_step(events)
    stopped = max(first)
    assert kill_after <= stopped < 6
    assert [e["data"]["step"] for e in events if e["kind"] == "checkpoint"][-1] == stopped

    second = run_trainer(job)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = _per_step(second.events)
    assert sorted(resumed) == list(range(stopped + 1, 7))
    combined = {**first, **resumed}
    worst = max(abs(combined[s][k] - expected[s][k]) for s in combined for k in RESUME_KEYS)
    assert worst <= RESUME_TOLERANCE, (kill_after, worst, combined, expected)
    (res,) = second.of("result")
    assert res["data"]["steps"] == 6
    assert res["data"]["trained_tokens"] == reference.of("result")[0]["data"]["trained_tokens"]


@pytest.fixture(scope="session")
def sharper_tiny_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its (tied) embeddings scaled by 3. At the shared tiny model's init scale (std 0.02) the
    final RMSNorm caps every logit near +-1.3: its distribution is almost uniform and no fine-tuning moves it far
    (PPO took the per-token digit probability from 0.037 to 0.05 in 30 steps). Scaled, it starts as flat (entropy
    5.5 nats) but can learn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path_factory.mktemp("sharper") / "tiny-sharper"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(3.0)
    model.save_pretrained(str(target), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(str(target))
    return target


@pytest.mark.slow
def test_ppo_learns_a_toy_task_and_holds_kl_near_its_target(make_job: Any, sharper_tiny_model: Path) -> None:
    """Reward 1 when the response contains a digit (a quarter of the model's 8-token responses do at first): the
    mean reward must rise clearly within 40 steps, while the adaptive controller keeps the KL near its target."""
    target = 3.0
    hp = {"max_steps": 40, "batch_size": 4, "num_generations": 4, "learning_rate": 1e-2, "max_length": 40,
          "warmup_ratio": 0, "lr_scheduler": "constant",
          "max_completion_length": 8, "num_mini_batches": 2, "target_kl": target, "kl_coef": 0.05,
          "kl_horizon": 32, "missing_eos_penalty": 0.0, "temperature": 1.0}  # fmt: skip
    job = make_job(prompt_rows(32), fmt="prompt_only", method=_ppo(DIGITS_GRADER), hyperparameters=hp,
                   base_model=str(sharper_tiny_model))  # fmt: skip
    result = run_trainer(job, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    train = _train_metrics(result)
    assert len(train) == 40
    rewards = [round(m["mean_reward"], 2) for m in train]
    kls = [round(m["kl"], 2) for m in train]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last >= first + 0.2, (first, last, rewards)
    assert 0.3 * target <= sum(kls[-10:]) / 10 <= 1.7 * target, (kls, [m["kl_coef"] for m in train])


@pytest.mark.slow
def test_two_cpu_workers_run_ppo_with_gloo(make_job: Any) -> None:
    job = make_job(prompt_rows(8), fmt="prompt_only", method=_ppo(DIGITS_GRADER), resources={"gpus": 2},
                   hyperparameters={"max_steps": 2, "batch_size": 2, "max_length": 40, "checkpoint_every_steps": 2,
                                    "max_completion_length": 5})  # fmt: skip
    result = run_trainer(job, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "launching 2 workers" in result.stderr
    assert [m["step"] for m in _train_metrics(result)] == [1, 2], "rank 0 alone reports"
    assert len(result.of("checkpoint")) == 1
    rng = __import__("torch").load(job.job_dir / "checkpoints" / "step-2" / "rng_state.pth", weights_only=True)
    assert len(rng) == 2, "every rank's RNG state is in the checkpoint"
