"""The base-vs-tuned comparison (domain/eval_compare.py) on fixed items: differences, bootstrap intervals, pairing,
errors and the items that differ most."""

from __future__ import annotations

import math
import random

from tuneforge.service.domain.eval_compare import Graded, compare


def _item(index: int, score: float, status: str | None = None, name: str = "c") -> Graded:
    passed = score >= 0.5
    return Graded(index, status or ("pass" if passed else "fail"), {"q": index}, f"out{index}-{score}",
                  {name: (score, passed)})


def test_identical_runs_differ_by_nothing() -> None:
    items = [_item(i, s) for i, s in enumerate([0.0, 1.0, 0.3, 0.9])]
    report = compare(["c"], items, items)
    criterion = report["per_testing_criteria"][0]
    assert criterion["pass_rate"] == {"base": 0.5, "tuned": 0.5, "difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert criterion["mean_score"]["difference"] == 0.0 and criterion["items"] == 4
    assert report["most_different_items"] == []  # nothing differs


def test_a_model_that_passes_everything_the_other_fails() -> None:
    base = [_item(i, 0.0) for i in range(20)]
    tuned = [_item(i, 1.0) for i in range(20)]
    report = compare(["c"], base, tuned)
    assert report["pass_rate"] == {"base": 0.0, "tuned": 1.0, "difference": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert len(report["most_different_items"]) == 10  # every item differs by 1; the first ten by index
    assert [d["index"] for d in report["most_different_items"]] == list(range(10))
    first = report["most_different_items"][0]
    assert first["base"]["output_text"] == "out0-0.0" and first["tuned"]["output_text"] == "out0-1.0"
    assert first["score_difference"] == 1.0


def test_the_interval_matches_the_normal_approximation_on_many_items() -> None:
    """400 paired items with a known difference: the bootstrap interval of the mean difference is close to the
    mean +- 1.96 standard errors (the two agree for a mean of this many items)."""
    rng = random.Random(7)
    base_scores = [rng.random() for _ in range(400)]
    tuned_scores = [min(1.0, max(0.0, b + rng.gauss(0.1, 0.2))) for b in base_scores]
    report = compare(["c"], [_item(i, s) for i, s in enumerate(base_scores)],
                     [_item(i, s) for i, s in enumerate(tuned_scores)])
    mean = report["per_testing_criteria"][0]["mean_score"]
    diffs = [t - b for b, t in zip(base_scores, tuned_scores, strict=True)]
    expected = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - expected) ** 2 for d in diffs) / (len(diffs) - 1))
    half = 1.96 * sd / math.sqrt(len(diffs))
    assert math.isclose(mean["difference"], expected, abs_tol=1e-6)
    assert math.isclose(mean["base"], sum(base_scores) / 400, abs_tol=1e-6)
    assert abs(mean["ci_low"] - (expected - half)) < 0.25 * half
    assert abs(mean["ci_high"] - (expected + half)) < 0.25 * half
    assert mean["ci_low"] < expected < mean["ci_high"]
    # the same numbers every time the report is read
    again = compare(["c"], [_item(i, s) for i, s in enumerate(base_scores)],
                    [_item(i, s) for i, s in enumerate(tuned_scores)])
    assert again == report


def test_errored_and_unpaired_items_are_left_out_and_counted() -> None:
    base = [_item(0, 1.0), _item(1, 0.0), Graded(2, "error", {}, "", {}), _item(3, 0.0)]
    tuned = [_item(0, 1.0), _item(1, 1.0), _item(2, 1.0)]  # item 3 was never graded (a failed run)
    report = compare(["c"], base, tuned)
    assert report["items"] == 2 and report["unpaired"] == 3  # 2 and 3 of the base, 2 of the tuned
    criterion = report["per_testing_criteria"][0]
    assert criterion["items"] == 2 and criterion["unpaired"] == 1
    assert criterion["pass_rate"]["base"] == 0.5 and criterion["pass_rate"]["tuned"] == 1.0
    assert [d["index"] for d in report["most_different_items"]] == [1]


def test_a_criterion_that_errored_on_one_side_is_left_out_of_that_criterion_only() -> None:
    base = [Graded(0, "error", {}, "a", {"x": (1.0, True)}), Graded(1, "pass", {}, "b", {"x": (1.0, True),
                                                                                            "y": (1.0, True)})]
    tuned = [Graded(0, "fail", {}, "c", {"x": (0.0, False), "y": (0.0, False)}),
             Graded(1, "fail", {}, "d", {"x": (1.0, True), "y": (0.0, False)})]
    report = compare(["x", "y"], base, tuned)
    x, y = report["per_testing_criteria"]
    assert (x["items"], y["items"]) == (2, 1)
    assert x["mean_score"]["difference"] == -0.5 and y["mean_score"]["difference"] == -1.0
    assert report["items"] == 1  # item 0 errored in the base run: not in the overall pass rate
    assert report["pass_rate"]["difference"] == -1.0


def test_no_items_at_all() -> None:
    report = compare(["c"], [], [])
    assert report["items"] == 0 and report["per_testing_criteria"][0]["items"] == 0
    assert report["pass_rate"] == {"base": 0.0, "tuned": 0.0, "difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
