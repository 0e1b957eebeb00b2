"""Counter-based random numbers: a uniform is a pure function of (seed, sequence, step, position, lane).

No generator state: a sequence's numbers do not depend on its batch, on the batch size, or on how
many steps ran before, and they are computed for the positions a step needs with a few integer
operations on [batch, width] tensors (no Python loop per sequence, nothing of vocabulary size).
Seeds and steps may be device tensors, so a captured CUDA graph can be replayed with new ones.
The hash is SplitMix64's finaliser applied to a running combination of the inputs.
"""

from __future__ import annotations

import torch

__all__ = ["LANE_ORDER", "LANE_TOKEN", "counter_uniform", "mix64", "sequence_keys"]

LANE_TOKEN = 0  # the draw of a position's token (inverse-CDF sampling)
LANE_ORDER = 1  # a position's random rank (random order, stochastic counts, tie-breaks)

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(state: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Fold `value` into `state` (int64, wrapping arithmetic) and scramble: SplitMix64's finaliser."""
    z = state + value + _GOLDEN
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def sequence_keys(seed: int | torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """One int64 key per sequence from the run's seed and each sequence's index in the run, [B]."""
    seed = torch.as_tensor(seed, dtype=torch.int64, device=indices.device)
    return mix64(mix64(torch.zeros_like(indices, dtype=torch.int64), seed), indices.to(torch.int64))


def counter_uniform(keys: torch.Tensor, step: int | torch.Tensor, positions: torch.Tensor,
                    lane: int) -> torch.Tensor:
    """Float64 uniforms in (0, 1), [B, W]: row b, column w is a pure function of
    (keys[b], step, positions[w], lane); 53 random bits each, never exactly 0 or 1."""
    if isinstance(step, torch.Tensor):
        step = step.to(torch.int64)
    state = mix64(keys.to(torch.int64).unsqueeze(1), step)  # a Python int stays a kernel argument
    state = mix64(state, positions.to(torch.int64).unsqueeze(0) * 4 + lane)
    bits = _shr(state, 11)
    return (bits.to(torch.float64) + 0.5) * (2.0 ** -53)
