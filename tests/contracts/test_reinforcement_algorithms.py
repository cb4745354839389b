"""The reinforcement method's hyperparameters per algorithm: the shared fields' auto values, PPO's own fields
(valid only with ``algorithm: ppo``) and the rules that need several fields, each refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from tuneforge.contracts.hyperparameters import PPO_DEFAULTS, RL_AUTO, ReinforcementHyperparameters
from tuneforge.contracts.jobspec import JOBSPEC_VERSION, JobSpec
from tuneforge.contracts.methods import Method
from tuneforge.contracts.validation import describe

METHOD: TypeAdapter[Any] = TypeAdapter(Method)
GRADER = {"type": "string_check"}
PREFIX = "reinforcement.hyperparameters"


def _method(algorithm: str, **hp: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"algorithm": algorithm, "grader": GRADER,
                                                       "hyperparameters": hp}}  # fmt: skip


def _spec(method: dict[str, Any], rows: int = 32) -> JobSpec:
    return JobSpec.model_validate({
        "version": JOBSPEC_VERSION, "job_id": "ftjob-x", "tenant_id": "t", "method": method, "base_model": "m",
        "training_file": {"file_id": "f", "key": "files/f", "format": "prompt_only", "rows": rows},
        "storage_url": "file:///tmp/s", "output_prefix": "jobs/ftjob-x"})  # fmt: skip


def _refusals(method: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        METHOD.validate_python(method)
    return {d["param"]: d["message"] for d in describe(exc.value.errors(), method)}


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "ppo"])
def test_the_shared_fields_auto_values_depend_on_the_algorithm(algorithm: str) -> None:
    hp = _spec(_method(algorithm)).hyperparameters
    assert isinstance(hp, ReinforcementHyperparameters)
    ppo = algorithm == "ppo"
    assert {name: getattr(hp, name) for name in RL_AUTO} == {name: v[ppo] for name, v in RL_AUTO.items()}
    # PPO's own fields: its defaults with ppo; left unset (null, not shown) with grpo and rloo
    assert {name: getattr(hp, name) for name in PPO_DEFAULTS} == (
        PPO_DEFAULTS if ppo else dict.fromkeys(PPO_DEFAULTS))  # fmt: skip
    shown = hp.model_dump(exclude_none=True)
    assert ("gamma" in shown) == ppo


def test_explicit_values_win_and_ppo_resolution_is_idempotent() -> None:
    spec = _spec(_method("ppo", kl_coef=0.02, max_completion_length=24, gamma=0.99, target_kl=0.0,
                         value_head_init="zero", batch_size=4, num_generations=2, num_mini_batches=4))  # fmt: skip
    hp = spec.hyperparameters
    assert (hp.kl_coef, hp.max_completion_length, hp.gamma, hp.target_kl, hp.value_head_init) == (
        0.02, 24, 0.99, 0.0, "zero")  # fmt: skip
    assert (hp.temperature, hp.lam, hp.num_mini_batches) == (0.7, 0.95, 4)
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
@pytest.mark.parametrize("field,value", [
    ("target_kl", 1.0), ("kl_horizon", 100), ("gamma", 0.9), ("lam", 0.9), ("cliprange", 0.1),
    ("cliprange_value", 0.1), ("vf_coef", 0.5), ("ppo_epochs", 2), ("num_mini_batches", 2),
    ("missing_eos_penalty", 0.5), ("normalize_reward", False), ("whiten_rewards", True),
    ("whiten_advantages", False), ("value_head_init", "zero"), ("max_grad_norm", 0.5),
])  # fmt: skip
def test_a_ppo_field_with_another_algorithm_is_refused_by_name(algorithm: str, field: str, value: Any) -> None:
    assert set(PPO_DEFAULTS) == {"target_kl", "kl_horizon", "gamma", "lam", "cliprange", "cliprange_value",
                                 "vf_coef", "ppo_epochs", "num_mini_batches", "missing_eos_penalty",
                                 "normalize_reward", "whiten_rewards", "whiten_advantages", "value_head_init",
                                 "max_grad_norm"}, "every PPO field is in this test"  # fmt: skip
    problems = _refusals(_method(algorithm, **{field: value}))
    assert list(problems) == [f"{PREFIX}.{field}"], problems
    assert f"only with algorithm 'ppo', not '{algorithm}'" in problems[f"{PREFIX}.{field}"]


def test_every_misplaced_field_is_named_at_once() -> None:
    problems = _refusals(_method("grpo", gamma=0.9, cliprange=0.1, num_generations=1))
    assert set(problems) == {f"{PREFIX}.gamma", f"{PREFIX}.cliprange", f"{PREFIX}.num_generations"}


@pytest.mark.parametrize("hp,field,needle", [
    # grpo and rloo compare completions of one prompt; ppo samples one by default
    ({"num_generations": 1, "algorithm": "rloo"}, "num_generations", "at least 2"),
    ({"kl_coef": 0.0}, "kl_coef", "adaptive KL controller"),
    ({"batch_size": 3, "num_mini_batches": 2}, "num_mini_batches", "3 x 1"),
    ({"batch_size": 4, "num_mini_batches": 2, "gradient_accumulation_steps": 3}, "gradient_accumulation_steps",
     "minibatch of 2"),
    ({"max_length": 64, "max_completion_length": 64}, "max_completion_length", "below max_length (64)"),
    ({"lam": 1.5}, "lam", "less than or equal to 1"),
    ({"cliprange": 0}, "cliprange", "greater than 0"),
    ({"value_head_init": "random"}, "value_head_init", "'auto', 'reward_model' or 'zero'"),
    ({"normalize_reward": "yes"}, "normalize_reward", "valid boolean"),
    ({"ppo": {"gamma": 1.0}}, "ppo", "Unknown parameter"),  # the branch's nested form is not the contract
])  # fmt: skip
def test_what_ppo_cannot_run_is_refused_by_name(hp: dict[str, Any], field: str, needle: str) -> None:
    algorithm = hp.pop("algorithm", "ppo")
    problems = _refusals(_method(algorithm, **hp))
    assert f"{PREFIX}.{field}" in problems, problems
    assert needle in problems[f"{PREFIX}.{field}"], problems


def test_fixed_beta_and_switches_that_are_off() -> None:
    hp = _spec(_method("ppo", kl_coef=0.0, target_kl=0.0, missing_eos_penalty=0.0, max_grad_norm=0.0)).hyperparameters
    assert isinstance(hp, ReinforcementHyperparameters)
    assert (hp.kl_coef, hp.target_kl, hp.missing_eos_penalty, hp.max_grad_norm) == (0.0, 0.0, 0.0, 0.0)


def test_the_openapi_schema_describes_every_ppo_field() -> None:
    schema = ReinforcementHyperparameters.model_json_schema()["properties"]
    for name in PPO_DEFAULTS:
        assert schema[name]["description"].startswith("PPO only"), name
    assert "0.15 for ppo" in schema["kl_coef"]["description"]
