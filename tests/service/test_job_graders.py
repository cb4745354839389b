"""Reinforcement graders at job creation: multi and reference-free regex accepted, mistakes are 400 with param."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.service.helpers import BASE_MODEL, assert_error, create_job, jsonl, upload

G = "method.reinforcement.grader"
FORMAT = {"type": "regex", "pattern": r"####\s*-?[\d,]*\.?\d+\s*$", "reference": None}
CORRECT = {"type": "regex", "pattern": r"(-?[\d,]*\.?\d+)", "reference": "{{item.answer}}",
           "reference_pattern": r"####\s*(.+)"}
MULTI = {"type": "multi", "graders": {"format": FORMAT, "correct": CORRECT},
         "calculate_output": "0.2 * format + 0.8 * correct"}


@pytest.fixture
def prompts_id(client: httpx.Client) -> str:
    rows = [{"prompt": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(8)]
    file = upload(client, jsonl(rows), "prompts.jsonl")
    assert file["format"] == "prompt_only", file
    return str(file["id"])


def _method(grader: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"algorithm": "grpo", "grader": grader}}


def _post(client: httpx.Client, file_id: str, grader: Any) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs",
                       json={"model": BASE_MODEL, "training_file": file_id, "method": _method(grader)})


def test_multi_grader_is_accepted_and_stored(client: httpx.Client, prompts_id: str) -> None:
    job = create_job(client, prompts_id, method=_method(MULTI))
    shown = job["method"]["reinforcement"]["grader"]
    assert shown["type"] == "multi"
    assert shown["calculate_output"] == "0.2 * format + 0.8 * correct"
    assert shown["graders"]["format"] == {"type": "regex", "pattern": FORMAT["pattern"], "reference": None,
                                          "input": "{{sample.output_text}}"}
    assert shown["graders"]["correct"]["reference"] == "{{item.answer}}"
    assert shown["graders"]["correct"]["reference_pattern"] == r"####\s*(.+)"
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["method"] == job["method"]


def test_reference_free_regex_is_accepted(client: httpx.Client, prompts_id: str) -> None:
    for key in ("reference", "reference_field"):
        grader = {"type": "regex", "pattern": FORMAT["pattern"], key: None}
        shown = create_job(client, prompts_id, method=_method(grader))["method"]["reinforcement"]["grader"]
        assert shown["reference"] is None


def test_multi_formula_with_functions_and_power_is_accepted(client: httpx.Client, prompts_id: str) -> None:
    grader = {**MULTI, "calculate_output": "min(1, max(format, correct) ^ 2 + abs(-0.1) * floor(format))"}
    create_job(client, prompts_id, method=_method(grader))


def _multi(**changes: Any) -> dict[str, Any]:
    return {**MULTI, **changes}


def _with_sub(name: str, sub: Any) -> dict[str, Any]:
    formula = f"format + {name}" if name.isidentifier() else "format"
    return _multi(graders={"format": FORMAT, name: sub}, calculate_output=formula)


@pytest.mark.parametrize(
    "grader,param,reason",
    [
        (_multi(calculate_output="format.__class__"), f"{G}.calculate_output", "attribute access"),
        (_multi(calculate_output="__import__('os')"), f"{G}.calculate_output", "call of '__import__'"),
        (_multi(calculate_output="0.2 * format + 0.8 * corect"), f"{G}.calculate_output", "unknown name 'corect'"),
        (_multi(calculate_output="'format'"), f"{G}.calculate_output", "string"),
        (_multi(calculate_output="[x for x in (1,)]"), f"{G}.calculate_output", "comprehension"),
        (_multi(calculate_output="format +"), f"{G}.calculate_output", "not a valid formula"),
        (_multi(calculate_output="format % 2"), f"{G}.calculate_output", "operator '%'"),
        (_multi(calculate_output="1 + " * 130 + "format"), f"{G}.calculate_output", "longer than 500"),
        (_multi(calculate_output=None), f"{G}.calculate_output", "valid string"),
        (_multi(calculate_output=7), f"{G}.calculate_output", "valid string"),
        (_multi(calculate_output=""), f"{G}.calculate_output", "non-empty"),
        (_multi(graders={}), f"{G}.graders", "at least 1 item"),
        (_multi(graders=[FORMAT]), f"{G}.graders", "valid dictionary"),
        (_multi(graders={f"g{i}": FORMAT for i in range(9)}, calculate_output="g0"), f"{G}.graders", "at most 8 items"),
        (_with_sub("bad name", CORRECT), f"{G}.graders.bad name", "identifier"),
        (_with_sub("max", CORRECT), f"{G}.graders.max", "function"),
        (_with_sub("correct", {**CORRECT, "pattern": "(unclosed"}), f"{G}.graders.correct.pattern",
         "invalid regular expression"),
        (_with_sub("correct", {**CORRECT, "reference_pattern": "[x"}), f"{G}.graders.correct.reference_pattern",
         "invalid regular expression"),
        (_with_sub("correct", {"type": "regex"}), f"{G}.graders.correct.pattern", "Missing required parameter"),
        (_with_sub("correct", {"type": "string_check", "reference": None}), f"{G}.graders.correct.reference",
         "cannot be null"),
        (_with_sub("correct", {**CORRECT, "operation": "eq"}), f"{G}.graders.correct.operation",
         "Unknown parameter"),  # a regex grader has no operation
        (_with_sub("correct", {"type": "string_check", "operation": "startswith"}), f"{G}.graders.correct.operation",
         "'like', 'ilike' or 'contains'"),
        (_with_sub("correct", {"type": "reward_model", "model": "ft:x"}), f"{G}.graders.correct.type",
         "is not one of 'string_check', 'regex'"),
        (_with_sub("correct", MULTI), f"{G}.graders.correct.type", "is not one of 'string_check', 'regex'"),
        (_with_sub("correct", {"type": "python", "source": "def grade(): ..."}), f"{G}.graders.correct",
         "no sandbox"),
        (_with_sub("correct", "regex"), f"{G}.graders.correct", "valid dictionary"),
        ({"type": "python"}, G, "no sandbox"),
        ({"type": "score_model", "model": "m", "input": [{"role": "user", "content": "{{sample.output_text}}"}]}, G,
         "not in reinforcement jobs"),
        ({"type": "string_check", "input": "{{sample.output}}"}, f"{G}.input", "unknown template reference"),
        ({"pattern": "x"}, f"{G}.type", "Missing required parameter"),
        ({"type": "reward_model", "model": "ft:x", "model_prefix": "jobs/ftjob-other/model"}, f"{G}.model_prefix",
         "set by the service"),
        ({"type": "regex", "pattern": "x", "reference": None, "reference_pattern": "(.*)"},
         f"{G}.reference_pattern", "without a reference"),
        ({"type": "string_check", "reference_field": None}, f"{G}.reference_field", "cannot be null"),
        ({"type": "regex", "pattern": "x", "reference": 3}, f"{G}.reference", "valid string"),
        ({"type": "regex", "pattern": "x", "reference": "answer }}"}, f"{G}.reference", "{{item.<field>}}"),
        ({"type": "regex", "pattern": "x" * 501}, f"{G}.pattern", "at most 500"),
        ({"type": "regex", "pattern": "(x"}, f"{G}.pattern", "invalid regular expression"),
        ("multi", G, "valid dictionary"),
    ],
)
def test_bad_grader_is_400_with_param(client: httpx.Client, prompts_id: str, grader: Any, param: str,
                                      reason: str) -> None:  # fmt: skip
    error = assert_error(_post(client, prompts_id, grader), 400, param=param)
    assert reason in error["message"], error
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
