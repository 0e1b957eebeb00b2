"""AUP against a transcription of d3LLM's `get_aup` (AUP_leaderboard, aup_utils.py) and a hand computation."""

from __future__ import annotations

import math
import random

import pytest

from fewstep.evaluation.aup import aup, aup_weight


def reference_aup(rho, y, y_max, alpha=3.0, y_min_offset=5.0):
    """d3LLM's get_aup as published: sort by rho, refuse a drop past the offset, trapezoids weighted by W."""
    pairs = sorted(zip(rho, y), key=lambda p: p[0])
    r, a = [p[0] for p in pairs], [p[1] for p in pairs]
    assert a[0] - a[-1] <= y_min_offset
    keep = [(ri, ai) for ri, ai in zip(r, a) if ai >= a[0] - y_min_offset]
    r, a = [p[0] for p in keep], [p[1] for p in keep]

    def w(v):
        return min(math.exp(-alpha * (1 - v / y_max)), 1.0)

    total = r[0] * a[0]
    for i in range(1, len(r)):
        total += 0.5 * (r[i] - r[i - 1]) * (a[i] * w(a[i]) + a[i - 1] * w(a[i - 1]))
    return total


def test_agrees_with_the_reference_where_it_applies():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 6)
        top = rng.uniform(50, 100)
        rho = [rng.uniform(0.5, 10) for _ in range(n)]
        y = [top - rng.uniform(0, 4.9) for _ in range(n)]
        y_max = max(y) + rng.uniform(0, 10)
        assert aup(rho, y, y_max) == pytest.approx(reference_aup(rho, y, y_max), rel=1e-12)


def test_a_hand_computed_curve():
    # (1, 90), (2, 88), (4, 80): the last point is more than 5 below 90 and is dropped
    w88 = math.exp(-3 * (1 - 88 / 90))
    assert aup([4, 1, 2], [80, 90, 88], y_max=90) == pytest.approx(90 + 0.5 * (2 - 1) * (88 * w88 + 90))
    assert aup_weight(95, 90) == 1.0 and aup_weight(0, 0) == 0.0


def test_points_at_one_tokens_per_forward_count_once_at_their_best():
    """A threshold sweep lands several settings on one rho (here 1.28: 28% and 100%); the curve is their best,
    the same AUP as the sweep without the worse duplicate (before: the 28% point set the floor and dropped
    every accurate one)."""
    assert aup([1.79, 1.28, 1.28, 1.28], [2.5, 28.3, 100.0, 100.0], y_max=100) == pytest.approx(
        aup([1.79, 1.28], [2.5, 100.0], y_max=100))
    assert aup([1.28, 1.28], [28.3, 100.0], y_max=100) == pytest.approx(128.0)


def test_refusals():
    with pytest.raises(ValueError, match="one accuracy per"):
        aup([1, 2], [90], 90)
    with pytest.raises(ValueError, match="positive"):
        aup([0], [90], 90)
    with pytest.raises(ValueError, match="percentages"):
        aup([1], [0.9 * 200], 90)


def _row(model, sampler, tps, accuracy, tpf):
    return {"model": model, "sampler": sampler, "tokens_per_s": tps, "tokens_per_forward": tpf,
            "quality": {"accuracy": accuracy, "entropy": 1.0}}


def test_the_pareto_front_and_aup_of_a_prompted_sweep():
    from fewstep.evaluation.metrics import quality_key
    from fewstep.tradeoff.pareto import aup_by_curve, pareto_front

    rows = [_row("teacher", "llada", 100, 0.95, 1.0), _row("teacher", "llada", 400, 0.40, 4.0),
            _row("student", "llada", 400, 0.93, 4.0), _row("student", "llada", 800, 0.91, 8.0)]
    assert quality_key(rows) == "accuracy"
    # higher accuracy is better: the teacher's fast row is beaten by the student's at the same speed
    assert pareto_front(rows, "accuracy") == [0, 2, 3]
    curves = aup_by_curve(rows)
    assert curves[("teacher", "llada", 1.0)] == pytest.approx(aup([1.0, 4.0], [95.0, 40.0], 95.0))
    assert curves[("student", "llada", 1.0)] == pytest.approx(aup([4.0, 8.0], [93.0, 91.0], 95.0))
    assert curves[("student", "llada", 1.0)] > curves[("teacher", "llada", 1.0)]


def test_tune_to_an_accuracy_target_keeps_at_least_the_ratio():
    from fewstep.tradeoff.tune import Target, tune

    rows = [_row("teacher", "llada", 100, 0.95, 1.0), _row("teacher", "llada", 400, 0.40, 4.0),
            _row("student", "llada", 400, 0.945, 4.0), _row("student", "llada", 800, 0.91, 8.0)]
    for row, steps in zip(rows, (16, 4, 4, 2)):
        row["steps"], row["schedule"] = steps, "even"
    chosen, ref = tune(rows, Target("accuracy", "teacher", 16, 0.99, min_entropy_ratio=0.0))
    assert ref is rows[0] and chosen is rows[2]  # 0.945 >= 0.99 x 0.95; the 2-step student (0.91) is not
    with pytest.raises(Exception, match="accuracy >= "):
        tune(rows, Target("accuracy", "teacher", 16, 1.01, min_entropy_ratio=0.0))
