"""Learning the policy head by imitation (Learn2PD): finalise a token once its proposal is already final.

Reference rollouts (by default one token per step, most certain first) give, at every step and
every masked position, the head's features and a label: does the current proposal equal the token
the rollout finally wrote there? The head is fitted to these labels with a logistic loss and scored
on held-out rollouts (other seeds) against the majority-class baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.samplers.policies import TopKPolicy
from fewstep.samplers.policy_head import PolicyHead, token_features
from fewstep.samplers.sampler import Sampler, StepRecord
from fewstep.samplers.schedules import NoiseCurveSchedule, make_step_schedule

__all__ = ["ImitationData", "imitation_data", "train_head", "head_accuracy"]


@dataclass
class ImitationData:
    """Features [N, F] at masked positions along reference rollouts and labels [N] (proposal is final)."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def imitation_data(
    model: nn.Module,
    num_rollouts: int,
    seq_len: int,
    rollout_steps: int,
    seed: int,
    rollout_policy: str = "confidence",
    vocab_size: int | None = None,
    batch_size: int = 64,
    max_examples: int = 200_000,
    temperature: float = 1.0,
    tiebreak: str = "random",
    prompt: Any = None,
) -> ImitationData:
    """Roll the reference sampler out and label every masked position at every step.

    The rollouts rank by the predictive distribution (`confidence` is the top-1 probability here, not the
    drawn token's), so that one token per step is exact sampling and the labels are unbiased. `tiebreak`:
    exact ties in that ranking go to a random order, or to the lowest position ("first"). `prompt`: one
    prompt per rollout (lists of token ids of any lengths); the rollouts answer them, one token per step
    (LLaDA's even split, as long as `rollout_steps` covers the longest response)."""
    vocab_size = vocab_size or int(model.vocab_size)
    schedule = NoiseCurveSchedule("loglinear") if prompt is None else make_step_schedule("even")
    sampler = Sampler(schedule, TopKPolicy(rollout_policy, confidence="top1"),
                      temperature=temperature, tiebreak=tiebreak)
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(step: StepRecord) -> None:
        where = step.ctx.eligible.nonzero(as_tuple=True)
        feats = token_features(step.stats, step.ctx, vocab_size)[where]
        rows.append(
            (
                feats.cpu(),
                step.rows.to(where[0].device)[where[0]].cpu(),
                (where[1] + step.start).cpu(),
                step.stats.proposal[where].cpu(),
            )
        )

    out = sampler.generate(
        model, num_rollouts, seq_len, rollout_steps, prompt=prompt, seed=seed, batch_size=batch_size,
        on_step=record
    )
    features = torch.cat([r[0] for r in rows])
    labels = torch.cat([(r[3] == out.tokens[r[1], r[2]]).float() for r in rows])
    if len(labels) > max_examples:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:max_examples]
        features, labels = features[keep], labels[keep]
    return ImitationData(features, labels)


def train_head(
    data: ImitationData,
    hidden: int = 16,
    updates: int = 1000,
    lr: float = 0.01,
    seed: int = 0,
    batch_size: int = 4096,
) -> PolicyHead:
    """Fit the head to the labels with a logistic loss: `updates` Adam steps on random mini-batches."""
    torch.manual_seed(seed)
    head = PolicyHead(hidden)
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n = len(data)
    head.train()
    for _ in range(updates):
        chunk = torch.randint(n, (min(batch_size, n),), generator=generator)
        loss = F.binary_cross_entropy_with_logits(head(data.features[chunk]), data.labels[chunk])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return head.eval()


@torch.no_grad()
def head_accuracy(head: PolicyHead, data: ImitationData) -> dict[str, float]:
    """Agreement of the head's decisions (p > 0.5) with the oracle's, beside two simple baselines."""
    decisions = head(data.features) > 0
    positives = float(data.labels.mean())
    return {
        "accuracy": float((decisions == data.labels.bool()).float().mean()),
        "majority_baseline": max(positives, 1 - positives),
        "positive_rate": positives,
        "confidence_rule": float(((data.features[:, 0] > 0.5) == data.labels.bool()).float().mean()),
        "examples": len(data),
    }
