"""``algorithm: "ppo"`` at job creation: accepted with its defaults resolved and shown, its own hyperparameters
refused with grpo/rloo (400 naming the field, in the method or at the top level), and what PPO cannot run (a full
adapter, minibatches that do not divide an auto-resolved batch) refused before anything is queued."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.service.helpers import BASE_MODEL, assert_error, create_job, jsonl, upload
from tuneforge.contracts.hyperparameters import PPO_DEFAULTS

HP = "method.reinforcement.hyperparameters"
GRADER = {"type": "string_check", "reference": "{{item.answer}}"}


@pytest.fixture
def prompts_id(client: httpx.Client) -> str:
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)]
    file = upload(client, jsonl(rows), "prompts.jsonl")
    assert file["format"] == "prompt_only", file
    return str(file["id"])


def _method(algorithm: str, **hp: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"algorithm": algorithm, "grader": GRADER,
                                                       "hyperparameters": hp}}  # fmt: skip


def _post(client: httpx.Client, file_id: str, **body: Any) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": file_id, **body})


def test_a_ppo_job_is_created_with_its_defaults_resolved(client: httpx.Client, prompts_id: str) -> None:
    job = create_job(client, prompts_id, method=_method("ppo", gamma=0.99, batch_size=2))
    assert job["method"]["reinforcement"]["algorithm"] == "ppo"
    hp = job["method"]["reinforcement"]["hyperparameters"]
    assert hp == job["hyperparameters"]
    assert {name: hp[name] for name in PPO_DEFAULTS} == {**PPO_DEFAULTS, "gamma": 0.99}
    assert (hp["kl_coef"], hp["num_generations"], hp["max_completion_length"], hp["temperature"]) == (
        0.15, 1, 53, 0.7)  # fmt: skip
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["hyperparameters"] == hp


def test_a_grpo_job_shows_no_ppo_fields(client: httpx.Client, prompts_id: str) -> None:
    hp = create_job(client, prompts_id, method=_method("grpo"))["hyperparameters"]
    assert not set(PPO_DEFAULTS) & set(hp), hp
    assert (hp["kl_coef"], hp["num_generations"], hp["max_completion_length"], hp["temperature"]) == (
        0.0, 4, 256, 1.0)  # fmt: skip


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_ppo_field_with_another_algorithm_is_a_400_naming_it(client: httpx.Client, prompts_id: str,
                                                               algorithm: str) -> None:  # fmt: skip
    error = assert_error(_post(client, prompts_id, method=_method(algorithm, cliprange=0.1)), 400,
                         param=f"{HP}.cliprange")  # fmt: skip
    assert "only with algorithm 'ppo'" in error["message"], error


def test_a_ppo_field_at_the_top_level_is_named_there(client: httpx.Client, prompts_id: str) -> None:
    # OpenAI's older place for hyperparameters: merged into the method's, and named where the client wrote it
    resp = _post(client, prompts_id, method=_method("grpo"), hyperparameters={"vf_coef": 0.5})
    error = assert_error(resp, 400, param="hyperparameters.vf_coef")
    assert "only with algorithm 'ppo', not 'grpo'" in error["message"], error


def test_grpo_with_one_generation_is_a_400(client: httpx.Client, prompts_id: str) -> None:
    assert_error(_post(client, prompts_id, method=_method("grpo", num_generations=1)), 400,
                 param=f"{HP}.num_generations")  # fmt: skip


def test_ppo_with_a_full_adapter_is_a_400(client: httpx.Client, prompts_id: str) -> None:
    error = assert_error(_post(client, prompts_id, method=_method("ppo"), adapter={"type": "full"}), 400,
                         param="adapter.type")  # fmt: skip
    assert "LoRA" in error["message"], error


def test_minibatches_that_do_not_divide_the_auto_batch_are_a_400(client: httpx.Client, prompts_id: str) -> None:
    # 8 rows: batch_size auto resolves to 1, one completion per prompt; two minibatches cannot split it
    error = assert_error(_post(client, prompts_id, method=_method("ppo", num_mini_batches=2)), 400,
                         param=f"{HP}.num_mini_batches")  # fmt: skip
    assert "1 x 1" in error["message"], error
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == [], "nothing was stored"


@pytest.mark.parametrize("hp,field", [({"lam": 2}, "lam"), ({"value_head_init": "random"}, "value_head_init"),
                                      ({"ppo": {"gamma": 1}}, "ppo"), ({"kl_coef": 0}, "kl_coef")])
def test_bad_ppo_values_are_400s_naming_the_field(client: httpx.Client, prompts_id: str, hp: dict[str, Any],
                                                  field: str) -> None:  # fmt: skip
    assert_error(_post(client, prompts_id, method=_method("ppo", **hp)), 400, param=f"{HP}.{field}")
