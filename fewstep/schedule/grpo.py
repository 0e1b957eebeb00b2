"""Policy-gradient fine-tuning of the policy head (GRPO): reward quality x speed, stay near the heuristic.

During training the head's finalise decisions are Bernoulli draws, p = sigmoid(logit - logit(threshold)),
so the deployed rule (finalise when p > 1/2) is the mode of the trained policy. Each group shares
its sequences' model noise and differs only in those draws; a rollout's advantage is its reward
minus the group mean, over the group's spread. Reward: exp(-(NLL/token - data NLL/token)) x
(budget / the sequence's NFE), on `markov` (exact NLL). A KL term keeps the decisions near the
Fast-dLLM rule (finalise when top-1 probability > threshold, smoothed).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.samplers.policy_head import LearnedPolicy, PolicyHead, token_features
from fewstep.samplers.sampler import Sampler, StepRecord
from fewstep.samplers.schedules import Schedule
from fewstep.schedule.config import GRPOConfig

__all__ = [
    "grpo_finetune",
    "deployed_reward",
]


class _Sampling(LearnedPolicy):
    """The head as a stochastic policy; remembers each step's features and draws."""

    def __init__(self, base: LearnedPolicy, generator: torch.Generator) -> None:
        super().__init__(base.head, base.vocab_size, base.threshold, base.fallback)
        self.generator = generator
        self.draws: torch.Tensor | None = None

    def accepted(self, stats: Any, ctx: Any, scores: torch.Tensor) -> torch.Tensor:
        # one draw per step: the sampler asks twice (count and order); the step hook clears it
        if self.draws is None:
            p = torch.sigmoid(scores - self.logit_threshold)
            self.draws = torch.rand(p.shape, generator=self.generator, dtype=p.dtype, device=p.device) < p
        return self.draws


def _rollouts(
    model: nn.Module,
    schedule: Schedule,
    policy: LearnedPolicy,
    num: int,
    seq_len: int,
    steps: int,
    seed: int,
    draw_seed: int,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple]]:
    """Tokens, per-sequence NFE and, per step, (rows, features, confidence, draws) at eligible positions."""
    sampling = _Sampling(policy, torch.Generator().manual_seed(draw_seed))
    steps_used = torch.zeros(num)
    records: list[tuple] = []

    def hook(step: StepRecord) -> None:
        rows, cols = step.ctx.eligible.nonzero(as_tuple=True)
        steps_used[step.rows.cpu()] += step.ctx.eligible.any(1).float().cpu()
        feats = token_features(step.stats, step.ctx, policy.vocab_size)[rows, cols]
        draws, sampling.draws = sampling.draws[rows, cols], None
        records.append(
            (
                step.rows.to(rows.device)[rows],
                feats.cpu(),
                step.stats.confidence[rows, cols].float().cpu(),
                draws.float().cpu(),
            )
        )

    out = Sampler(schedule, sampling).generate(
        model, num, seq_len, steps, seed=seed, batch_size=batch_size, on_step=hook
    )
    return out.tokens, steps_used, records


def grpo_finetune(
    model: nn.Module,
    head: PolicyHead,
    policy: LearnedPolicy,
    schedule: Schedule,
    chain: Any,
    seq_len: int,
    steps: int,
    cfg: GRPOConfig,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[PolicyHead, list[dict[str, float]]]:
    """Fine-tune a copy of `head`; returns it and the per-iteration mean reward and KL."""
    head = copy.deepcopy(head).train()
    optimiser = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    target_nll = chain.expected_nll(seq_len) / seq_len
    history = []
    for it in range(cfg.iterations):
        current = LearnedPolicy(head.eval(), policy.vocab_size, policy.threshold, policy.fallback)
        groups = []
        for g in range(cfg.group):
            with torch.no_grad():
                groups.append(
                    _rollouts(
                        model,
                        schedule,
                        current,
                        cfg.prompts,
                        seq_len,
                        steps,
                        seed=seed * 10_007 + it,
                        draw_seed=(seed + 1) * 7_919 + it * cfg.group + g,
                        batch_size=batch_size,
                    )
                )
        rewards = torch.stack(
            [
                torch.exp(-(chain.nll(tokens).float() / seq_len - target_nll)) * steps / used.clamp_min(1)
                for tokens, used, _ in groups
            ]
        )  # [group, prompts]
        advantage = (rewards - rewards.mean(0)) / (rewards.std(0) + 1e-6)
        head.train()
        loss = torch.zeros(())
        kl_total, count = torch.zeros(()), 0
        for g, (_, _, records) in enumerate(groups):
            for rows, feats, confidence, draws in records:
                logits = head(feats) - policy.logit_threshold
                logp = -F.binary_cross_entropy_with_logits(logits, draws, reduction="none")
                loss = loss - (advantage[g, rows] * logp).sum()
                p = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
                q = torch.sigmoid((confidence - policy.threshold) / cfg.heuristic_temperature).clamp(
                    1e-6, 1 - 1e-6
                )
                kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
                kl_total = kl_total + kl.sum()
                count += len(rows)
        loss = (loss + cfg.kl_weight * kl_total) / max(count, 1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(
            {"iteration": it, "reward": float(rewards.mean()), "kl": float(kl_total.detach()) / max(count, 1)}
        )
        if not math.isfinite(float(loss.detach())):
            break
    return head.eval(), history


@torch.no_grad()
def deployed_reward(
    model: nn.Module,
    schedule: Schedule,
    policy: LearnedPolicy,
    chain: Any,
    seq_len: int,
    steps: int,
    num: int,
    seed: int,
    batch_size: int = 64,
) -> float:
    """Mean reward of the deterministic (deployed) policy on seeds `seed`: quality x speed as in training."""
    used = torch.zeros(num)

    def hook(step: StepRecord) -> None:
        used[step.rows.cpu()] += step.ctx.eligible.any(1).float().cpu()

    out = Sampler(schedule, policy).generate(
        model, num, seq_len, steps, seed=seed, batch_size=batch_size, on_step=hook
    )
    quality = torch.exp(-(chain.nll(out.tokens).float() / seq_len - chain.expected_nll(seq_len) / seq_len))
    return float((quality * steps / used.clamp_min(1)).mean())
