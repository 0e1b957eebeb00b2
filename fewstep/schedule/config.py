"""`fewstep schedule`'s run config: which model, how many steps, what to learn (an allocation of tokens
to steps, a policy head, or both) and each learner's settings (`allocation`, `policy`, `policy.grpo`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fewstep.core.config import MISSING
from fewstep.errors import ConfigError


@dataclass
class GRPOConfig:
    """Policy-gradient settings; iterations=0 skips the stage."""

    iterations: int = 0
    prompts: int = 16  # sequences per iteration, each rolled out `group` times
    group: int = 4
    lr: float = 0.003
    kl_weight: float = 0.1  # weight of KL(head || smoothed threshold rule)
    heuristic_temperature: float = 0.05  # smoothing of the threshold rule, in probability units


@dataclass
class AllocationSearchConfig:
    """The direct search over per-step token counts."""

    policy: str = "auto"  # policy the allocation is searched with: auto (the learned head if what=both, else
    # confidence), learned, or a heuristic (random, dilated, confidence, margin, entropy, threshold, eb)
    num_samples: int = 128  # samples per evaluation (same seeds for every candidate)
    iterations: int = 60  # candidate moves after the starting curves
    patience: int = 0  # distinct failed moves in a row before the move size halves (0: every possible move)
    heldout_samples: int = 256  # samples (other seeds) for the final check against the starting curve
    entropy_weight: float = 1.0  # penalty per nat of unigram entropy below the held-out data's

    def __post_init__(self) -> None:
        choices = ("auto", "learned", "random", "dilated", "confidence", "margin", "entropy", "threshold", "eb")
        if self.policy not in choices:
            raise ConfigError(f"allocation.policy={self.policy!r} is not one of {', '.join(choices)}")
        if self.num_samples < 1 or self.heldout_samples < 1 or self.iterations < 0 or self.patience < 0:
            raise ConfigError(
                "allocation.num_samples and heldout_samples must be >= 1, iterations and patience >= 0"
            )


@dataclass
class PolicyLearnConfig:
    """The policy head and its imitation training."""

    hidden: int = 16  # 0 = logistic regression; the head may hold at most 0.1% of the model's parameters
    threshold: float = 0.9  # finalise tokens the head rates above this probability
    rollouts: int = 64  # reference rollouts for training
    heldout_rollouts: int = 32  # reference rollouts (other seeds) for the recorded accuracy
    rollout_steps: int = 0  # steps of a reference rollout; 0 = seq_len (one token per step)
    rollout_policy: str = "confidence"  # confidence | margin | entropy
    schedule: str = "loglinear"  # the step schedule a what=policy run saves with the head: loglinear (the head
    # fills the noise curve's per-step counts), or cap (the head alone decides how many, at least one per step, the
    # budget a cap: Fast-dLLM's threshold decoding with the head in place of the threshold rule)
    fallback: str = "auto"  # order that fills the schedule's count beyond the head's picks: auto (the best of
    # random, dilated, confidence, margin and the head's own order on validation quality), none, or a heuristic
    updates: int = 1000  # Adam steps on mini-batches of 4096 examples
    lr: float = 0.01
    max_examples: int = 200_000
    grpo: GRPOConfig = field(
        default_factory=GRPOConfig
    )  # policy-gradient stage after imitation (markov: exact NLL reward; prompted models: accuracy)

    def __post_init__(self) -> None:
        if self.hidden < 0:
            raise ConfigError("policy.hidden must be >= 0 (0 = logistic regression)")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"policy.threshold must be in (0, 1), got {self.threshold}")
        if self.rollouts < 1 or self.heldout_rollouts < 1 or self.updates < 1 or self.rollout_steps < 0:
            raise ConfigError(
                "policy.rollouts, heldout_rollouts and updates must be >= 1, rollout_steps >= 0"
            )
        if self.fallback not in ("auto", "none", "random", "dilated", "confidence", "margin", "entropy"):
            raise ConfigError(
                f"policy.fallback={self.fallback!r} is not one of auto, none, random, dilated, confidence, "
                "margin, entropy"
            )
        if self.schedule not in ("loglinear", "cap"):
            raise ConfigError(f"policy.schedule={self.schedule!r} is not one of loglinear, cap")
        if self.rollout_policy not in ("confidence", "margin", "entropy"):
            raise ConfigError(
                f"policy.rollout_policy={self.rollout_policy!r} is not one of confidence, margin, entropy"
            )


@dataclass
class ScheduleRunConfig:
    """Learn how to unmask: `what` = allocation | policy | both, for `model` at a budget of `steps`."""

    model: str = MISSING  # a model directory or a run's out_dir holding model/
    steps: int = 16  # the step budget the schedule is learned for
    what: str = "both"  # allocation | policy | both
    seq_len: int = 0  # 0 = the model's
    batch_size: int = 64
    temperature: float = 1.0
    seed: int = 0
    device: str | None = None  # default: cuda when available
    trust_remote_code: bool = False  # let a model directory that ships its own modeling code run it
    progress: bool = True  # a progress bar over the search's evaluations
    allocation: AllocationSearchConfig = field(default_factory=AllocationSearchConfig)
    policy: PolicyLearnConfig = field(default_factory=PolicyLearnConfig)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if self.what not in ("allocation", "policy", "both"):
            raise ConfigError(f"what={self.what!r} is not one of allocation, policy, both")
        if self.seq_len < 0 or self.batch_size < 1:
            raise ConfigError("seq_len must be >= 0 and batch_size >= 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
