"""The sampler: a schedule (how many tokens per step) and a policy (which ones) in one loop.

`Sampler(schedule, policy, block_size).generate(model, num_samples, seq_len, steps, prompt, seed)`
returns the tokens and what they cost (`SampleOutput`: NFE, tokens per forward, wall time). Prompts
fix positions (a prefix, or a template whose mask tokens are infilled); semi-autoregressive blocks
are filled left to right with the step budget split evenly; a step whose input did not change
reuses the last output. Every sequence draws its noise from its own stream (`SequenceNoise`), so
its tokens do not depend on what else is in the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewstep.distill.runtime import RunError
from fewstep.samplers.ancestral import SampleOutput
from fewstep.samplers.noise import SequenceNoise
from fewstep.samplers.policies import Policy, StepContext
from fewstep.samplers.schedules import Schedule
from fewstep.samplers.step import StepStats, select_positions, token_stats

__all__ = ["Sampler", "StepRecord", "prepare_prompt", "block_plan"]


@dataclass
class StepRecord:
    """What one step saw and did, for hooks (imitation data, tests); tensors over the current block."""

    batch_offset: int  # index of the batch's first sequence
    start: int  # the block's first position
    stats: StepStats
    ctx: StepContext
    reveal: torch.Tensor  # [batch, width] positions revealed at this step


def prepare_prompt(
    prompt: Any, num_samples: int, seq_len: int, mask_id: int, vocab_size: int | None
) -> torch.Tensor:
    """The starting sequences [num_samples, seq_len]: the prompt's tokens fixed, every other position masked.

    A prompt is a 1-D sequence (shared by every sample) or [num_samples, P]; shorter than `seq_len`
    it is a prefix; mask ids inside it mark spans to infill.
    """
    start = torch.full((num_samples, seq_len), mask_id, dtype=torch.long)
    if prompt is None:
        return start
    prompt = torch.as_tensor(prompt, dtype=torch.long).cpu()
    if prompt.ndim == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.ndim != 2 or prompt.shape[0] not in (1, num_samples):
        raise RunError(
            f"a prompt must be one sequence or one per sample ({num_samples}); got shape "
            f"{tuple(prompt.shape)}"
        )
    if prompt.shape[1] > seq_len:
        raise RunError(
            f"the prompt has {prompt.shape[1]} tokens, longer than seq_len={seq_len}; shorten the "
            "prompt or raise the sequence length"
        )
    bad = (prompt < 0) | (
        (prompt >= vocab_size) if vocab_size is not None else torch.zeros_like(prompt, dtype=bool)
    )
    if bool(bad.any()):
        raise RunError(f"the prompt holds token ids outside the model's vocabulary [0, {vocab_size})")
    start[:, : prompt.shape[1]] = prompt
    return start


def block_plan(seq_len: int, steps: int, block_size: int | None) -> list[tuple[int, int, int]]:
    """(start, end, steps) per block, left to right; the budget split evenly (extra steps to the first)."""
    size = block_size or seq_len
    bounds = [(s, min(s + size, seq_len)) for s in range(0, seq_len, size)]
    if steps < len(bounds):
        raise RunError(
            f"{steps} steps cannot fill {len(bounds)} blocks of {size} tokens; give at least "
            f"{len(bounds)} steps or a larger block size"
        )
    share, extra = divmod(steps, len(bounds))
    return [(s, e, share + (i < extra)) for i, (s, e) in enumerate(bounds)]


class Sampler:
    """A schedule and a policy, run as one denoising loop."""

    def __init__(
        self, schedule: Schedule, policy: Policy, block_size: int | None = None, temperature: float = 1.0
    ) -> None:
        if block_size is not None and block_size < 1:
            raise RunError(f"block size must be at least 1, got {block_size}")
        if temperature < 0:
            raise RunError(f"temperature must be >= 0, got {temperature}")
        self.schedule = schedule
        self.policy = policy
        self.block_size = block_size
        self.temperature = temperature

    def describe(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.to_config(),
            "policy": self.policy.to_config(),
            "block_size": self.block_size,
            "temperature": self.temperature,
        }

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        num_samples: int,
        seq_len: int,
        steps: int,
        prompt: Any = None,
        seed: int = 0,
        batch_size: int | None = None,
        mask_id: int | None = None,
        device: str | torch.device | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> SampleOutput:
        """Draw `num_samples` sequences in at most `steps` forward passes each; reproducible for a `seed`."""
        if steps < 1:
            raise RunError(f"steps must be at least 1, got {steps}")
        if num_samples < 1 or seq_len < 1:
            raise RunError("num_samples and seq_len must be at least 1")
        mask_id = getattr(model, "mask_id", None) if mask_id is None else mask_id
        if mask_id is None:
            raise RunError("the model has no mask_id; pass mask_id=")
        self.schedule.check_steps(steps)
        plan = block_plan(seq_len, steps, self.block_size)
        if device is None:
            params = list(model.parameters())
            device = params[0].device if params else torch.device("cpu")
        device = torch.device(device)
        start_tokens = prepare_prompt(
            prompt, num_samples, seq_len, mask_id, getattr(model, "vocab_size", None)
        )
        batch_size = batch_size or num_samples
        was_training = model.training
        model.eval()
        began = time.perf_counter()
        chunks, nfe = [], 0
        try:
            for first in range(0, num_samples, batch_size):
                z = start_tokens[first : first + batch_size].to(device)
                noise = SequenceNoise(seed, range(first, first + len(z)), device)
                tokens, used = self._run_batch(model, z, plan, mask_id, noise, first, on_step)
                chunks.append(tokens)
                nfe += used
        finally:
            model.train(was_training)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return SampleOutput(
            tokens=torch.cat(chunks).cpu(),
            steps=steps,
            nfe=nfe,
            wall_time=time.perf_counter() - began,
            num_batches=len(chunks),
        )

    def _run_batch(
        self,
        model: nn.Module,
        z: torch.Tensor,
        plan: list[tuple[int, int, int]],
        mask_id: int,
        noise: SequenceNoise,
        offset: int,
        on_step: Callable[[StepRecord], None] | None,
    ) -> tuple[torch.Tensor, int]:
        batch, seq_len = z.shape
        reuse = not getattr(model, "time_conditioning", False)
        logits, previous = None, None
        nfe = 0
        for start, end, block_steps in plan:
            width = end - start
            initial = (z[:, start:end] == mask_id).sum(dim=1)
            block_position = torch.arange(width, device=z.device, dtype=torch.float64) / max(width - 1, 1)
            for step in range(block_steps):
                masked = z == mask_id
                if not bool(masked.any()):
                    return z, nfe  # everything revealed: the remaining steps would change nothing
                eligible = masked[:, start:end]
                current = False  # whether `logits` come from this step's input
                vocab = getattr(model, "vocab_size", None)
                if vocab is None:  # known only from a forward pass
                    if logits is None:
                        logits, nfe, current = self._forward(model, z, masked), nfe + 1, True
                    vocab = logits.shape[-1]
                # every sequence draws its noise at every step, so its stream never depends on the batch
                uniforms = noise.uniform(width, vocab + 1)
                if not bool(eligible.any()):
                    continue
                counts = self.schedule.counts(step, block_steps, initial, eligible, uniforms[..., vocab])
                if not self.policy.adaptive and not bool(counts.any()):
                    continue  # nothing to reveal: no forward pass, no statistics (the tokens are the same)
                if not current and (logits is None or not reuse):
                    logits, nfe = self._forward(model, z, masked), nfe + 1
                block_logits = logits[:, start:end]
                stats = token_stats(block_logits, uniforms[..., :vocab], self.temperature)
                changed = (
                    (previous[:, start:end] != stats.argmax)
                    if previous is not None
                    else torch.zeros_like(eligible)
                )
                previous = logits.argmax(dim=-1)
                ctx = StepContext(
                    eligible=eligible,
                    uniform=uniforms[..., vocab],
                    changed=changed,
                    block_position=block_position,
                    progress=step / block_steps,
                    mask_ratio=masked.double().mean(dim=1),
                )
                reveal = self._choose(stats, ctx, counts)
                if on_step is not None:
                    on_step(StepRecord(batch_offset=offset, start=start, stats=stats, ctx=ctx, reveal=reveal))
                if bool(reveal.any()):
                    z = z.clone()
                    z[:, start:end] = torch.where(reveal, stats.proposal, z[:, start:end])
                    logits = None
        return z, nfe

    @staticmethod
    def _forward(model: nn.Module, z: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        t = masked.double().mean(dim=1).to(torch.float32)
        return model(z, t)

    def _choose(self, stats: StepStats, ctx: StepContext, counts: torch.Tensor) -> torch.Tensor:
        """The max(schedule `counts`, the policy's wish, 1 if it insists) best-scored positions."""
        wanted = self.policy.wanted(stats, ctx)
        if wanted is not None:
            counts = torch.maximum(counts, wanted)
        if self.policy.at_least_one:
            counts = counts.clamp_min(1)
        counts = torch.minimum(counts, ctx.eligible.sum(dim=1))
        return select_positions(self.policy.scores(stats, ctx), ctx.eligible, counts, tiebreak=ctx.uniform)
