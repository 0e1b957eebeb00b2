"""The sampler: a schedule (how many tokens per step) and a policy (which ones) in one loop.

`Sampler(schedule, policy, block_size).generate(model, num_samples, seq_len, steps, prompt, seed)`
returns the tokens and what they cost (`SampleOutput`: NFE, tokens per forward, wall time). Prompts
fix positions (a prefix, or a template whose mask tokens are infilled); semi-autoregressive blocks
start where the prompt ends and share the step budget; a step whose input did not change reuses the
last output. Every step runs through the kernels' statistics (`fewstep.kernels.token_stats`: Triton
on CUDA, a chunked torch path elsewhere), and every random number is counter-based, a pure function
of (seed, sequence index, step, position), so a sequence's tokens do not depend on its batch.
MDLM's ancestral sampler is `Sampler(make_step_schedule("ancestral"), make_policy("random"))`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewstep.errors import RunError
from fewstep.kernels import LANE_ORDER, StepStats, counter_uniform, select_positions, sequence_keys
from fewstep.kernels import step as kernel_step
from fewstep.samplers.policies import Policy, StepContext
from fewstep.samplers.schedules import Schedule
from fewstep.samplers.static_loop import StaticRun

__all__ = ["SampleOutput", "Sampler", "StepRecord", "prepare_prompt", "anchor_groups", "block_plan", "STATS_AT", "TIEBREAKS"]

STATS_AT = ("sample", "one")  # statistics of softmax(logits / T) (Dream), or of softmax(logits) (LLaDA)
TIEBREAKS = ("random", "first")  # exact ties in a ranking: a random order, or the lowest position


@dataclass
class SampleOutput:
    """Tokens [num_samples, seq_len] and what producing them cost."""

    tokens: torch.Tensor
    steps: int
    nfe: int  # denoiser forward passes (per batch, summed over batches)
    wall_time: float  # seconds
    num_batches: int
    generated: int | None = None  # positions that were masked at the start, over all samples (the response)

    @property
    def nfe_per_sequence(self) -> float:
        """Forward passes each sequence went through (batches run one after another)."""
        return self.nfe / self.num_batches

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens (never a prompt's) per forward pass of a sequence."""
        per_sequence = self.tokens.shape[1] if self.generated is None else self.generated / len(self.tokens)
        return per_sequence / max(self.nfe_per_sequence, 1e-9)


@dataclass
class StepRecord:
    """What one step saw and did, for hooks (imitation data, tests); tensors over the current block."""

    rows: torch.Tensor  # [batch] the batch's sample indices (in the order of the tensors' rows)
    start: int  # the block's first position
    stats: StepStats
    ctx: StepContext
    reveal: torch.Tensor  # [batch, width] positions revealed at this step


def _prompt_rows(prompt: Any) -> list[torch.Tensor]:
    """A prompt as a list of 1-D token rows: one sequence, [n, P], or a list of sequences of any lengths."""
    if isinstance(prompt, (list, tuple)) and prompt and not isinstance(prompt[0], int):
        rows = [torch.as_tensor(row, dtype=torch.long).cpu() for row in prompt]
        if any(row.ndim != 1 for row in rows):
            raise RunError("a list of prompts must hold 1-D token sequences")
        return rows
    prompt = torch.as_tensor(prompt, dtype=torch.long).cpu()
    if prompt.ndim == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.ndim != 2:
        raise RunError(f"a prompt must be one sequence or one per sample; got shape {tuple(prompt.shape)}")
    return list(prompt)


