"""text_similarity metrics: each equals its reference library called directly on fixed pairs, and a case checked
by hand (n-gram counts worked out in the comments)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from tuneforge.contracts.graders import EvalGrader
from tuneforge.graders import GraderError, grade, meteor_available, similarity

PAIRS = [
    ("the cat sat on the mat", "the cat sat on a mat"),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("She sold 72 clips in April and May.", "Natalia sold 48 clips in April and 24 in May, 72 in all."),
    ("completely different words here", "nothing in common at all"),
]
_GRADER: TypeAdapter[Any] = TypeAdapter(EvalGrader)


def _reference(metric: str, text: str, reference: str) -> float:
    """The metric computed straight from its library, as OpenAI's grader documentation describes it."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return float(fuzz.WRatio(text, reference)) / 100
    if metric == "bleu":
        import sacrebleu

        return float(sacrebleu.sentence_bleu(text, [reference]).score) / 100
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([reference.split()], text.split()))
    from rouge_score import rouge_scorer

    key = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
    return float(rouge_scorer.RougeScorer([key], use_stemmer=True).score(reference, text)[key].fmeasure)


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
                                    "rouge_5", "rouge_l"])
@pytest.mark.parametrize("text,reference", PAIRS)
def test_metric_equals_its_library(metric: str, text: str, reference: str) -> None:
    expected = _reference(metric, text, reference)
    assert similarity(metric, text, reference) == pytest.approx(expected, abs=1e-12)
    grader = _GRADER.validate_python({"type": "text_similarity", "input": "{{sample.output_text}}",
                                      "reference": "{{item.answer}}", "evaluation_metric": metric,
                                      "pass_threshold": 0.5})
    result = grade(grader, {"answer": reference}, {"output_text": text})
    assert result.score == pytest.approx(expected, abs=1e-12)
    assert result.passed == (expected >= 0.5)


# hypothesis "the cat sat" against the reference "the cat sat on the mat" (6 tokens):
#   rouge_1: 3 of 3 hypothesis unigrams match, 3 of 6 reference ones: P=1, R=1/2, F=2/3
#   rouge_2: 2 of 2 bigrams, of 5: F = 2*(2/5)/(1+2/5) = 4/7;  rouge_3: 1 of 1, of 4: F = 2*(1/4)/(5/4) = 2/5
#   rouge_4: the hypothesis has no 4-gram: 0;  rouge_l: the longest common subsequence is 3 tokens: 2/3
#   gleu: min(precision, recall) over all 1..4-grams: 6 hypothesis n-grams all match, 18 reference ones: 1/3
HAND = [("rouge_1", 2 / 3), ("rouge_2", 4 / 7), ("rouge_3", 2 / 5), ("rouge_4", 0.0), ("rouge_l", 2 / 3),
        ("gleu", 1 / 3)]


@pytest.mark.parametrize("metric,expected", HAND)
def test_hand_checked(metric: str, expected: float) -> None:
    assert similarity(metric, "the cat sat", "the cat sat on the mat") == pytest.approx(expected)


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_l"])
def test_identical_is_one_and_disjoint_is_zero(metric: str) -> None:
    sentence = "the quick brown fox jumps over the lazy dog"
    assert similarity(metric, sentence, sentence) == pytest.approx(1.0)
    assert similarity(metric, "aaabbbcccddd", "xxxyyyzzzwww") == pytest.approx(0.0)
    assert similarity(metric, "", sentence) == 0.0


def test_meteor_is_nltk_or_refused_when_wordnet_is_missing() -> None:
    grader = _GRADER.validate_python({"type": "text_similarity", "reference": "{{item.a}}",
                                      "evaluation_metric": "meteor", "pass_threshold": 0.5})
    if not meteor_available():
        with pytest.raises(GraderError, match="WordNet"):
            grade(grader, {"a": "the cat sat"}, {"output_text": "the cat sat"})
        return
    from nltk.translate.meteor_score import meteor_score

    for text, reference in PAIRS:
        expected = meteor_score([reference.split()], text.split())
        assert similarity("meteor", text, reference) == pytest.approx(expected)


def test_cosine_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="embedding model"):
        _GRADER.validate_python({"type": "text_similarity", "reference": "{{item.a}}",
                                 "evaluation_metric": "cosine", "pass_threshold": 0.5})
