"""Test oracles: MDLM's ancestral sampler as MDLM writes it (a per-token reveal draw, float64 Gumbel).

Not a product path: `Sampler(make_step_schedule("ancestral"), make_policy("random"))` is fewstep's
ancestral sampler; tests check it against this transcription in distribution.

From t to s < t each still-masked token is revealed with probability
(alpha(s) - alpha(t)) / (1 - alpha(t)), with its value drawn from the denoiser's distribution
using float64 Gumbel noise (32-bit Gumbel noise lowers the effective temperature and flatters
generative perplexity; Zheng et al. 2024). A step whose input did not change reuses the last
output, so NFE can be below the step count.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from fewstep.core.diffusion import NoiseSchedule, make_schedule
from fewstep.core.streams import NoiseSource, uniform
from fewstep.samplers import SampleOutput

__all__ = ["ancestral_sample", "gumbel_argmax"]


def gumbel_argmax(logits: torch.Tensor, generator: NoiseSource, temperature: float = 1.0) -> torch.Tensor:
    """Sample from softmax(logits / T) with float64 Gumbel noise; T = 0 is argmax."""
    logits = logits.to(torch.float64)
    if temperature == 0:
        return logits.argmax(dim=-1)
    u = uniform(logits.shape, generator, logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    return (logits / temperature + gumbel).argmax(dim=-1)


@torch.no_grad()
def _sample_batch(model: nn.Module, batch: int, seq_len: int, steps: int, mask_id: int, schedule: NoiseSchedule,
                  generator: torch.Generator, device: torch.device, temperature: float) -> tuple[torch.Tensor, int]:
    z = torch.full((batch, seq_len), mask_id, dtype=torch.long, device=device)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    reuse = not getattr(model, "time_conditioning", False)
    logits = None
    nfe = 0
    for i in range(steps):
        t, s = times[i], times[i + 1]
        if not (z == mask_id).any():
            break  # everything revealed early: the remaining steps would change nothing
        if logits is None or not reuse:
            logits = model(z, torch.full((batch,), float(t), device=device))
            nfe += 1
        masked = z == mask_id
        proposal = gumbel_argmax(logits, generator, temperature)
        reveal_p = 1.0 if i == steps - 1 else float(schedule.reveal_probability(t, s))
        u = torch.rand(z.shape, generator=generator, dtype=torch.float64, device=device)
        reveal = masked & (u < reveal_p)
        if reveal.any():
            z = torch.where(reveal, proposal, z)
            logits = None
    return z, nfe


def ancestral_sample(model: nn.Module, num_samples: int, seq_len: int, steps: int, mask_id: int,
                     schedule: NoiseSchedule | str = "loglinear", seed: int = 0, batch_size: int | None = None,
                     temperature: float = 1.0, device: str | torch.device | None = None) -> SampleOutput:
    """Draw `num_samples` sequences with `steps` ancestral steps; reproducible for a given `seed`."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if num_samples < 1 or seq_len < 1:
        raise ValueError("num_samples and seq_len must be at least 1")
    if isinstance(schedule, str):
        schedule = make_schedule(schedule)
    if device is None:
        params = list(model.parameters())
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    batch_size = batch_size or num_samples
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    chunks, nfe = [], 0
    try:
        for first in range(0, num_samples, batch_size):
            batch = min(batch_size, num_samples - first)
            tokens, used = _sample_batch(model, batch, seq_len, steps, mask_id, schedule, generator, device,
                                         temperature)
            chunks.append(tokens)
            nfe += used
    finally:
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return SampleOutput(tokens=torch.cat(chunks).cpu(), steps=steps, nfe=nfe, wall_time=elapsed,
                        num_batches=len(chunks))
