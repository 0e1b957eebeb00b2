"""Learned step allocation: a direct search over per-step token counts on validation quality.

Start from the best fixed curve (loglinear, linear, cosine, geometric) at the budget, then move
blocks of tokens from one step to another, keeping a move when the objective improves on a fixed
set of sample seeds (common random numbers make small differences measurable). Each pass tries
distinct moves in a random order; the move size halves when `patience` of them (0: all) fail in a
row. The winner is re-checked on held-out seeds and kept only if it beats the starting curve there
too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fewstep.samplers.schedules import curve_counts, make_step_schedule

__all__ = ["START_CURVES", "AllocationResult", "search_allocation"]

START_CURVES = ("loglinear", "linear", "cosine", "geometric")  # the fixed curves a search starts from


@dataclass
class AllocationResult:
    """The chosen counts, where the search started and how it went."""

    counts: list[int]
    start: str
    start_counts: list[int]
    start_value: float
    best_value: float
    evaluations: int
    history: list[dict[str, Any]] = field(default_factory=list)


def search_allocation(
    evaluate: Callable[[list[int]], float],
    steps: int,
    num_tokens: int,
    iterations: int = 60,
    patience: int = 0,
    seed: int = 0,
    starts: tuple[str, ...] = START_CURVES,
) -> AllocationResult:
    """Minimise `evaluate(counts)` over per-step counts summing to `num_tokens` (each step reveals >= 0)."""
    candidates = {name: curve_counts(make_step_schedule(name), steps, num_tokens) for name in starts}
    scored = {name: evaluate(counts) for name, counts in candidates.items()}
    start = min(scored, key=scored.get)
    best, best_value = list(candidates[start]), scored[start]
    history = [{"move": f"start:{name}", "value": value} for name, value in scored.items()]
    rng = random.Random(seed)
    delta = max(1, num_tokens // (2 * steps))
    pairs = [(i, j) for i in range(steps) for j in range(steps) if i != j]
    patience = patience or len(pairs)
    evaluations = len(candidates)
    while evaluations < len(candidates) + iterations and steps > 1:
        # one pass: distinct moves in a random order, until one improves or `patience` have failed
        moves = [(i, j) for i, j in pairs if best[i] >= delta]
        rng.shuffle(moves)
        improved = False
        for i, j in moves[:patience]:
            if evaluations >= len(candidates) + iterations:
                break
            trial = list(best)
            trial[i] -= delta
            trial[j] += delta
            value = evaluate(trial)
            evaluations += 1
            if value < best_value:
                best, best_value, improved = trial, value, True
                history.append({"move": f"{delta} tokens from step {i} to {j}", "value": value})
                break
        if not improved:
            if delta == 1:
                break
            delta = max(1, delta // 2)
    return AllocationResult(
        counts=best,
        start=start,
        start_counts=list(candidates[start]),
        start_value=scored[start],
        best_value=best_value,
        evaluations=evaluations,
        history=history,
    )
