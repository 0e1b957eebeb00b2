"""Which positions a step reveals: per row, the k best-scored eligible positions, on the device.

One selection for every sampler and for the fused step's torch path; the Triton kernel implements
the same rule (ties to the lowest position) in its own launch.
"""

from __future__ import annotations

import math

import torch

__all__ = ["select_positions"]


def select_positions(
    scores: torch.Tensor, eligible: torch.Tensor, counts: torch.Tensor, tiebreak: torch.Tensor | None = None
) -> torch.Tensor:
    """Per row, the `counts[b]` eligible positions with the highest scores, [batch, width] bool.

    Ties go to the smaller `tiebreak` value (e.g. the step's order uniforms: a random order), else to
    the lowest position. No host synchronisation: stable sorts and a rank comparison, so it runs
    inside a captured loop.
    """
    width = scores.shape[1]
    ranked = torch.where(
        eligible, scores.to(torch.float64), torch.full_like(scores, -math.inf, dtype=torch.float64)
    )
    if tiebreak is not None:
        first = torch.argsort(tiebreak, dim=1, stable=True)
        order = first.gather(1, torch.argsort(ranked.gather(1, first), dim=1, descending=True, stable=True))
    else:
        order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    # eligible positions rank before ineligible ones even when their score is -inf
    order = order.gather(1, torch.argsort((~eligible).gather(1, order).to(torch.int8), dim=1, stable=True))
    positions = torch.arange(width, device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return eligible & (ranks < counts.unsqueeze(1))
