"""The multi grader's ``calculate_output``: allow-listed arithmetic parsed once, evaluated without ``eval``."""

from __future__ import annotations

import math

import pytest

from tuneforge.contracts.grader_formula import (
    MAX_FORMULA_LENGTH,
    FormulaError,
    check_grader_name,
    parse_formula,
)

NAMES = ("format", "correct")


def _value(text: str, **scores: float) -> float:
    return parse_formula(text, NAMES).evaluate({"format": 1.0, "correct": 0.0, **scores})


@pytest.mark.parametrize(
    "text,expected",
    [
        ("0.2 * format + 0.8 * correct", 0.2),
        ("(format + correct) / 2", 0.5),
        ("format - correct", 1.0),
        ("-format", -1.0),
        ("+format", 1.0),
        ("2 + 3 ^ 2", 11.0),  # '^' is power and binds tighter than '+'
        ("2 ^ 3 ^ 2", 512.0),  # right-associative
        ("-2 ^ 2", -4.0),
        ("2 ^ -1", 0.5),
        ("2 ** 3", 8.0),
        ("min(format, correct)", 0.0),
        ("max(format, correct, 0.5)", 1.0),
        ("max(format)", 1.0),
        ("abs(correct - format)", 1.0),
        ("floor(2.7) + ceil(0.2)", 3.0),
        ("exp(0) + sqrt(4) + log(1)", 3.0),
        ("1e-3 * 1000", 1.0),
        ("3", 3.0),
    ],
)
def test_allowed_expressions(text: str, expected: float) -> None:
    assert _value(text) == pytest.approx(expected)


def test_names_used_and_scores_per_completion() -> None:
    formula = parse_formula("0.2 * format + 0.8 * correct", NAMES)
    assert formula.names == {"format", "correct"}
    assert formula.evaluate({"format": 1.0, "correct": 1.0}) == pytest.approx(1.0)
    assert formula.evaluate({"format": 0.0, "correct": 1.0}) == pytest.approx(0.8)
    assert parse_formula("format", NAMES).names == {"format"}  # an unused sub-grader is only logged


@pytest.mark.parametrize(
    "text",
    ["correct / correct", "format / 0", "sqrt(-1)", "log(0)", "log(-format)", "exp(1000)", "10 ^ 400",
     "(-8) ^ (1 / 3)", "0 ^ -1", "format * 1e308 * 10"],
)
def test_arithmetic_failures_score_zero(text: str) -> None:
    value = _value(text)
    assert value == 0.0 and math.isfinite(value)


@pytest.mark.parametrize(
    "text,token",
    [
        ("format.__class__", "format.__class__"),
        ("__import__('os').system('x')", None),
        ("open('x')", "open"),
        ("format.real", "format.real"),
        ("'abc'", "'abc'"),
        ("unknown + 1", "unknown"),
        ("[x for x in (1, 2)]", "[x for x in (1, 2)]"),
        ("format if correct else 1", "format if correct else 1"),
        ("format < correct", "format < correct"),
        ("format and correct", "format and correct"),
        ("lambda: 1", "lambda: 1"),
        ("format[0]", "format[0]"),
        ("(format, correct)", "(format, correct)"),
        ("format % 2", "%"),
        ("format // 2", "//"),
        ("~format", "~"),
        ("min(format, key=abs)", "key=abs"),
        ("max(*format)", "*format"),
        ("True", "True"),
        ("1j", "1j"),
        ("1e999", "1e999"),
        ("sqrt", "sqrt"),
        ("sqrt(format, correct)", "sqrt"),
        ("min()", "min"),
        ("(x := 1)", "x := 1"),
        ("f'{format}'", None),
        ("[format ^ 2 for format in (1,)]", "[format ^ 2 for format in (1,)]"),
    ],
)
def test_forbidden_expressions_name_the_token(text: str, token: str | None) -> None:
    with pytest.raises(FormulaError) as info:
        parse_formula(text, NAMES)
    assert "calculate_output" in str(info.value)
    if token is not None:
        assert info.value.token == token
        assert token in str(info.value)


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        (None, "non-empty"),
        (3, "non-empty"),
        ("format +", "not a valid formula"),
        ("(format", "not a valid formula"),
        ("format ^^ 2", "not a valid formula"),
        ("format; correct", "not a valid formula"),
        ("import os", "not a valid formula"),
        ("x" * (MAX_FORMULA_LENGTH + 1), "longer than"),
        ("-" * 200 + "format", "nested"),
    ],
)
def test_invalid_text(text: object, reason: str) -> None:
    with pytest.raises(FormulaError, match=reason):
        parse_formula(text, NAMES)


def test_unknown_name_lists_the_sub_graders() -> None:
    with pytest.raises(FormulaError, match="unknown name 'corect'; the sub-graders are correct, format"):
        parse_formula("0.2 * format + 0.8 * corect", NAMES)


@pytest.mark.parametrize("name", ["format", "correct_2", "_x", "A"])
def test_good_grader_names(name: str) -> None:
    assert check_grader_name(name) is None


@pytest.mark.parametrize("name", ["", "2nd", "has space", "a-b", "max", "log", "std", "é", "x" * 65, 3])
def test_bad_grader_names(name: object) -> None:
    assert check_grader_name(name)
