"""Per-sequence random streams: a sequence's noise depends on (seed, its index), never on its batch.

Each sequence owns a generator seeded from a hash of (seed, sequence index), so sampling a
sequence alone, in another batch, or with another batch size gives the same tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

__all__ = ["SequenceNoise", "stream_seed"]


def stream_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sequence `index` of a run seeded with `seed`."""
    digest = hashlib.sha256(f"fewstep-sampler:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SequenceNoise:
    """One float64 uniform stream per sequence of a batch."""

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device) -> None:
        self.device = device
        self.generators = [torch.Generator(device=device).manual_seed(stream_seed(seed, i)) for i in indices]

    def uniform(self, *shape: int) -> torch.Tensor:
        """Uniforms in [0, 1), float64 [batch, *shape]; every sequence advances its own stream."""
        return torch.stack(
            [torch.rand(shape, generator=g, dtype=torch.float64, device=self.device) for g in self.generators]
        )
