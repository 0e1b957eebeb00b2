"""How the teacher builds the student's target (SDTT: self-distillation through time).

From z_t the teacher takes k ancestral steps of size dt. The target at each position masked in
z_t is the teacher's distribution at the step where that token is revealed, and the teacher's last
prediction for tokens still masked after k steps. The student then learns to match, in one step
of size k·dt, what the teacher does in k. With k = 1 the target is the teacher's own prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fewstep.core.diffusion import NoiseSchedule, subs_log_probs
from fewstep.core.streams import BatchNoise, NoiseSource, uniform
from fewstep.kernels.stats import draw_tokens

__all__ = ["RevealFn", "ancestral_reveal", "sdtt_target", "student_times"]

# (masked [B, L] bool, step index j, t, s, generator) -> which masked positions to reveal at step j
RevealFn = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor, NoiseSource], torch.Tensor]


def ancestral_reveal(schedule: NoiseSchedule) -> RevealFn:
    """MDLM's rule: reveal each masked token with probability (alpha(s) - alpha(t)) / (1 - alpha(t))."""

    def reveal(masked: torch.Tensor, step: int, t: torch.Tensor, s: torch.Tensor,
               generator: NoiseSource) -> torch.Tensor:
        p = schedule.reveal_probability(t.to(torch.float64), s.to(torch.float64)).unsqueeze(-1)
        u = uniform(masked.shape, generator, masked.device)
        return masked & (u < p.to(masked.device))

    return reveal


def student_times(batch: int, student_steps: int, generator: NoiseSource = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Times on the student's grid {1/N, 2/N, ..., 1}: where a student step of size 1/N starts."""
    if isinstance(generator, BatchNoise):
        index = (generator.rand((batch,)) * student_steps).long().clamp_max(student_steps - 1) + 1
    else:
        noise_device = generator.device if generator is not None else device
        index = torch.randint(1, student_steps + 1, (batch,), generator=generator, device=noise_device)
    return (index.to(torch.float64) / student_steps).to(device)


@torch.no_grad()
def sdtt_target(teacher: nn.Module, z: torch.Tensor, t: torch.Tensor, dt: float, k: int, mask_id: int,
                reveal: RevealFn, generator: NoiseSource = None,
                temperature: float = 1.0) -> torch.Tensor:
    """Target log-probabilities [B, L, V] for the student at z_t; only positions masked in `z` matter.

    The teacher runs k steps t -> t - dt -> ... -> t - k·dt. Sampled values are the sampler's draw
    (inverse CDF, a float64 uniform per position); targets are float32, never a float64 [B, L, V] copy.
    """
    if k < 1:
        raise ValueError("k (teacher steps per student step) must be at least 1")
    current = z.clone()
    target = None
    for j in range(k):
        t_j = (t - j * dt).clamp_min(0.0)
        s_j = (t - (j + 1) * dt).clamp_min(0.0)
        logits = teacher(current, t_j)
        log_probs = subs_log_probs(logits.float(), current, mask_id)
        if target is None:
            target = log_probs.clone()
        masked = current == mask_id
        # a token revealed at step j keeps the distribution it was drawn from; the rest are
        # overwritten by later steps, so after k steps they hold the teacher's last prediction
        target = torch.where(masked.unsqueeze(-1), log_probs, target)
        if j == k - 1:
            break
        chosen = reveal(masked, j, t_j, s_j, generator)
        proposal = draw_tokens(logits, uniform(chosen.shape, generator, chosen.device), temperature, mask_id,
                               rows=chosen)
        current = torch.where(chosen, proposal, current)
    return target
