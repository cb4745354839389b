"""A feedback campaign's agreement and quality: Krippendorff's alpha, each rater's agreement with the others and
accuracy on gold items, the consensus each item's labels reach, and a blind A/B campaign's win rate.

Labels are read against the answers' stored ("canonical") order. Each kind has its level of measurement:

- ``score``: the score, interval;
- ``pairwise``: which answer was preferred, nominal;
- ``ab``: the winning model or a tie, nominal;
- ``ranking``: each answer's rank (one unit per item and answer), ordinal.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from tuneforge.service.db.models import FeedbackCampaign, FeedbackItem, FeedbackLabel

Level = Literal["nominal", "ordinal", "interval", "ratio"]
LEVELS: dict[str, Level] = {"score": "interval", "pairwise": "nominal", "ab": "nominal", "ranking": "ordinal"}
#: a score agrees with another (or with a gold score) within half a scale point
SCORE_TOLERANCE = 0.5
#: 95 % two-sided
Z95 = 1.959963984540054
TIE = "tie"


def _units(kind: str, item: FeedbackItem, value: dict[str, Any]) -> dict[tuple[str, int], float]:
    """A label as values of reliability units: (item id, answer index or -1) -> value."""
    if kind == "score":
        return {(item.id, -1): float(value["score"])}
    if kind == "pairwise":
        return {(item.id, -1): float(value["preferred"])}
    if kind == "ab":
        winner = value["winner"]
        return {(item.id, -1): float(len(item.answers) if winner is None else winner)}
    return {(item.id, answer): float(rank) for rank, answer in enumerate(value["ranking"])}


def krippendorff_alpha(kind: str, items: dict[str, FeedbackItem], labels: Iterable[FeedbackLabel]) -> float | None:
    """Alpha over every item labelled by two raters or more; None when it is undefined (fewer than two raters on
    any item, or a single value throughout)."""
    import numpy as np
    from krippendorff import alpha

    by_rater: dict[str, dict[tuple[str, int], float]] = {}
    for label in labels:
        by_rater.setdefault(label.rater_key_id, {}).update(_units(kind, items[label.item_id], label.value))
    unit_counts = Counter(u for values in by_rater.values() for u in values)
    units = sorted(u for u, n in unit_counts.items() if n >= 2)
    if len(by_rater) < 2 or not units:
        return None
    matrix = np.array([[values.get(u, np.nan) for u in units] for values in by_rater.values()], dtype=float)
    try:
        result = float(alpha(reliability_data=matrix, level_of_measurement=LEVELS[kind]))
    except (ValueError, ZeroDivisionError):
        return None
    return None if math.isnan(result) else round(result, 6)


def _agrees(kind: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    if kind == "score":
        return abs(float(a["score"]) - float(b["score"])) <= SCORE_TOLERANCE
    if kind == "ranking":
        return bool(a["ranking"][0] == b["ranking"][0])  # the same best answer
    return a == b


def _majority(kind: str, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most common labels (several when tied); for scores the median."""
    if kind == "score":
        scores = sorted(float(v["score"]) for v in values)
        middle = len(scores) // 2
        median = scores[middle] if len(scores) % 2 else (scores[middle - 1] + scores[middle]) / 2
        return [{"score": median}]
    keyed = Counter(repr(v["ranking"][0] if kind == "ranking" else v) for v in values)
    best = max(keyed.values())
    return [v for v in values if keyed[repr(v["ranking"][0] if kind == "ranking" else v)] == best]


def gold_correct(kind: str, label: dict[str, Any], gold: dict[str, Any]) -> bool:
    return _agrees(kind, label, gold)


@dataclass(frozen=True)
class RaterQuality:
    rater: str
    labels: int
    compared_items: int
    agreement_with_majority: float | None
    gold_items: int
    gold_accuracy: float | None


