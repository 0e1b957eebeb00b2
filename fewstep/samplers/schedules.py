"""Schedules: how many of a block's masked tokens a sampler reveals by the end of each step.

A schedule is a cumulative curve F(0) = 0 <= F(1) <= ... <= F(n) = 1 over a block's n steps. The
fixed curves come from a noise schedule, F(k) = (alpha(1 - k/n) - alpha(1)) / (alpha(0) - alpha(1)),
with the counts rounded (`loglinear`, `linear`, `cosine`) or drawn (`ancestral`: every masked token
revealed with probability (F(k+1) - F(k)) / (1 - F(k)), exactly MDLM's sampler). `geometric`
doubles the count each step, F(k) = 2^(k - n), the first step taking the remainder: with a dilated
order it reveals each level of the dilation in its own step. The references' own counts: `even`
(LLaDA's `get_num_transfer_tokens`: a block's masked tokens split evenly, the remainder one each to
the first steps), `dream` (Dream's `int(M * (1 - s / t))` of the M still masked, on its time grid
linspace(1, eps, n + 1)) and `cap` (nothing but what the policy accepts, everything left at the
block's last step: Fast-dLLM's threshold decoding with the budget as a cap). A learned allocation
(`AllocationSchedule`) stores its own curve for one step budget.
"""

from __future__ import annotations

from typing import Any

import torch

from fewstep.core.diffusion import make_schedule
from fewstep.errors import RunError
from fewstep.samplers.names import SCHEDULE_NAMES

__all__ = [
    "Schedule",
    "NoiseCurveSchedule",
    "GeometricSchedule",
    "AllocationSchedule",
    "EvenSchedule",
    "DreamSchedule",
    "CapSchedule",
    "SCHEDULE_NAMES",
    "make_step_schedule",
    "curve_counts",
]


class Schedule:
    """The reveal curve of a block; `counts` turns it into per-sequence counts at each step."""

    name = "base"
    stochastic = False

    def fractions(self, steps: int) -> torch.Tensor:
        """Cumulative fraction revealed after each of `steps` steps, float64 [steps + 1]."""
        raise NotImplementedError

    def check_steps(self, steps: int) -> None:
        """Refuse a step budget this schedule cannot serve (a learned allocation serves one)."""

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def counts(
        self, step: int, steps: int, initial: torch.Tensor, eligible: torch.Tensor, uniform: torch.Tensor
    ) -> torch.Tensor:
        """How many eligible tokens each sequence must reveal at `step` (of `steps` in its block), [batch].

        `initial` [batch]: masked tokens of the block when it started; `eligible` [batch, width]: the
        block's masked positions now; `uniform` [batch, width]: the step's per-token uniforms.
        """
        self.check_steps(steps)
        remaining = eligible.sum(dim=1)
        if step == steps - 1:  # the block's last step reveals everything left, whatever the curve
            return remaining
        return self.step_count(step, steps, initial, eligible, uniform, remaining)

    def step_count(self, step: int, steps: int, initial: torch.Tensor, eligible: torch.Tensor,
                   uniform: torch.Tensor, remaining: torch.Tensor) -> torch.Tensor:
        """`counts` before the block's last step; `remaining` [batch] is `eligible.sum(1)`. By default the
        curve's rounded targets, or with `stochastic` each token revealed with the curve's probability."""
        fractions = self.fractions(steps)  # a host-side curve: no device synchronisation
        if self.stochastic:
            done, after = float(fractions[step]), float(fractions[step + 1])
            p = min(max((after - done) / (1.0 - done), 0.0), 1.0) if done < 1 else 1.0
            return (eligible & (uniform < p)).sum(dim=1)
        target = torch.floor(initial.to(torch.float64) * float(fractions[step + 1]) + 0.5).long()
        revealed = initial - remaining
        return torch.minimum((target - revealed).clamp_min(0), remaining)


class NoiseCurveSchedule(Schedule):
    """The reveal curve implied by a noise schedule alpha(t) on an even time grid."""

    def __init__(self, noise: str = "loglinear", stochastic: bool = False, eps: float = 1e-3) -> None:
        self.noise = noise
        self.noise_schedule = make_schedule(noise, eps)
        self.stochastic = stochastic
        self.name = "ancestral" if stochastic else noise

    def fractions(self, steps: int) -> torch.Tensor:
        t = 1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps
        alpha = self.noise_schedule.alpha(t)
        fractions = (alpha - alpha[0]) / (alpha[-1] - alpha[0])
        fractions[0], fractions[-1] = 0.0, 1.0
        return torch.cummax(fractions.clamp(0.0, 1.0), dim=0).values

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "noise": self.noise}


class GeometricSchedule(Schedule):
    """Each step reveals twice as many tokens as the one before: F(k) = 2^(k - n) for k >= 1."""

    name = "geometric"

    def fractions(self, steps: int) -> torch.Tensor:
        k = torch.arange(steps + 1, dtype=torch.float64)
        fractions = torch.pow(2.0, k - steps)
        fractions[0] = 0.0
        return fractions


