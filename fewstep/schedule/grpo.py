"""Policy-gradient fine-tuning of the policy head (GRPO): reward quality x speed, stay near the heuristic.

During training the head's finalise decisions are Bernoulli draws, p = sigmoid(logit - logit(threshold)),
so the deployed rule (finalise when p > 1/2) is the mode of the trained policy. Each group shares
its sequences' model noise (and prompts) and differs only in those draws; a rollout's advantage is its
reward minus the group mean, over the group's spread. Reward: quality x (budget / the sequence's NFE),
where quality is exp(-(NLL/token - data NLL/token)) on `markov` (exact NLL, `ChainReward`) and
1 for a right answer, 0 for a wrong one on a prompted task (`AccuracyReward`). A KL term keeps the
decisions near the Fast-dLLM rule (finalise when top-1 probability > threshold, smoothed).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.samplers.policy_head import LearnedPolicy, PolicyHead, token_features
from fewstep.samplers.sampler import Sampler, StepRecord
from fewstep.samplers.schedules import Schedule
from fewstep.schedule.config import GRPOConfig
from fewstep.schedule.objective import PromptSet

__all__ = [
    "AccuracyReward",
    "ChainReward",
    "grpo_finetune",
    "deployed_reward",
]

Judge = Callable[[torch.Tensor], torch.Tensor]  # generated rows [N, L] -> quality [N] in [0, 1]


class ChainReward:
    """Unconditional samples of a `markov` model, judged by exp(-(exact NLL/token - the chain's NLL/token))."""

    def __init__(self, chain: Any, seq_len: int) -> None:
        self.chain = chain
        self.seq_len = seq_len
        self.target = chain.expected_nll(seq_len) / seq_len

    def batch(self, num: int, offset: int) -> tuple[None, Judge]:
        """No prompt; the judge of `num` samples."""
        return None, lambda tokens: torch.exp(-(self.chain.nll(tokens).float() / self.seq_len - self.target))


class AccuracyReward:
    """Answers to a prompt set's prompts, taken in turn from `offset`: 1 if right, else 0."""

    def __init__(self, prompts: PromptSet) -> None:
        self.prompts = prompts

    def batch(self, num: int, offset: int) -> tuple[list[torch.Tensor], Judge]:
        chosen = self.prompts.cycle(offset, num)
        return chosen.prompt_list(), chosen.correct


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
    prompt: Any = None,
    temperature: float = 1.0,
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

    out = Sampler(schedule, sampling, temperature=temperature).generate(
        model, num, seq_len, steps, prompt=prompt, seed=seed, batch_size=batch_size, on_step=hook
    )
    return out.tokens, steps_used, records


def grpo_finetune(
    model: nn.Module,
    head: PolicyHead,
    policy: LearnedPolicy,
    schedule: Schedule,
    reward: ChainReward | AccuracyReward,
    seq_len: int,
    steps: int,
    cfg: GRPOConfig,
    seed: int = 0,
    batch_size: int = 64,
    temperature: float = 1.0,
) -> tuple[PolicyHead, list[dict[str, float]]]:
    """Fine-tune a copy of `head`; returns it and the per-iteration mean reward and KL."""
    head = copy.deepcopy(head).train()
    optimiser = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    history = []
    for it in range(cfg.iterations):
        current = LearnedPolicy(head.eval(), policy.vocab_size, policy.threshold, policy.fallback)
        prompt, judge = reward.batch(cfg.prompts, it * cfg.prompts)
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
                        prompt=prompt,
                        temperature=temperature,
                    )
                )
        rewards = torch.stack(
            [judge(tokens) * steps / used.clamp_min(1) for tokens, used, _ in groups]
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
    reward: ChainReward | AccuracyReward,
    seq_len: int,
    steps: int,
    num: int,
    seed: int,
    batch_size: int = 64,
    temperature: float = 1.0,
) -> float:
    """Mean reward of the deterministic (deployed) policy on seeds `seed` (and `reward`'s first `num`
    prompts): quality x speed as in training."""
    used = torch.zeros(num)

    def hook(step: StepRecord) -> None:
        used[step.rows.cpu()] += step.ctx.eligible.any(1).float().cpu()

    prompt, judge = reward.batch(num, 0)
    out = Sampler(schedule, policy, temperature=temperature).generate(
        model, num, seq_len, steps, prompt=prompt, seed=seed, batch_size=batch_size, on_step=hook
    )
    return float((judge(out.tokens) * steps / used.clamp_min(1)).mean())
