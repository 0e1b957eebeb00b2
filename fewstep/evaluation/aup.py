"""AUP, accuracy under parallelism (d3LLM, Qian et al. 2026): one number for an accuracy / tokens-per-forward curve.

The points (tokens per forward rho_i, accuracy y_i in percent) are sorted by rho, and of points at the
same rho only the most accurate is kept (a threshold sweep reaches one rho with several settings; the
curve is its frontier, not a vertical segment whose lowest point would set the floor); those more than
`y_min_offset` points below the accuracy at the lowest rho are dropped (d3LLM's `get_aup` asserts
that there are none; a sweep that goes past the cliff is normal here, so they are left out and the
curve ends where accuracy has fallen too far). Then

    AUP = rho_1 * y_1 + sum_i (rho_i - rho_{i-1}) * (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2,
    W(y) = min(exp(-alpha * (1 - y / y_max)), 1),

with y_max the best accuracy among every method compared (so AUPs of one table share it): a fast
point is only worth its area where its accuracy holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["aup", "aup_weight"]


def aup_weight(y: float, y_max: float, alpha: float = 3.0) -> float:
    """The quality weight W(y) = min(exp(-alpha (1 - y / y_max)), 1) of an accuracy y (percent)."""
    if y_max <= 0:
        return 0.0
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def aup(tokens_per_forward: Sequence[float], accuracy: Sequence[float], y_max: float, alpha: float = 3.0,
        y_min_offset: float = 5.0) -> float:
    """The AUP of (tokens per forward, accuracy in percent [0, 100]) points; see the module docstring."""
    if len(tokens_per_forward) != len(accuracy) or not accuracy:
        raise ValueError("AUP needs one accuracy per tokens-per-forward value, and at least one point")
    if any(rho <= 0 for rho in tokens_per_forward):
        raise ValueError("tokens per forward must be positive")
    if any(not 0.0 <= y <= 100.0 for y in accuracy):
        raise ValueError("accuracies are percentages in [0, 100]")
    best: dict[float, float] = {}
    for rho, y in zip(tokens_per_forward, accuracy):
        best[rho] = max(y, best.get(rho, y))
    points = sorted(best.items())
    floor = points[0][1] - y_min_offset
    points = [(rho, y) for rho, y in points if y >= floor]
    total = points[0][0] * points[0][1]
    for (rho_prev, y_prev), (rho, y) in zip(points, points[1:]):
        total += 0.5 * (rho - rho_prev) * (y * aup_weight(y, y_max, alpha) + y_prev * aup_weight(y_prev, y_max, alpha))
    return total
