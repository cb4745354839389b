"""The report's and the export's arithmetic on rows built in memory (no server): Wilson's interval, Krippendorff's
alpha at each kind's level, leave-one-out agreement with the majority, gold accuracy, rankings expanded to pairs."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge.service.db.models import FeedbackCampaign, FeedbackItem, FeedbackLabel
from tuneforge.service.domain.feedback import display_order
from tuneforge.service.domain.feedback_export import preference_rows, scored_rows
from tuneforge.service.domain.feedback_report import krippendorff_alpha, rater_quality, wilson_interval


def _campaign(kind: str) -> FeedbackCampaign:
    return FeedbackCampaign(id=f"fbc-{kind}", kind=kind, config={"models": ["a", "b"], "raters_per_item": 3,
                                                                 "scale": {"min": 1, "max": 5}})


def _item(n: int, texts: list[str] | None = None, gold: dict[str, Any] | None = None) -> FeedbackItem:
    texts = texts or [f"answer {j}" for j in range(n)]
    return FeedbackItem(id=f"fbitem-{n}-{'-'.join(texts)}", prompt=[{"role": "user", "content": "q?"}],
                        answers=[{"text": t, "model": None} for t in texts], gold=gold)


def _label(item: FeedbackItem, rater: str, value: dict[str, Any]) -> FeedbackLabel:
    return FeedbackLabel(item_id=item.id, rater_key_id=rater, value=value)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(8, 10)  # type: ignore[misc]
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0  # type: ignore[index]
    assert wilson_interval(0, 0) is None


def test_alpha_is_one_for_agreement_none_without_variation_and_lower_with_noise() -> None:
    items = [_item(2, [f"x{i}", f"y{i}"]) for i in range(6)]
    by_id = {i.id: i for i in items}
    agree = [_label(i, r, {"preferred": k % 2}) for k, i in enumerate(items) for r in ("r1", "r2")]
    assert krippendorff_alpha("pairwise", by_id, agree) == 1.0
    same = [_label(i, r, {"preferred": 0}) for i in items for r in ("r1", "r2")]
    assert krippendorff_alpha("pairwise", by_id, same) is None
    noisy = [*agree, *(_label(i, "r3", {"preferred": 1 - k % 2 if k < 4 else k % 2}) for k, i in enumerate(items))]
    value = krippendorff_alpha("pairwise", by_id, noisy)
    assert value is not None and value < 0.5
    assert krippendorff_alpha("pairwise", by_id, agree[:1]) is None  # one rater


def test_ranking_alpha_is_ordinal_over_each_answers_rank() -> None:
    items = [_item(3, [f"a{i}", f"b{i}", f"c{i}"]) for i in range(3)]
    by_id = {i.id: i for i in items}
    labels = [_label(i, r, {"ranking": [0, 1, 2]}) for i in items for r in ("r1", "r2")]
    assert krippendorff_alpha("ranking", by_id, labels) == 1.0
    swapped = [*labels[:-1], _label(items[-1], "r2", {"ranking": [1, 0, 2]})]
    assert 0 < krippendorff_alpha("ranking", by_id, swapped) < 1  # type: ignore[operator]


def test_agreement_with_the_others_majority_and_gold_accuracy() -> None:
    gold = _item(2, ["long answer", "no"], gold={"preferred": 0})
    plain = _item(2, ["p", "q"])
    by_id = {gold.id: gold, plain.id: plain}
    labels = [_label(gold, "r1", {"preferred": 0}), _label(gold, "r2", {"preferred": 0}),
              _label(gold, "r3", {"preferred": 1}), _label(plain, "r1", {"preferred": 1}),
              _label(plain, "r2", {"preferred": 1}), _label(plain, "r3", {"preferred": 0})]
    quality = {q.rater: q for q in rater_quality("pairwise", by_id, labels, ["r1", "r2", "r3", "idle"])}
    assert (quality["r1"].agreement_with_majority, quality["r1"].gold_accuracy) == (1.0, 1.0)
    assert (quality["r3"].agreement_with_majority, quality["r3"].gold_accuracy) == (0.0, 0.0)
    assert quality["idle"].labels == 0 and quality["idle"].agreement_with_majority is None


def test_rankings_become_pairs_ties_and_split_votes_are_dropped() -> None:
    campaign = _campaign("ranking")
    item = _item(3, ["best", "middle", "worst"])
    rows = preference_rows(campaign, [item], [_label(item, r, {"ranking": [0, 1, 2]}) for r in ("r1", "r2")], 1.0)
    pairs = {(r["preferred_output"][0]["content"], r["non_preferred_output"][0]["content"]) for r in rows}
    assert pairs == {("best", "middle"), ("best", "worst"), ("middle", "worst")}
    # one rater disagrees on (middle, worst): a split vote, dropped; the others stay
    split = [_label(item, "r1", {"ranking": [0, 1, 2]}), _label(item, "r2", {"ranking": [0, 2, 1]})]
    assert len(preference_rows(campaign, [item], split, 0.5)) == 2
    ab = _campaign("ab")
    pair = _item(2, ["left", "right"])
    assert preference_rows(ab, [pair], [_label(pair, "r1", {"winner": None})], 0) == []
    same = _item(2, ["same", "same"])
    assert preference_rows(_campaign("pairwise"), [same], [_label(same, "r1", {"preferred": 0})], 0) == []
    gold = _item(2, ["g1", "g2"], gold={"preferred": 0})
    assert preference_rows(_campaign("pairwise"), [gold], [_label(gold, "r1", {"preferred": 0})], 0) == []


def test_scores_need_agreement_and_keep_the_mean() -> None:
    item = _item(1, ["an answer"])
    close = [_label(item, "r1", {"score": 4}), _label(item, "r2", {"score": 4.5}), _label(item, "r3", {"score": 1})]
    assert scored_rows([item], close, 0.6) == [{"prompt": "q?", "completion": "an answer", "score": 3.166667}]
    assert scored_rows([item], close, 0.7) == []


def test_display_order_is_a_stable_permutation_per_item() -> None:
    orders = {tuple(display_order("fbc-1", f"fbitem-{i}", 4)) for i in range(40)}
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders) and len(orders) > 5
    assert display_order("fbc-1", "fbitem-7", 4) == display_order("fbc-1", "fbitem-7", 4)