def rater_quality(kind: str, items: dict[str, FeedbackItem], labels: list[FeedbackLabel],
                  raters: list[str]) -> list[RaterQuality]:
    """Per rater: how often its label agrees with the majority of the other raters of the same items (leave one
    out: with two raters, with the other one), and its accuracy on gold items."""
    by_item: dict[str, list[FeedbackLabel]] = {}
    for label in labels:
        by_item.setdefault(label.item_id, []).append(label)
    seen = list(dict.fromkeys([*raters, *(label.rater_key_id for label in labels)]))
    out = []
    for rater in seen:
        own = [label for label in labels if label.rater_key_id == rater]
        compared = agreed = gold_n = gold_ok = 0
        for label in own:
            item = items[label.item_id]
            if item.gold is not None:
                gold_n += 1
                gold_ok += gold_correct(kind, label.value, item.gold)
            others = [o.value for o in by_item[label.item_id] if o.rater_key_id != rater]
            if others:
                compared += 1
                agreed += any(_agrees(kind, label.value, m) for m in _majority(kind, others))
        out.append(RaterQuality(rater, len(own), compared, round(agreed / compared, 6) if compared else None,
                                gold_n, round(gold_ok / gold_n, 6) if gold_n else None))
    return out


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for a binomial proportion (sound at small counts and at 0 or 1)."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, round(centre - half, 6)), min(1.0, round(centre + half, 6))


def ab_result(campaign: FeedbackCampaign, items: dict[str, FeedbackItem],
              labels: list[FeedbackLabel]) -> dict[str, Any]:
    """Model A's win rate over the decided labels (ties counted apart) with Wilson's 95 % interval."""
    models = campaign.config["models"]
    wins = [0, 0]
    ties = 0
    for label in labels:
        if items[label.item_id].gold is not None:
            continue
        winner = label.value["winner"]
        if winner is None:
            ties += 1
        else:
            wins[winner] += 1
    decided = wins[0] + wins[1]
    interval = wilson_interval(wins[0], decided)
    return {"model_a": models[0], "model_b": models[1], "wins_a": wins[0], "wins_b": wins[1], "ties": ties,
            "win_rate_a": round(wins[0] / decided, 6) if decided else None,
            "confidence_interval": list(interval) if interval else None, "confidence_level": 0.95,
            "interval_method": "wilson", "ties_excluded": True}


def report(campaign: FeedbackCampaign, items: list[FeedbackItem], labels: list[FeedbackLabel],
           raters: list[str]) -> dict[str, Any]:
    kind = campaign.kind
    by_id = {item.id: item for item in items}
    qualities = rater_quality(kind, by_id, labels, raters)
    seen = [q.rater for q in qualities]
    alpha_value = krippendorff_alpha(kind, by_id, labels)
    rater_rows = []
    for q in qualities:
        row: dict[str, Any] = {"rater": q.rater, "labels": q.labels, "compared_items": q.compared_items,
                               "agreement_with_majority": q.agreement_with_majority, "gold_items": q.gold_items,
                               "gold_accuracy": q.gold_accuracy}
        if len(seen) >= 3:  # what alpha would be without this rater: a careless one raises it when left out
            row["alpha_without"] = krippendorff_alpha(kind, by_id, [lb for lb in labels if lb.rater_key_id != q.rater])
        rater_rows.append(row)
    counts = Counter(label.item_id for label in labels)
    wanted = int(campaign.config["raters_per_item"])
    out: dict[str, Any] = {
        "object": "feedback_campaign.report", "campaign_id": campaign.id, "kind": kind, "status": campaign.status,
        "items": len(items), "gold_items": sum(1 for i in items if i.gold is not None),
        "labelled_items": len(counts), "fully_labelled_items": sum(1 for n in counts.values() if n >= wanted),
        "labels": len(labels),
        "krippendorff_alpha": {"value": alpha_value, "level_of_measurement": LEVELS[kind],
                               "raters": len(seen)},
        "raters": rater_rows,
    }
    if kind == "ab":
        out["ab"] = ab_result(campaign, by_id, labels)
    return out