def prepare_prompt(
    prompt: Any, num_samples: int, seq_len: int, mask_id: int, vocab_size: int | None
) -> torch.Tensor:
    """The starting sequences [num_samples, seq_len]: the prompt's tokens fixed, every other position masked.

    A prompt is a 1-D sequence (shared by every sample), [num_samples, P], or a list of num_samples
    sequences of different lengths; shorter than `seq_len` it is a prefix; mask ids inside it mark spans
    to infill.
    """
    start = torch.full((num_samples, seq_len), mask_id, dtype=torch.long)
    if prompt is None:
        return start
    rows = _prompt_rows(prompt)
    if len(rows) not in (1, num_samples):
        raise RunError(f"a prompt must be one sequence or one per sample ({num_samples}); got {len(rows)}")
    for i, row in enumerate(rows):
        if len(row) > seq_len:
            raise RunError(
                f"the prompt{f' {i}' if len(rows) > 1 else ''} has {len(row)} tokens, longer than "
                f"seq_len={seq_len}; shorten the prompt or raise the sequence length"
            )
        if bool(((row < 0) | ((row >= vocab_size) if vocab_size is not None else False)).any()):
            raise RunError(f"the prompt holds token ids outside the model's vocabulary [0, {vocab_size})")
        if len(rows) == 1:
            start[:, : len(row)] = row
        else:
            start[i, : len(row)] = row
    return start


def anchor_groups(start_tokens: torch.Tensor, mask_id: int) -> list[tuple[int, torch.Tensor]]:
    """Rows grouped by their first masked position (where a prompt ends and the first block starts),
    in increasing order: [(anchor, row indices)]; one group when every prompt has the same length."""
    masked = start_tokens == mask_id
    seq_len = start_tokens.shape[1]
    anchors = torch.where(masked.any(dim=1), masked.to(torch.int8).argmax(dim=1), seq_len)
    return [(int(a), (anchors == a).nonzero().squeeze(1)) for a in torch.unique(anchors)]


def block_plan(seq_len: int, steps: int, block_size: int | None, start: int = 0) -> list[tuple[int, int, int]]:
    """(start, end, steps) per block, left to right from `start` (where the prompt ends), as LLaDA lays
    them out; the budget is split evenly over the blocks (extra steps to the first)."""
    size = block_size or (seq_len - start) or 1
    bounds = [(s, min(s + size, seq_len)) for s in range(start, seq_len, size)] or [(start, seq_len)]
    if steps < len(bounds):
        raise RunError(
            f"{steps} steps cannot fill {len(bounds)} blocks of {size} tokens; give at least "
            f"{len(bounds)} steps or a larger block size"
        )
    share, extra = divmod(steps, len(bounds))
    return [(s, e, share + (i < extra)) for i, (s, e) in enumerate(bounds)]


