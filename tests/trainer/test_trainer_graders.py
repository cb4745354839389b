"""Graders: exact, contains and regex matching against a reference field (pure Python, no model)."""

from __future__ import annotations

import pytest

from tuneforge.contracts.jobspec import GraderSpec
from tuneforge.trainer.errors import BadInput
from tuneforge.trainer.graders import make_match_reward, normalise

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
        GraderSpec(type="regex", reference_field="a"),
        GraderSpec(type="regex", reference_field="a", pattern="(unclosed"),
        GraderSpec(type="regex", reference_field="a", pattern="x" * 600),
    ],
)
def test_bad_grader_is_bad_input(spec: GraderSpec) -> None:
    with pytest.raises(BadInput):
        make_match_reward(spec)


def test_missing_reference_field() -> None:
    reward = make_match_reward(GraderSpec(type="string_check", reference_field="missing"))
    with pytest.raises(BadInput):
        reward([None], ["x"], answer=["x"])
