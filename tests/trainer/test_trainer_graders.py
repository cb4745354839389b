"""Graders: exact, contains and regex matching, reference-free regex and multi (pure Python, no model)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from tuneforge.contracts.graders import Grader, reference_fields
from tuneforge.trainer.errors import BadInput
from tuneforge.trainer.graders import check_grader, make_match_reward, make_multi_reward, normalise

_GRADER: TypeAdapter[Any] = TypeAdapter(Grader)


def GraderSpec(**fields: Any) -> Any:
    """A grader as the contract validates it (the request's shape)."""
    return _GRADER.validate_python(fields)

GSM8K = GraderSpec(
    type="regex", reference_field="answer", pattern=r"(-?[\d,]*\.?\d+)", reference_pattern=r"####\s*(.+)"
)


def test_gsm8k_regex_takes_last_number() -> None:
    reward = make_match_reward(GSM8K)
    completions = [
        [{"role": "assistant", "content": "3 apples + 4 apples = 7 apples. The answer is 1,007."}],
        [{"role": "assistant", "content": "It is 12"}],
        [{"role": "assistant", "content": "no idea"}],
    ]
    refs = ["... #### 1007", "#### 13", "#### 5"]
    assert reward(prompts=[None] * 3, completions=completions, answer=refs) == [1.0, 0.0, 0.0]


def test_string_check_eq_and_contains() -> None:
    eq = make_match_reward(GraderSpec(type="string_check", reference_field="label"))
    assert eq([None, None], ["  Paris. ", "paris is it"], label=["paris", "Paris"]) == [1.0, 0.0]
    contains = make_match_reward(GraderSpec(type="string_check", reference_field="label", operation="contains"))
    assert contains([None], ["I think Paris is it"], label=["paris"]) == [1.0]


def test_normalise_numbers() -> None:
    assert normalise("1,000.") == normalise("1000") == "1000"
    assert normalise("$ 2.50") == "2.5"


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "regex", "reference_field": "a"},
        {"type": "regex", "reference_field": "a", "pattern": "(unclosed"},
        {"type": "regex", "reference_field": "a", "pattern": "x" * 600},
    ],
)
def test_bad_grader_is_refused_by_the_contract(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GraderSpec(**spec)


def test_missing_reference_field() -> None:
    reward = make_match_reward(GraderSpec(type="string_check", reference_field="missing"))
    with pytest.raises(BadInput):
        reward([None], ["x"], answer=["x"])


FORMAT = r"####\s*-?[\d,]*\.?\d+\s*$"  # "ends with #### <number>"


def _gsm8k_multi(formula: str = "0.2 * format + 0.8 * correct") -> Any:
    return GraderSpec(
        type="multi",
        graders={
            "format": GraderSpec(type="regex", reference_field=None, pattern=FORMAT),
            "correct": GSM8K,
        },
        calculate_output=formula,
    )


def test_reference_free_regex_is_a_format_check() -> None:
    reward = make_match_reward(GraderSpec(type="regex", reference_field=None, pattern=FORMAT))
    completions = ["so 3 + 4 = 7\n#### 7", "#### 1,000.5  ", [{"role": "assistant", "content": "#### -2"}],
                   "#### 7 apples", "7", ""]
    # no reference column needed at all
    assert reward([None] * 6, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "string_check", "reference_field": None},
        {"type": "regex", "reference_field": None},
        {"type": "regex", "reference_field": None, "pattern": "x", "reference_pattern": "####(.*)"},
    ],
)
def test_only_a_regex_grader_can_do_without_a_reference(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GraderSpec(**spec)


def test_multi_gsm8k_partial_credit() -> None:
    reward = make_multi_reward(_gsm8k_multi())
    completions = [
        "Natalia sold 48 + 24 = 72 clips.\n#### 72",  # format and answer
        "She sold 72",  # right number, no format
        "#### 71",  # format, wrong number
        "no idea",  # neither
    ]
    refs = ["She sold 48/2 = 24 in May... #### 72"] * 4
    logged: list[tuple[str, float]] = []
    scores = reward([None] * 4, completions, answer=refs, log_metric=lambda k, v: logged.append((k, v)))
    assert scores == pytest.approx([1.0, 0.8, 0.2, 0.0])
    assert dict(logged) == pytest.approx({"reward_format": 0.5, "reward_correct": 0.5})
    assert reward.__name__ == "multi"
    # without TRL's log_metric it still scores
    assert reward([None], ["#### 72"], answer=["#### 72"]) == pytest.approx([1.0])


def test_multi_formula_failure_scores_zero_for_that_completion() -> None:
    reward = make_multi_reward(_gsm8k_multi("correct / format"))
    assert reward([None, None], ["#### 72", "72"], answer=["#### 72"] * 2) == [1.0, 0.0]


def test_multi_with_string_check_and_functions() -> None:
    spec = GraderSpec(
        type="multi",
        graders={
            "exact": GraderSpec(type="string_check", reference_field="label"),
            "mentions": GraderSpec(type="string_check", reference_field="label", operation="contains"),
        },
        calculate_output="max(exact, 0.5 * mentions)",
    )
    reward = make_multi_reward(spec)
    assert reward([None] * 3, ["Paris", "It is Paris", "Rome"], label=["paris"] * 3) == [1.0, 0.5, 0.0]
    assert reference_fields(spec) == ["label"]
    assert reference_fields(_gsm8k_multi()) == ["answer"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"type": "multi", "calculate_output": "1"}, "graders"),
        ({"type": "multi", "graders": {"a": {"type": "regex", "pattern": "x"}}}, "calculate_output"),
        ({"type": "multi", "graders": {"a": {"type": "regex", "pattern": "x"}}, "calculate_output": "a.b"},
         "attribute access 'a.b'"),
        ({"type": "multi", "graders": {"a": {"type": "regex", "pattern": "x"}}, "calculate_output": "b"},
         "unknown name 'b'"),
        ({"type": "multi", "graders": {"a": {"type": "regex", "pattern": "("}}, "calculate_output": "a"},
         "invalid regular expression"),
        ({"type": "multi", "graders": {"a": {"type": "reward_model", "model": "m"}}, "calculate_output": "a"},
         "'reward_model'"),
        ({"type": "multi", "graders": {"a": {"type": "multi"}}, "calculate_output": "a"}, "'multi'"),
        ({"type": "multi", "graders": {"max": {"type": "regex", "pattern": "x"}}, "calculate_output": "1"},
         "is a function"),
        ({"type": "multi", "graders": {f"g{i}": {"type": "regex", "pattern": "x"} for i in range(9)},
          "calculate_output": "g0"}, "at most 8"),
    ],
)
def test_bad_multi_grader_is_refused_by_the_contract(spec: dict[str, Any], message: str) -> None:
    """What the trainer once refused with exit 65, the contract refuses before a job exists."""
    with pytest.raises(ValidationError, match=message):
        GraderSpec(**spec)


