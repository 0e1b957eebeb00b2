"""Policies: which masked tokens a step reveals, given per-token statistics.

A policy ranks the eligible positions (`scores`, higher first) and may ask to reveal more than the
schedule's count (`wanted`, e.g. every token above a confidence threshold). The sampler reveals
max(schedule count, wanted, 1 if `at_least_one`) of the best-ranked positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fewstep.errors import RunError
from fewstep.kernels import StepStats
from fewstep.samplers.names import POLICY_NAMES

__all__ = [
    "StepContext",
    "Policy",
    "AcceptingPolicy",
    "RandomPolicy",
    "DilatedPolicy",
    "dilation_order",
    "TopKPolicy",
    "ThresholdPolicy",
    "EntropyBoundedPolicy",
    "POLICY_NAMES",
    "CONFIDENCES",
    "confidence_of",
    "make_policy",
]


@dataclass
class StepContext:
    """Where a step stands, [batch, width] over the current block unless noted."""

    eligible: torch.Tensor  # masked positions of the current block
    uniform: torch.Tensor  # float64 uniforms of this step (the random order)
    changed: torch.Tensor  # the argmax differs from the previous step's
    block_position: torch.Tensor  # [width] position within the block, in [0, 1]
    progress: float  # steps done / steps in the block, in [0, 1)
    mask_ratio: torch.Tensor  # [batch] masked fraction of the whole sequence


class Policy:
    """Ranks positions; `wanted` may ask for more reveals than the schedule gives."""

    name = "base"
    at_least_one = False
    adaptive = False  # whether `wanted` may reveal tokens the schedule did not ask for
    uses_stats = True  # whether the ranking reads the predictions (else `scores` gets stats=None)
    needs_entropy = False  # whether the ranking reads the entropy (it costs a pass over the logits)
    fallback: Policy | None = None

    def scores(self, stats: StepStats, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def wanted(self, stats: StepStats, ctx: StepContext) -> torch.Tensor | None:
        """Tokens each sequence wants revealed beyond the schedule's count, [batch]; None: none."""
        return None

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name}


class RandomPolicy(Policy):
    """MDLM ancestral: a uniformly random order, independent of the predictions."""

    name = "random"
    uses_stats = False

    def scores(self, stats: StepStats | None, ctx: StepContext) -> torch.Tensor:
        return -ctx.uniform


