"""Random numbers for a training batch that do not depend on how many processes share it.

Each example's draws come from its own stream, seeded by (seed, optimiser step, position in the
global batch). One process with a batch of 32 and two processes with 16 each draw exactly the same
numbers, so data-parallel runs reproduce single-process runs, and a resumed run reproduces an
uninterrupted one.
"""

from __future__ import annotations

import torch

__all__ = ["BatchNoise", "NoiseSource", "step_noise", "uniform"]

_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64 increment: nearby (step, index) pairs give unrelated seeds
_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    state = 0
    for value in values:
        state = (state + (value & _MASK64) + _GOLDEN) & _MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
        state ^= state >> 31
    return state & ((1 << 63) - 1)


class BatchNoise:
    """Per-example streams for examples `start .. start + count` of a global batch of `global_size`."""

    def __init__(self, seed: int, step: int, start: int, count: int, global_size: int,
                 device: torch.device | str = "cpu") -> None:
        if not 0 <= start <= start + count <= global_size:
            raise ValueError(f"examples {start}..{start + count} do not lie in a global batch of {global_size}")
        self.device = torch.device(device)
        self.start, self.count, self.global_size = start, count, global_size
        self.generators = [torch.Generator(device=self.device).manual_seed(_mix(seed, step, start + i))
                           for i in range(count)]
        self.shared = torch.Generator(device=self.device).manual_seed(_mix(seed, step, -1))

    def rand(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Uniform [0, 1) of `shape`; row i comes from example i's stream."""
        if shape[0] != self.count:
            raise ValueError(f"noise for {shape[0]} examples asked of a stream for {self.count}")
        out = torch.empty(tuple(shape), device=self.device, dtype=dtype)
        for row, generator in zip(out, self.generators):  # filled in place: no second [B, L, V] copy
            row.uniform_(generator=generator)
        return out

    def antithetic(self) -> torch.Tensor:
        """One shared uniform offset, evenly spaced over the *global* batch; this process's share."""
        u = torch.rand(1, generator=self.shared, device=self.device, dtype=torch.float64)
        index = torch.arange(self.start, self.start + self.count, device=self.device, dtype=torch.float64)
        return (u + index / self.global_size) % 1.0


NoiseSource = torch.Generator | BatchNoise | None


def uniform(shape: tuple[int, ...] | torch.Size, source: NoiseSource, device: torch.device | str,
            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniform [0, 1) noise of `shape` on `device` from a generator, a `BatchNoise`, or the global RNG."""
    if isinstance(source, BatchNoise):
        return source.rand(shape, dtype).to(device)
    noise_device = source.device if source is not None else device
    return torch.rand(tuple(shape), generator=source, device=noise_device, dtype=dtype).to(device)


def step_noise(seed: int, step: int, local_batch: int, rank: int = 0, world_size: int = 1,
               device: torch.device | str = "cpu") -> BatchNoise:
    """The noise of optimiser step `step` for this process's `local_batch` examples of the global batch."""
    return BatchNoise(seed, step, rank * local_batch, local_batch, local_batch * world_size, device)
