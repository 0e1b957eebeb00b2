"""The learned policy head: a tiny network over per-token statistics that decides what to finalise.

Features per masked token: top-1 probability, top-2 margin, entropy (over log V), position in the
block, progress t through the block's steps, the sequence's mask ratio, and whether the argmax
changed since the last step. The head outputs a logit for "this token's current proposal is already
its final value" (Learn2PD); tokens above `threshold` are finalised, best first, at least one per
step. Everything stays on the device: no host synchronisation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewstep.core.io import atomic_save
from fewstep.errors import RunError
from fewstep.kernels import StepStats
from fewstep.samplers.policies import AcceptingPolicy, Policy, StepContext

__all__ = ["FEATURES", "PolicyHead", "LearnedPolicy", "token_features", "save_head", "load_head"]

FEATURES = ("confidence", "margin", "entropy", "block_position", "progress", "mask_ratio", "changed")


def token_features(stats: StepStats, ctx: StepContext, vocab_size: int) -> torch.Tensor:
    """The head's inputs, float32 [batch, width, len(FEATURES)], each in [0, 1]."""
    batch, width = stats.confidence.shape
    columns = [
        stats.confidence,
        stats.margin,
        stats.entropy / math.log(max(vocab_size, 2)),
        ctx.block_position.expand(batch, width),
        torch.full_like(stats.confidence, ctx.progress),
        ctx.mask_ratio.unsqueeze(1).expand(batch, width),
        ctx.changed.to(stats.confidence.dtype),
    ]
    return torch.stack(columns, dim=-1).float()


class PolicyHead(nn.Module):
    """features -> logit; `hidden=0` is logistic regression, else one hidden layer of that width."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = hidden
        n = len(FEATURES)
        self.net = (
            nn.Linear(n, 1)
            if hidden == 0
            else nn.Sequential(nn.Linear(n, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LearnedPolicy(AcceptingPolicy):
    """Finalise the tokens the head rates above `threshold` (a probability), at least one per step.

    The schedule's remaining count follows `fallback`'s order (a heuristic policy), or the head's own.
    """

    name = "learned"
    own_entropy = True  # a feature

    def __init__(
        self, head: PolicyHead, vocab_size: int, threshold: float = 0.9, fallback: Policy | None = None
    ) -> None:
        self.head = head.eval()
        self.vocab_size = vocab_size
        self.threshold = threshold
        self.fallback = fallback
        self.logit_threshold = (
            math.log(threshold / (1 - threshold))
            if 0 < threshold < 1
            else (math.inf if threshold >= 1 else -math.inf)
        )

    def with_threshold(self, threshold: float) -> LearnedPolicy:
        """The same head and fallback at another threshold."""
        if not 0.0 < threshold < 1.0:
            raise RunError(f"a learned policy's threshold must be in (0, 1), got {threshold}")
        return LearnedPolicy(self.head, self.vocab_size, threshold, self.fallback)

    def own_scores(self, stats: StepStats, ctx: StepContext) -> torch.Tensor:
        head = self.head.to(stats.confidence.device)
        return head(token_features(stats, ctx, self.vocab_size)).double()

    def accepted(self, stats: StepStats, ctx: StepContext, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.logit_threshold

    def to_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": self.threshold,
            "hidden": self.head.hidden,
            **self.fallback_config(),
        }


def save_head(head: PolicyHead, path: Path) -> None:
    """Write the head's weights as safetensors, atomically."""
    from safetensors.torch import save_file


    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    atomic_save(
        path,
        lambda tmp: save_file(
            tensors, str(tmp), metadata={"hidden": str(head.hidden), "features": ",".join(FEATURES)}
        ),
    )


def load_head(path: Path, hidden: int) -> PolicyHead:
    """Read a head written by `save_head`."""
    from safetensors.torch import load_file

    head = PolicyHead(hidden)
    head.load_state_dict(load_file(str(path)))
    return head.eval()