def dilation_order(width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Each position's place in a dilated order, [width]: position i gets its index bit-reversed.

    Any prefix of the order is spread as evenly as it can be (0, 64, 32, 96, 16, ... for 128), so
    the tokens revealed in one step sit far apart, and later ones fill the gaps between revealed
    ones, one per gap, where a first-order chain makes them independent given their neighbours.
    """
    bits = max(1, (width - 1).bit_length())
    index = torch.arange(width, device=device)
    reversed_index = torch.zeros_like(index)
    for bit in range(bits):
        reversed_index |= ((index >> bit) & 1) << (bits - 1 - bit)
    return reversed_index


class DilatedPolicy(Policy):
    """A fixed dilated order (after dilated unmasking schedules, DUS): never neighbours in one step while gaps remain.

    Independent of the predictions, like the random order, but revealing k tokens at once costs
    far less when nearby tokens depend on each other, since those are revealed in different steps.
    """

    name = "dilated"
    uses_stats = False

    def scores(self, stats: StepStats | None, ctx: StepContext) -> torch.Tensor:
        order = dilation_order(ctx.eligible.shape[1], ctx.eligible.device)
        return (-order.to(torch.float64)).expand(ctx.eligible.shape)


_STAT_SCORES = {
    "confidence": lambda s: s.sampled_prob,  # LLaDA, Fast-dLLM, Dream: the sampled token's probability
    "top1": lambda s: s.confidence,  # the most likely token's probability (equal at T = 0)
    "margin": lambda s: s.margin,
    "entropy": lambda s: -s.entropy,
}
CONFIDENCES = ("sampled", "top1")


def confidence_of(stats: StepStats, confidence: str) -> torch.Tensor:
    """A position's confidence: the probability of its sampled token ("sampled", as LLaDA, Fast-dLLM
    and Dream rank) or of its most likely token ("top1")."""
    return stats.sampled_prob if confidence == "sampled" else stats.confidence


def _check_confidence(confidence: str) -> str:
    if confidence not in CONFIDENCES:
        raise RunError(f"unknown confidence {confidence!r}; choose one of {', '.join(CONFIDENCES)}")
    return confidence


class TopKPolicy(Policy):
    """LLaDA / Dream: the most certain tokens first, by confidence, top-2 margin or low entropy."""

    def __init__(self, by: str = "confidence", confidence: str = "sampled") -> None:
        if by not in _STAT_SCORES:
            raise RunError(f"unknown top-k statistic {by!r}; choose one of {', '.join(_STAT_SCORES)}")
        self.by = by if by != "confidence" or _check_confidence(confidence) == "sampled" else "top1"
        self.name = by
        self.needs_entropy = by == "entropy"

    def scores(self, stats: StepStats, ctx: StepContext) -> torch.Tensor:
        return _STAT_SCORES[self.by](stats)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **({"confidence": "top1"} if self.by == "top1" and self.name != "top1" else {})}


class AcceptingPolicy(Policy):
    """A policy that accepts some tokens outright; the schedule's remaining count follows `fallback`'s order.

    Without a fallback the accepted tokens' own score orders everything (Fast-dLLM, EB-sampler).
    """

    at_least_one = True
    adaptive = True
    own_entropy = False  # whether its own scores read the entropy

    @property
    def needs_entropy(self) -> bool:  # type: ignore[override]
        return self.own_entropy or (self.fallback is not None and self.fallback.needs_entropy)

    def own_scores(self, stats: StepStats, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def accepted(self, stats: StepStats, ctx: StepContext, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, stats: StepStats, ctx: StepContext) -> torch.Tensor:
        own = self.own_scores(stats, ctx)
        if self.fallback is None:
            return own
        # accepted tokens first (in their own order), then the fallback's order; both kinds stay finite
        lifted = 1e6 + own.clamp(-1e5, 1e5)
        return torch.where(
            self.accepted(stats, ctx, own), lifted, self.fallback.scores(stats, ctx).to(own.dtype)
        )

    def wanted(self, stats: StepStats, ctx: StepContext) -> torch.Tensor:
        return (ctx.eligible & self.accepted(stats, ctx, self.own_scores(stats, ctx))).sum(dim=1)

    def fallback_config(self) -> dict[str, Any]:
        return {"fallback": self.fallback.name} if self.fallback is not None else {}


class ThresholdPolicy(AcceptingPolicy):
    """Fast-dLLM: reveal every token whose top-1 probability reaches `threshold`; at least one per step."""

    name = "threshold"

    def __init__(self, threshold: float = 0.9, fallback: Policy | None = None, confidence: str = "sampled") -> None:
        if not 0.0 < threshold <= 1.0:
            raise RunError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.fallback = fallback
        self.confidence = _check_confidence(confidence)

    def own_scores(self, stats: StepStats, ctx: StepContext) -> torch.Tensor:
        return confidence_of(stats, self.confidence)

    def accepted(self, stats: StepStats, ctx: StepContext, scores: torch.Tensor) -> torch.Tensor:
        return confidence_of(stats, self.confidence) >= self.threshold

    def to_config(self) -> dict[str, Any]:
        extra = {"confidence": self.confidence} if self.confidence != "sampled" else {}
        return {"name": self.name, "threshold": self.threshold, **extra, **self.fallback_config()}


class EntropyBoundedPolicy(AcceptingPolicy):
    """EB-sampler: reveal the lowest-entropy tokens while their summed entropy minus the largest <= gamma."""

    name = "eb"
    own_entropy = True

    def __init__(self, gamma: float = 0.1, fallback: Policy | None = None) -> None:
        if gamma < 0:
            raise RunError(f"the entropy bound gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.fallback = fallback

    def own_scores(self, stats: StepStats, ctx: StepContext) -> torch.Tensor:
        return -stats.entropy

    def accepted(self, stats: StepStats, ctx: StepContext, scores: torch.Tensor) -> torch.Tensor:
        entropy = torch.where(ctx.eligible, stats.entropy, torch.full_like(stats.entropy, torch.inf))
        ordered, order = entropy.sort(dim=1, stable=True)
        finite = ordered.nan_to_num(posinf=0.0)
        # sorted ascending, the largest of the first j is the j-th: the bound is on the sum of the others
        keep_sorted = (torch.cumsum(finite, dim=1) - finite <= self.gamma) & torch.isfinite(ordered)
        return torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted) & ctx.eligible

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "gamma": self.gamma, **self.fallback_config()}


def make_policy(name: str, threshold: float = 0.9, gamma: float = 0.1, fallback: str | None = None,
                confidence: str = "sampled") -> Policy:
    """A heuristic policy by name (`learned` is loaded from a model directory instead).

    `fallback` (threshold, eb): the order in which the schedule's remaining count is filled.
    `confidence` (confidence, threshold): the sampled token's probability, or the top-1 probability.
    """
    if fallback is not None and name not in ("threshold", "eb"):
        raise RunError(f"a fallback order applies to the threshold and eb policies, not {name!r}")
    back = make_policy(fallback) if fallback is not None else None
    if name == "random":
        return RandomPolicy()
    if name == "dilated":
        return DilatedPolicy()
    if name in _STAT_SCORES:
        return TopKPolicy(name, confidence=confidence)
    if name == "threshold":
        return ThresholdPolicy(threshold, back, confidence=confidence)
    if name == "eb":
        return EntropyBoundedPolicy(gamma, back)
    raise RunError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
