"""The fused denoising step in plain torch: the CPU path and the oracle the Triton kernel is tested against.

Everything is computed in float64 (logits, Gumbel noise, statistics), as evaluation sampling needs:
32-bit Gumbel noise truncates the tail and lowers the effective temperature (Zheng et al. 2024).
Statistics come back as float32; selection compares those float32 values, as the kernel does.
"""

from __future__ import annotations

import math

import torch

from fewstep.kernels.select import select_positions

__all__ = ["gumbel_from_uniform", "reference_step", "select_reveal"]


def gumbel_from_uniform(uniforms: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)) in float64, for injecting into `denoise_step(noise=...)`."""
    u = uniforms.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(u))


def select_reveal(scores: torch.Tensor, eligible: torch.Tensor, *, count: torch.Tensor | None = None,
                  threshold: float | None = None, strict: bool = False) -> torch.Tensor:
    """Which eligible positions to reveal, [B, L] bool; at least one per row that has an eligible position.

    `count` [B]: the k highest scores (k clamped to [1, eligible]), ties to the lowest position.
    `threshold`: every score >= threshold (> when `strict`), else the single best. No host sync.
    """
    scores = scores.to(torch.float32)
    scores = torch.where(scores == 0, torch.zeros_like(scores), scores)  # -0.0 ranks as +0.0
    n_elig = eligible.sum(dim=1)
    if count is not None:
        return select_positions(scores, eligible, torch.minimum(count.to(n_elig.dtype).clamp_min(1), n_elig))
    best = select_positions(scores, eligible, torch.ones_like(n_elig))
    assert threshold is not None
    thr = torch.tensor(threshold, dtype=torch.float32)  # compared in float32, as the kernel does
    above = (scores > thr) if strict else (scores >= thr)
    chosen = eligible & above
    fallback = best & ~chosen.any(dim=1, keepdim=True)
    return chosen | fallback


def reference_step(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, temperature: float,
                   noise: torch.Tensor | None, count: torch.Tensor | None, threshold: float | None,
                   scores: torch.Tensor | None, strict: bool) -> tuple[torch.Tensor, ...]:
    """One denoising step; returns (tokens, sampled, prob, margin, entropy, revealed, num_revealed).

    `noise` is float64-able Gumbel noise [B, L, V] (required when temperature > 0). Inputs are assumed
    validated by `fewstep.kernels.step`.
    """
    x = logits.to(torch.float64, copy=True)
    if temperature > 0:
        x *= 1.0 / temperature
    x[..., mask_id] = -math.inf  # SUBS: the mask token is never predicted
    log_probs = torch.log_softmax(x, dim=-1)
    probs = log_probs.exp()
    if temperature > 0:
        assert noise is not None
        keys = torch.where(x == -math.inf, x, x + noise.to(torch.float64))
        sampled = keys.argmax(dim=-1)
    else:
        sampled = x.argmax(dim=-1)
    top2 = probs.topk(2, dim=-1).values
    prob = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    margin = top2[..., 0] - top2[..., 1]
    entropy = -(probs * torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))).sum(-1)

    masked = tokens == mask_id
    one = torch.ones_like(prob)
    prob = torch.where(masked, prob, one).to(torch.float32)
    margin = torch.where(masked, margin, one).to(torch.float32)
    entropy = torch.where(masked, entropy, torch.zeros_like(entropy)).to(torch.float32)
    sampled = torch.where(masked, sampled.to(tokens.dtype), tokens)
    revealed = select_reveal(prob if scores is None else scores, masked, count=count, threshold=threshold,
                             strict=strict)
    new_tokens = torch.where(revealed, sampled, tokens)
    return new_tokens, sampled, prob, margin, entropy, revealed, revealed.sum(dim=1)