def test_multi_grader_survives_the_jobspec_round_trip() -> None:
    from tuneforge.contracts.methods import Method

    adapter: TypeAdapter[Any] = TypeAdapter(Method)
    method = adapter.validate_python({"type": "reinforcement",
                                      "reinforcement": {"algorithm": "grpo", "grader": _gsm8k_multi()}})
    again = adapter.validate_json(method.model_dump_json())
    assert again == method
    assert again.grader.graders["format"].reference_field is None
    check_grader(again.grader)


def test_example_gsm8k_grader_wants_worked_answers() -> None:
    """The GRPO example's grader (examples/trainer_methods.py): a bare "#### N" earns no format credit. With the
    plain "ends with #### N" check the tuned model learned to answer "#### 1" to everything."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "trainer_methods.py"
    module_spec = importlib.util.spec_from_file_location("trainer_methods_example", path)
    assert module_spec is not None and module_spec.loader is not None
    example = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(example)
    grader = GraderSpec(**example.GSM8K_GRADER)
    check_grader(grader)
    reward = make_multi_reward(grader)
    completions = [
        "She sold 48 / 2 = 24 in May, 48 + 24 = 72 in all.\n#### 72",  # worked and right
        "48 + 24 = 71\n#### 71",  # worked, wrong
        "#### 72",  # right number, no work shown
        "#### 1\n#### 1",  # the gamed answer
        "48 + 24 = 72",  # no final line
    ]
    refs = ["Natalia sold 48/2 = <<48/2=24>>24 clips in May. #### 72"] * len(completions)
    assert reward([None] * len(completions), completions, answer=refs) == pytest.approx([1.0, 0.2, 0.8, 0.0, 0.8])
