"""``text_similarity`` metrics, each computed by its maintained library as OpenAI's graders do.

- ``fuzzy_match``: rapidfuzz's ``fuzz.WRatio`` / 100;
- ``bleu``: sacrebleu's sentence BLEU / 100;
- ``gleu``: nltk's ``sentence_gleu`` over whitespace tokens;
- ``meteor``: nltk's ``meteor_score`` over whitespace tokens; it needs nltk's WordNet data, which no PyPI
  package ships: where it is missing (``NLTK_DATA``), a ``meteor`` grader is refused when it is created;
- ``rouge_1`` … ``rouge_5``, ``rouge_l``: rouge-score's F-measure with the Porter stemmer.

Scores lie in [0, 1]; an empty input or reference scores 0.
"""

from __future__ import annotations

import functools
from typing import Any

from tuneforge.graders.matching import GraderError

MAX_TEXT = 20_000


@functools.cache
def _rouge(metric: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([metric], use_stemmer=True)


@functools.cache
def meteor_available() -> bool:
    """Whether nltk finds its WordNet corpus (meteor's synonym stage)."""
    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            continue
    return False


def check_metric(metric: str) -> None:
    """Refuse a metric that cannot run here, with the reason."""
    if metric == "meteor" and not meteor_available():
        raise GraderError("the meteor metric needs nltk's WordNet data, which is not installed on this server "
                          "(set NLTK_DATA to a directory holding corpora/wordnet); use rouge_l, bleu, gleu or "
                          "fuzzy_match instead")


def similarity(metric: str, text: str, reference: str) -> float:
    """The ``metric`` similarity of ``text`` to ``reference``."""
    text, reference = text[:MAX_TEXT], reference[:MAX_TEXT]
    if not text.strip() or not reference.strip():
        return 0.0
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return float(fuzz.WRatio(text, reference)) / 100.0
    if metric == "bleu":
        import sacrebleu

        return float(sacrebleu.sentence_bleu(text, [reference]).score) / 100.0
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([reference.split()], text.split()))
    if metric == "meteor":
        check_metric(metric)
        from nltk.translate.meteor_score import meteor_score

        return float(meteor_score([reference.split()], text.split()))
    if metric.startswith("rouge_"):
        key = "rougeL" if metric == "rouge_l" else f"rouge{metric.removeprefix('rouge_')}"
        return float(_rouge(key).score(reference, text)[key].fmeasure)
    raise GraderError(f"unknown evaluation_metric {metric!r}")
