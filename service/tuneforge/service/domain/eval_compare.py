"""Two runs of one eval side by side (a job's base model and its tuned model): pass rates and mean scores per
criterion, their difference with a paired bootstrap confidence interval, and the items where the two differ most.

Pure: it takes the runs' graded items and returns plain data (the report route and the job's page show it).
Items are paired by their place in the data source (both runs read the same rows); an item that errored in
either run, or whose criterion errored, is left out of that criterion's comparison and counted as unpaired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: bootstrap resamples (percentile interval); seeded, so a report reads the same every time it is asked for
RESAMPLES = 2000
CONFIDENCE = 0.95
#: resamples drawn at once (each is n indices): bounds the memory of a 10,000-item run to a few MB
_CHUNK = 100
#: items shown where the two models differ most
TOP_ITEMS = 10


@dataclass(frozen=True)
class Graded:
    """One output item as the comparison needs it."""

    index: int
    status: str  # pass, fail or error
    item: dict[str, Any]
    output_text: str
    #: criterion name -> (score, passed), only for criteria that graded without an error
    scores: dict[str, tuple[float, bool]]


def _interval(differences: np.ndarray, seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of paired differences."""
    n = len(differences)
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, RESAMPLES, _CHUNK):
        size = min(_CHUNK, RESAMPLES - start)
        means.append(differences[rng.integers(0, n, size=(size, n))].mean(axis=1))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(np.concatenate(means), [tail, 100 - tail])
    return (round(float(low), 6), round(float(high), 6))


def _side(values: np.ndarray) -> float:
    return round(float(values.mean()), 6) if len(values) else 0.0


def _compared(base: np.ndarray, tuned: np.ndarray, seed: int) -> dict[str, Any]:
    difference = tuned - base
    low, high = _interval(difference, seed)
    return {"base": _side(base), "tuned": _side(tuned), "difference": _side(difference),
            "ci_low": low, "ci_high": high}


def compare(criteria: Sequence[str], base: Sequence[Graded], tuned: Sequence[Graded],
            top: int = TOP_ITEMS) -> dict[str, Any]:
    """The comparison of two runs' items (criteria: the eval's testing criteria names, in order)."""
    by_index = {g.index: g for g in base}
    pairs = [(by_index[g.index], g) for g in tuned if g.index in by_index]
    per_criterion = []
    for position, name in enumerate(criteria):
        paired = [(b.scores[name], t.scores[name]) for b, t in pairs if name in b.scores and name in t.scores]
        scores = np.array([[b[0], t[0]] for b, t in paired], dtype=float).reshape(-1, 2)
        passes = np.array([[b[1], t[1]] for b, t in paired], dtype=float).reshape(-1, 2)
        per_criterion.append({
            "testing_criteria": name, "items": len(paired), "unpaired": len(pairs) - len(paired),
            # one seed per criterion and measure: the intervals do not share their resamples
            "pass_rate": _compared(passes[:, 0], passes[:, 1], seed=2 * position),
            "mean_score": _compared(scores[:, 0], scores[:, 1], seed=2 * position + 1),
        })
    both = [(b, t) for b, t in pairs if b.status != "error" and t.status != "error"]
    overall = np.array([[b.status == "pass", t.status == "pass"] for b, t in both], dtype=float).reshape(-1, 2)

    def gap(pair: tuple[Graded, Graded]) -> float:
        b, t = pair
        return sum(t.scores[n][0] - b.scores[n][0] for n in criteria if n in b.scores and n in t.scores)

    ranked = sorted(both, key=lambda pair: (-abs(gap(pair)), pair[0].index))[:top]
    differing = [{
        "index": b.index, "item": b.item, "score_difference": round(gap((b, t)), 6),
        "base": {"status": b.status, "output_text": b.output_text,
                 "scores": {n: s for n, (s, _) in b.scores.items()}},
        "tuned": {"status": t.status, "output_text": t.output_text,
                  "scores": {n: s for n, (s, _) in t.scores.items()}},
    } for b, t in ranked if gap((b, t)) != 0]
    return {
        "items": len(both), "unpaired": len(base) + len(tuned) - 2 * len(both),
        "confidence": CONFIDENCE, "resamples": RESAMPLES,
        "pass_rate": _compared(overall[:, 0], overall[:, 1], seed=len(criteria) * 2 + 1),
        "per_testing_criteria": per_criterion,
        "most_different_items": differing,
    }


def graded_item(index: int, status: str, item: dict[str, Any], sample: dict[str, Any],
                results: list[dict[str, Any]]) -> Graded:
    """An output item's row as :func:`compare` reads it."""
    scores = {str(r.get("name")): (float(r.get("score") or 0.0), bool(r.get("passed")))
              for r in results if "error" not in r}
    return Graded(index, status, item, str(sample.get("output_text") or ""), scores)
