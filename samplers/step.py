"""One denoising step's arithmetic: proposals and per-token statistics, then position selection.

Plain torch, kept behind two small functions (`token_stats`, `select_positions`) so that the fused
`fewstep.kernels.denoise_step` can replace them without touching the samplers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["StepStats", "token_stats", "select_positions"]


@dataclass
class StepStats:
    """Per-position statistics of one step's predictive distribution, [batch, width] each."""

    proposal: torch.Tensor  # the sampled token (Gumbel-argmax, float64 noise)
    argmax: torch.Tensor  # the most likely token
    confidence: torch.Tensor  # probability of the most likely token
    sampled_prob: torch.Tensor  # probability of the sampled token
    margin: torch.Tensor  # top-1 minus top-2 probability
    entropy: torch.Tensor  # nats


def token_stats(logits: torch.Tensor, uniforms: torch.Tensor | None, temperature: float = 1.0) -> StepStats:
    """Sample a proposal per position from softmax(logits / T) and measure its distribution.

    `uniforms` [batch, width, vocab] float64 give the Gumbel noise; T = 0 takes the argmax. The
    statistics describe the distribution the proposal is drawn from (T = 1 when T = 0).
    """
    logits = logits.to(torch.float64)
    scaled = logits / temperature if temperature > 0 else logits
    log_probs = torch.log_softmax(scaled, dim=-1)
    probs = log_probs.exp()
    argmax = scaled.argmax(dim=-1)
    if temperature > 0:
        if uniforms is None:
            raise ValueError("sampling at temperature > 0 needs uniforms")
        gumbel = -torch.log(-torch.log(uniforms.clamp_min(torch.finfo(torch.float64).tiny)))
        proposal = (scaled + gumbel).argmax(dim=-1)
    else:
        proposal = argmax
    top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
    margin = top2[..., 0] - (top2[..., 1] if top2.shape[-1] > 1 else 0.0)
    entropy = -(probs * torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))).sum(-1)
    return StepStats(
        proposal=proposal,
        argmax=argmax,
        confidence=top2[..., 0],
        sampled_prob=probs.gather(-1, proposal.unsqueeze(-1)).squeeze(-1),
        margin=margin,
        entropy=entropy,
    )


def select_positions(
    scores: torch.Tensor, eligible: torch.Tensor, counts: torch.Tensor, tiebreak: torch.Tensor | None = None
) -> torch.Tensor:
    """Per row, the `counts[b]` eligible positions with the highest scores.

    Ties go to the smaller `tiebreak` value (the step's uniforms: a random order), else leftmost;
    without it a tie among many equally certain positions would reveal one contiguous run. No host
    synchronisation: two stable sorts and a rank comparison, so it runs inside a captured loop.
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
    positions = torch.arange(width, device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return eligible & (ranks < counts.unsqueeze(1))