class Sampler:
    """A schedule and a policy, run as one denoising loop.

    `stats_at`: the statistics policies rank by describe softmax(logits / T) ("sample", Dream's
    convention) or softmax(logits) ("one", LLaDA's and Fast-dLLM's); at T = 0 both are T = 1.
    `tiebreak`: exact ties in a ranking go to a random order ("random") or the lowest position
    ("first", as the references' `torch.topk` does on ties in practice).
    """

    def __init__(
        self,
        schedule: Schedule,
        policy: Policy,
        block_size: int | None = None,
        temperature: float = 1.0,
        stats_at: str = "sample",
        tiebreak: str = "random",
        backend: str = "auto",
    ) -> None:
        if block_size is not None and block_size < 1:
            raise RunError(f"block size must be at least 1, got {block_size}")
        if not (temperature >= 0 and temperature < float("inf")):
            raise RunError(f"temperature must be a finite number >= 0, got {temperature}")
        if stats_at not in STATS_AT:
            raise RunError(f"stats_at must be one of {', '.join(STATS_AT)}, got {stats_at!r}")
        if tiebreak not in TIEBREAKS:
            raise RunError(f"tiebreak must be one of {', '.join(TIEBREAKS)}, got {tiebreak!r}")
        self.schedule = schedule
        self.policy = policy
        self.block_size = block_size
        self.temperature = float(temperature)
        self.stats_at = stats_at
        self.tiebreak = tiebreak
        self.backend = backend

    def describe(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.to_config(),
            "policy": self.policy.to_config(),
            "block_size": self.block_size,
            "temperature": self.temperature,
            "stats_at": self.stats_at,
            "tiebreak": self.tiebreak,
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
        static: bool = False,
        cuda_graph: bool = False,
        sample_ids: Any = None,
    ) -> SampleOutput:
        """Draw `num_samples` sequences in at most `steps` forward passes each; reproducible for a `seed`.

        `static`: the loop without host synchronisation (`fewstep.samplers.static_loop`): the same
        tokens, every step a forward pass. `cuda_graph` (implies `static`, CUDA + Triton): the whole loop
        captured once per batch shape and replayed. `prompt`: see `prepare_prompt`; prompts of different
        lengths run in groups of equal length, each with its blocks from its own prompt's end.
        `sample_ids`: each sample's index in the seed's random streams (default 0 .. num_samples - 1); a
        sample's tokens depend only on (model, prompt, seed, its id), never on the rest of the batch, so a
        prompt given id 0 gets the answer it gets alone.
        """
        if steps < 1:
            raise RunError(f"steps must be at least 1, got {steps}")
        if num_samples < 1 or seq_len < 1:
            raise RunError("num_samples and seq_len must be at least 1")
        mask_id = getattr(model, "mask_id", None) if mask_id is None else mask_id
        if mask_id is None:
            raise RunError("the model has no mask_id; pass mask_id=")
        self.schedule.check_steps(steps)
        if device is None:
            params = list(model.parameters())
            device = params[0].device if params else torch.device("cpu")
        device = torch.device(device)
        start_tokens = prepare_prompt(
            prompt, num_samples, seq_len, mask_id, getattr(model, "vocab_size", None)
        )
        ids = torch.arange(num_samples) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.long)
        if ids.shape != (num_samples,):
            raise RunError(f"sample_ids must hold one index per sample ({num_samples}), got shape {tuple(ids.shape)}")
        batch_size = batch_size or num_samples
        was_training = model.training
        model.eval()
        began = time.perf_counter()
        tokens = start_tokens.clone()
        batches, nfe = 0, 0
        static = static or cuda_graph
        if static and on_step is not None:
            raise RunError("a step hook needs the dynamic loop; drop static / cuda_graph to use on_step")
        try:
            for anchor, group in anchor_groups(start_tokens, mask_id):  # each prompt length its own blocks
                plan = block_plan(seq_len, steps, self.block_size, start=min(anchor, seq_len - 1))
                for first in range(0, len(group), batch_size):
                    rows = group[first : first + batch_size]
                    z = start_tokens[rows].to(device)
                    keys = sequence_keys(seed, ids[rows].to(device))
                    if static:
                        out, used = self._static_run(model, plan, mask_id, z, device, cuda_graph)(z, keys), steps
                    else:
                        out, used = self._run_batch(model, z, plan, mask_id, keys, rows, on_step)
                    tokens[rows] = out.cpu()
                    batches, nfe = batches + 1, nfe + used
        finally:
            model.train(was_training)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return SampleOutput(
            tokens=tokens,
            steps=steps,
            nfe=nfe,
            wall_time=time.perf_counter() - began,
            num_batches=batches,
            generated=int((start_tokens == mask_id).sum()),
        )

    def _static_run(self, model: nn.Module, plan: list[tuple[int, int, int]], mask_id: int, z: torch.Tensor,
                    device: torch.device, cuda_graph: bool) -> StaticRun:
        """The static loop for this model, plan and batch shape, kept so a captured graph is replayed."""
        runs = self.__dict__.setdefault("_static_runs", {})
        key = (id(model), tuple(plan), mask_id, tuple(z.shape), str(device), cuda_graph)
        if key not in runs:
            runs[key] = StaticRun(self, model, plan, mask_id, tuple(z.shape), device, cuda_graph)
        return runs[key]

    def _stats(self, logits: torch.Tensor, rows: torch.Tensor, start: int, end: int, keys: torch.Tensor,
               step: int, mask_id: int, every: bool) -> StepStats:
        """The kernels' statistics at `rows` [batch, width] of the block [start, end); the entropy only
        where the policy reads it, or `every` statistic (a hook sees them)."""
        batch, seq_len = logits.shape[:2]
        full_rows = torch.zeros(batch, seq_len, dtype=torch.bool, device=logits.device)
        full_rows[:, start:end] = rows
        stats = kernel_step.token_stats(
            logits, full_rows, mask_id, temperature=self.temperature, keys=keys, step=step,
            stats_at=self.stats_at, need_entropy=every or self.policy.needs_entropy, backend=self.backend,
        )
        return StepStats(*(getattr(stats, f)[:, start:end] for f in StepStats.__dataclass_fields__))

    def _run_batch(
        self,
        model: nn.Module,
        z: torch.Tensor,
        plan: list[tuple[int, int, int]],
        mask_id: int,
        keys: torch.Tensor,
        rows: torch.Tensor,
        on_step: Callable[[StepRecord], None] | None,
    ) -> tuple[torch.Tensor, int]:
        batch, seq_len = z.shape
        reuse = not getattr(model, "time_conditioning", False)
        hooked = on_step is not None
        logits, previous = None, torch.full_like(z, -1)
        nfe, step_index = 0, 0
        for start, end, block_steps in plan:
            width = end - start
            initial = (z[:, start:end] == mask_id).sum(dim=1)
            block_position = torch.arange(width, device=z.device, dtype=torch.float64) / max(width - 1, 1)
            positions = torch.arange(start, end, device=z.device)
            for step in range(block_steps):
                step_index += 1  # the noise of global step `step_index - 1`
                masked = z == mask_id
                eligible = masked[:, start:end]
                if not bool(eligible.any()):
                    if not bool(masked.any()):
                        return z, nfe  # everything revealed: the remaining steps would change nothing
                    continue
                order = counter_uniform(keys, step_index - 1, positions, LANE_ORDER)
                counts = self.schedule.counts(step, block_steps, initial, eligible, order)
                if not self.policy.adaptive and not bool(counts.any()):
                    continue  # nothing to reveal: no forward pass, no statistics (the tokens are the same)
                if logits is None or not reuse:
                    logits, nfe = self._forward(model, z, masked), nfe + 1
                ctx = StepContext(
                    eligible=eligible,
                    uniform=order,
                    changed=torch.zeros_like(eligible),
                    block_position=block_position,
                    progress=step / block_steps,
                    mask_ratio=masked.double().mean(dim=1),
                )
                if self.policy.uses_stats:
                    stats = self._stats(logits, eligible, start, end, keys, step_index - 1, mask_id, hooked)
                    ctx.changed = eligible & (previous[:, start:end] != stats.argmax) & (previous[:, start:end] >= 0)
                    previous[:, start:end] = torch.where(eligible, stats.argmax, previous[:, start:end])
                    reveal = self._choose(stats, ctx, counts)
                else:  # the order ignores the predictions: draw tokens only where they are revealed
                    reveal = self._choose(None, ctx, counts)
                    stats = self._stats(logits, reveal, start, end, keys, step_index - 1, mask_id, hooked)
                if on_step is not None:
                    on_step(StepRecord(rows=rows, start=start, stats=stats, ctx=ctx, reveal=reveal))
                if bool(reveal.any()):
                    z = z.clone()
                    z[:, start:end] = torch.where(reveal, stats.proposal, z[:, start:end])
                    logits = None
        return z, nfe

    @staticmethod
    def _forward(model: nn.Module, z: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The denoiser's logits; its time is the masked fraction of each sequence (one definition)."""
        t = masked.double().mean(dim=1).to(torch.float32)
        return model(z, t)

    def _choose(self, stats: StepStats | None, ctx: StepContext, counts: torch.Tensor) -> torch.Tensor:
        """The max(schedule `counts`, the policy's wish, 1 if it insists) best-scored positions."""
        wanted = self.policy.wanted(stats, ctx)
        if wanted is not None:
            counts = torch.maximum(counts, wanted)
        if self.policy.at_least_one:
            counts = counts.clamp_min(1)
        counts = torch.minimum(counts, ctx.eligible.sum(dim=1))
        tiebreak = ctx.uniform if self.tiebreak == "random" else None
        return select_positions(self.policy.scores(stats, ctx), ctx.eligible, counts, tiebreak=tiebreak)