class EvenSchedule(Schedule):
    """LLaDA: each step reveals initial // n of the block's tokens, the first initial % n one more."""

    name = "even"

    def fractions(self, steps: int) -> torch.Tensor:
        return torch.arange(steps + 1, dtype=torch.float64) / steps

    def step_count(self, step: int, steps: int, initial: torch.Tensor, eligible: torch.Tensor,
                   uniform: torch.Tensor, remaining: torch.Tensor) -> torch.Tensor:
        return torch.minimum(initial // steps + (step < initial % steps).long(), remaining)


class DreamSchedule(Schedule):
    """Dream: of the M tokens still masked, int(M * (1 - s / t)) at step i, with t, s consecutive points of
    linspace(1, eps, n + 1) in float32 (as Dream computes it); everything left at the last step."""

    name = "dream"

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def _ratios(self, steps: int) -> torch.Tensor:
        t = torch.linspace(1.0, self.eps, steps + 1, dtype=torch.float32)
        return 1 - t[1:] / t[:-1]

    def fractions(self, steps: int) -> torch.Tensor:
        kept = torch.cumprod(1 - self._ratios(steps).to(torch.float64), dim=0)
        fractions = torch.cat([torch.zeros(1, dtype=torch.float64), 1 - kept])
        fractions[-1] = 1.0
        return fractions

    def step_count(self, step: int, steps: int, initial: torch.Tensor, eligible: torch.Tensor,
                   uniform: torch.Tensor, remaining: torch.Tensor) -> torch.Tensor:
        ratio = float(self._ratios(steps)[step])  # a host constant: no copy to the device in a captured loop
        return (remaining.to(torch.float32) * ratio).long()

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps}


class CapSchedule(Schedule):
    """No count of its own: a step reveals what the policy accepts (at least one); the block's last step
    reveals everything left, so the step budget is a cap (Fast-dLLM's threshold decoding)."""

    name = "cap"

    def fractions(self, steps: int) -> torch.Tensor:
        fractions = torch.zeros(steps + 1, dtype=torch.float64)
        fractions[-1] = 1.0
        return fractions


class AllocationSchedule(Schedule):
    """A learned step allocation: an explicit reveal curve for exactly `steps` steps."""

    name = "learned"

    def __init__(self, fractions: list[float] | torch.Tensor, source: str = "scheduler_config.json") -> None:
        curve = torch.as_tensor(fractions, dtype=torch.float64)
        if (
            curve.ndim != 1
            or len(curve) < 2
            or abs(curve[0]) > 1e-9
            or abs(curve[-1] - 1) > 1e-9
            or bool((curve.diff() < -1e-12).any())
        ):
            raise RunError(
                f"{source}: the allocation must be a non-decreasing curve from 0 to 1; re-run "
                "`fewstep schedule` to rewrite it"
            )
        self.curve = curve
        self.steps = len(curve) - 1
        self.source = source

    @classmethod
    def from_counts(cls, counts: list[int] | torch.Tensor, source: str = "search") -> AllocationSchedule:
        """A curve from per-step token counts (their cumulative share)."""
        counts = torch.as_tensor(counts, dtype=torch.float64)
        return cls(torch.cat([torch.zeros(1, dtype=torch.float64), counts.cumsum(0) / counts.sum()]), source)

    def check_steps(self, steps: int) -> None:
        if steps != self.steps:
            raise RunError(
                f"the learned allocation in {self.source} was made for a budget of {self.steps} steps, "
                f"not {steps}; sample with --steps {self.steps}, or learn one for {steps} steps with "
                f"`fewstep schedule CONFIG steps={steps}`"
            )

    def fractions(self, steps: int) -> torch.Tensor:
        self.check_steps(steps)
        return self.curve

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "fractions": [float(f) for f in self.curve]}


def curve_counts(schedule: Schedule, steps: int, num_tokens: int) -> list[int]:
    """The per-step token counts a deterministic curve gives for `num_tokens` masked tokens."""
    targets = torch.floor(num_tokens * schedule.fractions(steps) + 0.5).long()
    targets[-1] = num_tokens
    return targets.diff().tolist()


def make_step_schedule(name: str, noise: str = "loglinear") -> Schedule:
    """A fixed schedule by name; `ancestral` uses the model's own noise schedule `noise`."""
    if name == "ancestral":
        return NoiseCurveSchedule(noise, stochastic=True)
    if name in ("loglinear", "linear", "cosine"):
        return NoiseCurveSchedule(name)
    if name == "geometric":
        return GeometricSchedule()
    if name == "even":
        return EvenSchedule()
    if name == "dream":
        return DreamSchedule()
    if name == "cap":
        return CapSchedule()
    raise RunError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)} or learned")
