"""Scoring one sample against one item with a grader: the single implementation behind eval testing criteria,
``/v1/fine_tuning/alpha/graders/run`` and reinforcement rewards.

:func:`compile_grader` builds a grader once (patterns compiled with the ``regex`` module, metrics checked) and
returns a function ``(item, sample) -> Grade``. ``item`` is the data row, ``sample`` holds ``output_text`` (the
graded answer). A template naming a field the item lacks raises
:class:`~tuneforge.contracts.grader_templates.TemplateError`; a judge that fails or replies nonsense raises
:class:`~tuneforge.graders.judges.JudgeError`: the caller decides (the trainer stops with bad input, an eval
marks the item ``errored``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuneforge.contracts.grader_formula import parse_formula
from tuneforge.contracts.grader_templates import render
from tuneforge.contracts.graders import (
    LabelModelGrader,
    MultiGrader,
    RegexGrader,
    RewardModelGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from tuneforge.graders import judges
from tuneforge.graders.matching import GraderError, compile_pattern, found, last_match, string_check
from tuneforge.graders.similarity import check_metric, similarity

Item = Mapping[str, Any]
Sample = Mapping[str, Any]


@dataclass(frozen=True)
class JudgeCall:
    """One question to a judge model: for usage accounting and for showing what the judge said."""

    model: str
    reply: str
    usage: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Grade:
    score: float
    passed: bool
    #: a multi grader's sub-grader scores by name
    sub_scores: Mapping[str, float] = field(default_factory=dict)
    judge_calls: tuple[JudgeCall, ...] = ()


Graded = Callable[[Item, Sample], Grade]


def _match(grader: StringCheckGrader | RegexGrader) -> Graded:
    pattern = compile_pattern(grader.pattern, "pattern") if grader.pattern else None
    ref_pattern = (compile_pattern(grader.reference_pattern, "reference_pattern")
                   if grader.reference_pattern else None)
    operation = grader.operation if isinstance(grader, StringCheckGrader) else "eq"

    def graded(item: Item, sample: Sample) -> Grade:
        text = render(grader.input, item, sample)
        if grader.reference is None:  # a reference-free regex: a format check
            assert pattern is not None  # a regex grader has a pattern (contract)
            hit = found(pattern, text)
            return Grade(1.0 if hit else 0.0, hit)
        reference: str | None = render(grader.reference, item, sample)
        if ref_pattern is not None and reference is not None:
            reference = last_match(ref_pattern, reference)
        answer = last_match(pattern, text) if pattern is not None else text
        ok = reference is not None and answer is not None and string_check(operation, answer, reference)
        return Grade(1.0 if ok else 0.0, ok)

    return graded


def _similar(grader: TextSimilarityGrader) -> Graded:
    check_metric(grader.evaluation_metric)
    threshold = 1.0 if grader.pass_threshold is None else grader.pass_threshold

    def graded(item: Item, sample: Sample) -> Grade:
        score = similarity(grader.evaluation_metric, render(grader.input, item, sample),
                           render(grader.reference, item, sample))
        return Grade(score, score >= threshold)

    return graded


def _judged(grader: ScoreModelGrader | LabelModelGrader, judge: judges.Judge | None) -> Graded:
    if judge is None:
        raise GraderError(f"{grader.type} graders need a served model to ask, and none is reachable here")
    params = judges.sampling(grader)

    def graded(item: Item, sample: Sample) -> Grade:
        reply = judge(grader.model, judges.messages(grader, item, sample), params)
        call = (JudgeCall(grader.model, reply.text, dict(reply.usage)),)
        if isinstance(grader, ScoreModelGrader):
            score = judges.read_score(grader, reply.text)
            low, high = grader.range
            threshold = grader.pass_threshold if grader.pass_threshold is not None else (low + high) / 2
            return Grade(score, score >= threshold, judge_calls=call)
        label = judges.read_label(grader, reply.text)
        passed = label in grader.passing_labels
        return Grade(1.0 if passed else 0.0, passed, judge_calls=call)

    return graded


def _rewarded(grader: RewardModelGrader, judge: judges.Judge | None) -> Graded:
    if not isinstance(judge, judges.RewardScorer):
        raise GraderError("a reward_model grader needs its reward model served, and none is reachable here (the "
                          "trainer scores with it in reinforcement jobs)")
    scorer = judge
    threshold = 0.0 if grader.pass_threshold is None else grader.pass_threshold

    def graded(item: Item, sample: Sample) -> Grade:
        raw = sample.get("input") or []
        messages = [{"role": str(m.get("role")), "content": str(m.get("content") or "")}
                    for m in raw if isinstance(m, Mapping)] if isinstance(raw, list) else []
        reply = scorer.reward(grader.model, messages, str(sample.get("output_text") or ""))
        call = (JudgeCall(grader.model, f"{reply.score:.6g}", dict(reply.usage)),)
        return Grade(reply.score, reply.score >= threshold, judge_calls=call)

    return graded


def _multi(grader: MultiGrader, judge: judges.Judge | None) -> Graded:
    subs: dict[str, Graded] = {}
    for name, sub in grader.graders.items():
        try:
            subs[name] = compile_grader(sub, judge)
        except GraderError as exc:
            raise GraderError(f"multi grader: sub-grader {name!r}: {exc}") from None
    formula = parse_formula(grader.calculate_output, subs)
    threshold = 1.0 if grader.pass_threshold is None else grader.pass_threshold

    def graded(item: Item, sample: Sample) -> Grade:
        grades = {name: sub(item, sample) for name, sub in subs.items()}
        scores = {name: g.score for name, g in grades.items()}
        score = formula.evaluate(scores)
        calls = tuple(c for g in grades.values() for c in g.judge_calls)
        return Grade(score, score >= threshold, scores, calls)

    return graded


def compile_grader(grader: Any, judge: judges.Judge | None = None) -> Graded:
    """The grading function of ``grader`` (a contract model); raises :class:`GraderError` if it cannot run here."""
    if isinstance(grader, StringCheckGrader | RegexGrader):
        return _match(grader)
    if isinstance(grader, TextSimilarityGrader):
        return _similar(grader)
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return _judged(grader, judge)
    if isinstance(grader, MultiGrader):
        return _multi(grader, judge)
    if isinstance(grader, RewardModelGrader):
        return _rewarded(grader, judge)
    raise GraderError(f"unknown grader {type(grader).__name__}")


def grade(grader: Any, item: Item, sample: Sample, judge: judges.Judge | None = None) -> Grade:
    """Grade one sample (compiling the grader each time: use :func:`compile_grader` for many)."""
    return compile_grader(grader, judge)(item, sample)
