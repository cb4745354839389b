"""Rule graders, templates and judge replies of the shared implementation (tuneforge.graders)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from tuneforge.contracts.grader_templates import TemplateError, item_fields, render
from tuneforge.contracts.graders import EvalGrader, reference_fields
from tuneforge.graders import GraderError, JudgeError, JudgeReply, compile_grader, grade

_GRADER: TypeAdapter[Any] = TypeAdapter(EvalGrader)


def G(**fields: Any) -> Any:
    return _GRADER.validate_python(fields)


@pytest.mark.parametrize("operation,answer,reference,expected", [
    ("eq", " Paris. ", "paris", True), ("eq", "1,000", "1000", True), ("eq", "Paris is it", "Paris", False),
    ("ne", "Rome", "Paris", True), ("ne", "paris", "Paris", False),
    ("like", "I think Paris", "Paris", True), ("like", "I think paris", "Paris", False),
    ("ilike", "I think PARIS", "paris", True), ("ilike", "Rome", "paris", False),
    ("contains", "I think  PARIS is it", "paris", True), ("contains", "Rome", "paris", False),
])
def test_string_check_operations(operation: str, answer: str, reference: str, expected: bool) -> None:
    result = grade(G(type="string_check", operation=operation, reference="{{item.ref}}"), {"ref": reference},
                   {"output_text": answer})
    assert (result.score, result.passed) == ((1.0, True) if expected else (0.0, False))


def test_templates_mix_text_nested_fields_and_the_sample() -> None:
    item = {"q": "2+2", "meta": {"lang": "en"}, "tags": ["a", "b"], "n": 4}
    sample = {"output_text": '{"answer": 4}'}
    text = "Q: {{ item.q }} ({{item.meta.lang}}, {{item.tags.1}}) -> {{sample.output_text}} / {{item.n}}"
    assert render(text, item, sample) == 'Q: 2+2 (en, b) -> {"answer": 4} / 4'
    assert render("{{sample.output_json.answer}}", item, sample) == "4"
    assert item_fields(text) == ["q", "meta", "tags", "n"]
    with pytest.raises(TemplateError, match=r"item\.missing"):
        render("{{item.missing}}", item, sample)
    # a literal reference (OpenAI allows plain text) and one built from a field
    assert grade(G(type="string_check", reference="4"), {}, {"output_text": "4"}).passed
    assert grade(G(type="string_check", input="{{item.n}}", reference="{{sample.output_json.answer}}"), item,
                 sample).passed


@pytest.mark.parametrize("template,message", [
    ("{{item}}", "unknown template reference"), ("{{items.x}}", "unknown template reference"),
    ("{{sample.output}}", "unknown template reference"), ("{{item.x", "malformed"), ("x }}", "malformed"),
])
def test_bad_templates_are_refused_by_the_contract(template: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        G(type="string_check", input=template, reference="x")


def test_regex_and_multi_with_text_similarity() -> None:
    spec = G(type="multi", calculate_output="0.5 * fmt + 0.5 * sim", graders={
        "fmt": {"type": "regex", "pattern": r"^Answer:", "reference": None},
        "sim": {"type": "text_similarity", "reference": "{{item.answer}}", "evaluation_metric": "rouge_1",
                "pass_threshold": 0.5}}, pass_threshold=0.8)
    result = grade(spec, {"answer": "the cat sat on the mat"}, {"output_text": "Answer: the cat sat"})
    # rouge_1 of "Answer: the cat sat": 3 of 4 tokens match, 3 of 6: F = 2*(3/4)(1/2)/(5/4) = 0.6
    assert result.sub_scores == pytest.approx({"fmt": 1.0, "sim": 0.6})
    assert result.score == pytest.approx(0.8) and result.passed
    assert reference_fields(spec) == ["answer"]


def test_python_grader_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="no sandbox"):
        G(type="python", source="def grade(sample, item): return 1")


SCORE = {"type": "score_model", "model": "judge", "range": [1, 5], "pass_threshold": 4,
         "input": [{"role": "user", "content": "Rate {{sample.output_text}} for {{item.q}}"}]}
LABEL = {"type": "label_model", "model": "judge", "labels": ["good", "bad"], "passing_labels": ["good"],
         "input": [{"role": "developer", "content": [{"type": "input_text", "text": "Is {{sample.output_text}} ok?"}]}]}


def _judge(reply: str, seen: list[Any]) -> Any:
    def judge(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> JudgeReply:
        seen.append((model, messages, params))
        return JudgeReply(reply, {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12})
    return judge


@pytest.mark.parametrize("reply,score,passed", [("4", 4.0, True), (' {"result": 2.5} ', 2.5, False), ("5.", 5.0, True)])
def test_score_model_reads_a_number(reply: str, score: float, passed: bool) -> None:
    seen: list[Any] = []
    result = grade(G(**SCORE), {"q": "math"}, {"output_text": "42"}, judge=_judge(reply, seen))
    assert (result.score, result.passed) == (score, passed)
    model, messages, params = seen[0]
    assert model == "judge" and messages[0]["role"] == "system" and "from 1 to 5" in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "Rate 42 for math"}
    assert params["temperature"] == 0.0
    assert result.judge_calls[0].usage["total_tokens"] == 12


@pytest.mark.parametrize("reply,message", [("I think it is good", "not a score"), ("7", "outside the range"),
                                           ('{"result": "high"}', "not a score"), ("", "not a score")])
def test_a_malformed_score_is_a_judge_error(reply: str, message: str) -> None:
    with pytest.raises(JudgeError, match=message):
        grade(G(**SCORE), {"q": "x"}, {"output_text": "y"}, judge=_judge(reply, []))


def test_label_model() -> None:
    seen: list[Any] = []
    assert grade(G(**LABEL), {}, {"output_text": "fine"}, judge=_judge('"Good".', seen)).passed
    assert seen[0][1][1]["role"] == "system"  # developer becomes system for the engines
    assert not grade(G(**LABEL), {}, {"output_text": "x"}, judge=_judge('{"result": "bad"}', [])).passed
    with pytest.raises(JudgeError, match="not one of the labels"):
        grade(G(**LABEL), {}, {"output_text": "x"}, judge=_judge("maybe", []))
    with pytest.raises(ValidationError, match="not among the labels"):
        G(**{**LABEL, "passing_labels": ["great"]})


def test_a_judge_grader_without_a_judge_cannot_be_built() -> None:
    with pytest.raises(GraderError, match="served model"):
        compile_grader(G(**SCORE))
