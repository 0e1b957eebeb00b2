"""Learned step allocation: a direct search over per-step token counts on validation quality.

Start from the best fixed curve (loglinear, linear, cosine) at the budget, then move blocks of
tokens from one step to another, keeping a move when the objective improves on a fixed set of
sample seeds (common random numbers make small differences measurable); the move size halves when
`patience` moves in a row fail. The winner is re-checked on held-out seeds and kept only if it
beats the starting curve there too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fewstep.samplers.schedules import NoiseCurveSchedule, curve_counts

__all__ = ["AllocationResult", "search_allocation"]


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
    patience: int = 8,
    seed: int = 0,
    starts: tuple[str, ...] = ("loglinear", "linear", "cosine"),
) -> AllocationResult:
    """Minimise `evaluate(counts)` over per-step counts summing to `num_tokens` (each step reveals >= 0)."""
    candidates = {name: curve_counts(NoiseCurveSchedule(name), steps, num_tokens) for name in starts}
    scored = {name: evaluate(counts) for name, counts in candidates.items()}
    start = min(scored, key=scored.get)
    best, best_value = list(candidates[start]), scored[start]
    history = [{"move": f"start:{name}", "value": value} for name, value in scored.items()]
    rng = random.Random(seed)
    delta = max(1, num_tokens // (2 * steps))
    failures, evaluations = 0, len(candidates)
    while evaluations < len(candidates) + iterations and steps > 1:
        donors = [i for i in range(steps) if best[i] >= delta]
        if not donors:
            delta = max(1, delta // 2)
            continue
        i = rng.choice(donors)
        j = rng.choice([k for k in range(steps) if k != i])
        trial = list(best)
        trial[i] -= delta
        trial[j] += delta
        value = evaluate(trial)
        evaluations += 1
        if value < best_value:
            best, best_value, failures = trial, value, 0
            history.append({"move": f"{delta} tokens from step {i} to {j}", "value": value})
        else:
            failures += 1
            if failures >= patience:
                if delta == 1:
                    break
                delta, failures = max(1, delta // 2), 0
    return AllocationResult(
        counts=best,
        start=start,
        start_counts=list(candidates[start]),
        start_value=scored[start],
        best_value=best_value,
        evaluations=evaluations,
        history=history,
    )
