"""The sampler's loop with static shapes and no host synchronisation, so a CUDA graph can capture it.

The dynamic loop in `fewstep.samplers.sampler` asks the device small questions (is anything left to
reveal? did this step reveal anything?) to skip work; each answer is a host synchronisation. This
loop asks none: every step runs the denoiser and the kernels' statistics over the block, the schedule's
counts and the policy's choice stay on the device, and a step with nothing to reveal reveals nothing.
The tokens are the dynamic loop's (for a denoiser that is not time-conditioned, whose unchanged inputs
give unchanged outputs); the forward passes are the full budget. On CUDA with Triton the whole loop,
denoiser forward and step, is captured once per batch shape and replayed with new inputs and seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fewstep.errors import RunError
from fewstep.kernels import LANE_ORDER, counter_uniform, triton_available
from fewstep.kernels import step as kernel_step
from fewstep.samplers.policies import StepContext

__all__ = ["StaticRun", "count_host_syncs"]


class StaticRun:
    """One batch shape's loop for a `Sampler`: eager, or captured in a CUDA graph and replayed."""

    def __init__(self, sampler: Any, model: nn.Module, plan: list[tuple[int, int, int]], mask_id: int,
                 shape: tuple[int, int], device: torch.device, cuda_graph: bool) -> None:
        if cuda_graph and (device.type != "cuda" or not triton_available() or sampler.backend == "torch"):
            raise RunError("cuda_graph=True needs a CUDA device and the Triton backend (pip install triton)")
        self.sampler, self.model, self.plan, self.mask_id = sampler, model, plan, mask_id
        self.tokens = torch.full(shape, mask_id, dtype=torch.long, device=device)
        self.keys = torch.zeros(shape[0], dtype=torch.long, device=device)
        self.cuda_graph = cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None

    def run(self) -> torch.Tensor:
        """The loop over the static buffers, eagerly; returns the new tokens."""
        sampler, z, keys, mask_id = self.sampler, self.tokens, self.keys, self.mask_id
        step_index = 0
        previous = torch.full_like(z, -1)  # the last argmax seen at each position (the `changed` feature)
        for start, end, block_steps in self.plan:
            initial = (z[:, start:end] == mask_id).sum(dim=1)
            width = end - start
            positions = torch.arange(start, end, device=z.device)
            block_position = torch.arange(width, device=z.device, dtype=torch.float64) / max(width - 1, 1)
            for step in range(block_steps):
                masked = z == mask_id
                eligible = masked[:, start:end]
                order = counter_uniform(keys, step_index, positions, LANE_ORDER)
                counts = sampler.schedule.counts(step, block_steps, initial, eligible, order)
                logits = sampler._forward(self.model, z, masked)
                ctx = StepContext(eligible=eligible, uniform=order, changed=torch.zeros_like(eligible),
                                  block_position=block_position, progress=step / block_steps,
                                  mask_ratio=masked.double().mean(dim=1))
                rows = torch.zeros_like(masked)
                rows[:, start:end] = eligible
                stats = kernel_step.token_stats(
                    logits, rows, mask_id, temperature=sampler.temperature, keys=keys, step=step_index,
                    stats_at=sampler.stats_at, need_entropy=sampler.policy.needs_entropy, backend=sampler.backend)
                block_stats = type(stats)(*(getattr(stats, f)[:, start:end] for f in stats.__dataclass_fields__))
                seen = previous[:, start:end]
                ctx.changed = eligible & (seen != block_stats.argmax) & (seen >= 0)
                previous[:, start:end] = torch.where(eligible, block_stats.argmax, seen)
                reveal = sampler._choose(block_stats if sampler.policy.uses_stats else None, ctx, counts)
                z = z.clone()
                z[:, start:end] = torch.where(reveal, block_stats.proposal, z[:, start:end])
                step_index += 1
        return z

    def _capture(self) -> None:
        side = torch.cuda.Stream(device=self.tokens.device)
        side.wait_stream(torch.cuda.current_stream(self.tokens.device))
        with torch.cuda.stream(side):
            self.run()  # warm-up outside the capture: compiles the kernels, initialises the libraries
        torch.cuda.current_stream(self.tokens.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.run()

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.keys.copy_(keys)
        if not self.cuda_graph:
            return self.run()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.output.clone()


def count_host_syncs(fn: Callable[[], object]) -> int:
    """How many host synchronisations torch reports while `fn` runs (CUDA only; 0 on the CPU)."""
    import warnings

    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)
