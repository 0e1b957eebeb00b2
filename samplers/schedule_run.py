"""`fewstep schedule`: learn a step allocation and/or a policy head for a model and a step budget.

Writes `scheduler_config.json` (and `policy_head.safetensors`) into the model directory; they load
with the model (`fewstep sample --sampler learned`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewstep.distill.config import MISSING, ConfigError, data_config
from fewstep.distill.io import OwnershipError
from fewstep.distill.runtime import RunError, check_device
from fewstep.samplers.grpo import GRPOConfig

__all__ = ["AllocationSearchConfig", "PolicyLearnConfig", "ScheduleRunConfig", "run_schedule_config"]


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
    fallback: str = "auto"  # order that fills the schedule's count beyond the head's picks: auto (the best of
    # random, dilated, confidence, margin and the head's own order on validation quality), none, or a heuristic
    updates: int = 1000  # Adam steps on mini-batches of 4096 examples
    lr: float = 0.01
    max_examples: int = 200_000
    grpo: GRPOConfig = field(
        default_factory=GRPOConfig
    )  # policy-gradient stage after imitation (markov only)

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


def _heldout(meta: dict[str, Any], model_dir: Path) -> tuple[Any, torch.Tensor | None]:
    """The exact scorer (markov) and held-out validation tokens of the model's data, where they can be had."""
    from fewstep.distill.data import build_data

    data = dict(meta.get("data") or {})
    if not data:
        return None, None
    if data.get("source") == "markov":
        data["num_train"] = 1  # only the validation split is needed; its seed does not depend on num_train
    else:
        data["tokenizer"] = str(model_dir / "tokenizer.json")
    try:
        built = build_data(data_config(data))
    except Exception as error:  # a corpus that is not here: fall back to no held-out data
        print(f"note: held-out data unavailable ({str(error).splitlines()[0][:200]}); no entropy reference")
        return None, None
    return built.task, built.val


def run_schedule_config(cfg: ScheduleRunConfig) -> dict[str, Any]:
    """Learn what `cfg.what` asks for and write it into the model directory; returns the report."""
    from fewstep.distill.model_dir import load_model_dir
    from fewstep.samplers.scheduler_config import save_scheduler_config

    began = time.perf_counter()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device, "device")
    loaded = load_model_dir(cfg.model, device=device, trust_remote_code=cfg.trust_remote_code)
    meta, model_dir = loaded.meta, Path(loaded.path)
    _check_writable(model_dir)
    seq_len = cfg.seq_len or int(meta.get("seq_len", 64))
    chain, val = _heldout(meta, model_dir)
    schedule, policy, report = learn_schedule(
        loaded.denoiser,
        cfg,
        seq_len,
        int(meta["vocab_size"]),
        chain,
        val,
        meta.get("noise_schedule", "loglinear"),
    )
    report["seconds"] = round(time.perf_counter() - began, 1)
    path = save_scheduler_config(model_dir, meta, cfg.steps, schedule, policy, report)
    print(f"wrote {path}")
    return report


def _check_writable(model_dir: Path) -> None:
    """The schedule is written into the model directory: it must be fewstep's (fewstep.json) and writable."""
    if not (model_dir / "fewstep.json").is_file():
        raise OwnershipError(f"{model_dir} is not a fewstep model directory (no fewstep.json); the schedule is "
                             "written only into one")
    if not os.access(model_dir, os.W_OK):
        raise OwnershipError(f"cannot write into {model_dir} (permission denied); copy the model with "
                             "`fewstep export` to a directory you own and learn the schedule there")


def learn_schedule(
    model: torch.nn.Module,
    cfg: ScheduleRunConfig,
    seq_len: int,
    vocab_size: int,
    chain: Any = None,
    val: torch.Tensor | None = None,
    noise_schedule: str = "loglinear",
) -> tuple[Any, Any, dict[str, Any]]:
    """Learn the allocation and/or policy head for `model` (any denoiser, the markov oracle included)."""
    from fewstep.distill.quality import unigram_entropy
    from fewstep.samplers.learn_allocation import START_CURVES, search_allocation
    from fewstep.samplers.learn_policy import head_accuracy, imitation_data, train_head
    from fewstep.samplers.objective import SampleObjective
    from fewstep.samplers.policies import Policy, make_policy
    from fewstep.samplers.policy_head import LearnedPolicy
    from fewstep.samplers.sampler import Sampler
    from fewstep.samplers.schedules import AllocationSchedule, NoiseCurveSchedule, Schedule

    if cfg.steps > seq_len:
        raise RunError(
            f"steps={cfg.steps} is more than seq_len={seq_len} tokens; a budget above one token per "
            "step needs no schedule"
        )
    report: dict[str, Any] = {"what": cfg.what, "seq_len": seq_len, "seed": cfg.seed}
    search_with = cfg.allocation.policy
    if search_with == "auto":
        search_with = "learned" if cfg.what == "both" else "confidence"
    base = search_with if search_with != "learned" else "confidence"
    policy: Policy = make_policy(base)
    schedule: Schedule = NoiseCurveSchedule("loglinear")
    reference = unigram_entropy(val) if val is not None else None
    objective = SampleObjective(
        chain=chain,
        model=model if chain is None else None,
        reference_entropy=reference,
        entropy_weight=cfg.allocation.entropy_weight,
        noise_schedule=noise_schedule,
    )

    def quality(sampler: Sampler, num: int, seed: int) -> tuple[float, dict[str, float], float]:
        out = sampler.generate(model, num, seq_len, cfg.steps, seed=seed, batch_size=cfg.batch_size)
        metrics = objective.metrics(out.tokens)
        return objective.value(metrics), metrics, out.nfe_per_sequence

    if cfg.what in ("policy", "both"):
        head_params = _head_size(cfg.policy.hidden)
        model_params = sum(p.numel() for p in model.parameters())
        if model_params and head_params > 0.001 * model_params:
            raise ConfigError(
                f"a policy head with hidden={cfg.policy.hidden} has {head_params} parameters, more than "
                f"0.1% of the model's {model_params}; lower policy.hidden (0 = logistic regression)"
            )
        rollout_steps = cfg.policy.rollout_steps or seq_len
        kwargs = dict(
            rollout_steps=rollout_steps,
            rollout_policy=cfg.policy.rollout_policy,
            vocab_size=vocab_size,
            batch_size=cfg.batch_size,
            max_examples=cfg.policy.max_examples,
            temperature=cfg.temperature,
        )
        print(
            f"policy head: {cfg.policy.rollouts} + {cfg.policy.heldout_rollouts} (held-out) reference rollouts "
            f"of {rollout_steps} steps ({cfg.policy.rollout_policy})",
            flush=True,
        )
        train = imitation_data(model, cfg.policy.rollouts, seq_len, seed=cfg.seed, **kwargs)
        heldout = imitation_data(model, cfg.policy.heldout_rollouts, seq_len, seed=cfg.seed + 7919, **kwargs)
        head = train_head(train, cfg.policy.hidden, cfg.policy.updates, cfg.policy.lr, seed=cfg.seed)
        fallbacks = (
            ["none", "random", "dilated", "confidence", "margin"]
            if cfg.policy.fallback == "auto"
            else [cfg.policy.fallback]
        )
        tried = {}
        for name in fallbacks:
            candidate = LearnedPolicy(
                head, vocab_size, cfg.policy.threshold, None if name == "none" else make_policy(name)
            )
            if len(fallbacks) > 1:
                tried[name] = quality(
                    Sampler(schedule, candidate, temperature=cfg.temperature),
                    cfg.allocation.num_samples,
                    cfg.seed,
                )[0]
        chosen = min(tried, key=tried.get) if tried else fallbacks[0]
        policy = LearnedPolicy(
            head, vocab_size, cfg.policy.threshold, None if chosen == "none" else make_policy(chosen)
        )
        grpo_report = None
        if cfg.policy.grpo.iterations > 0:
            policy, grpo_report = _grpo_stage(model, policy, schedule, chain, seq_len, cfg)
        report["policy"] = {
            "heldout": head_accuracy(head, heldout),
            "train": head_accuracy(head, train),
            "parameters": head.num_parameters(),
            "model_parameters": model_params,
            "rollout_steps": rollout_steps,
            "rollout_policy": cfg.policy.rollout_policy,
            "fallback": chosen,
            "fallback_objective": tried,
            "grpo": grpo_report,
        }
        held = report["policy"]["heldout"]
        print(
            f"policy head: {head.num_parameters()} parameters; held-out imitation accuracy "
            f"{held['accuracy']:.3f} (majority class {held['majority_baseline']:.3f}, top-1 > 0.5 rule "
            f"{held['confidence_rule']:.3f}); "
            f"fallback order {chosen}"
        )
        if search_with != "learned":
            policy_for_search: Policy = make_policy(search_with)
        else:
            policy_for_search = policy
    else:
        if search_with == "learned":
            raise ConfigError(
                "allocation.policy=learned needs what=both (the head is learned in the same run)"
            )
        policy_for_search = policy

    if cfg.what in ("allocation", "both"):

        def measure(counts: list[int], num: int, seed: int) -> tuple[float, dict[str, float], float]:
            return quality(
                Sampler(
                    AllocationSchedule.from_counts(counts), policy_for_search, temperature=cfg.temperature
                ),
                num,
                seed,
            )

        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(START_CURVES) + cfg.allocation.iterations,
            desc=f"allocation search ({cfg.steps} steps)",
            disable=not cfg.progress,
        )
        best = float("inf")

        def evaluate(counts: list[int]) -> float:
            nonlocal best
            value = measure(counts, cfg.allocation.num_samples, cfg.seed)[0]
            best = min(best, value)
            bar.update()
            bar.set_postfix(best=f"{best:.4f}")
            return value

        try:
            result = search_allocation(
                evaluate,
                cfg.steps,
                seq_len,
                cfg.allocation.iterations,
                cfg.allocation.patience,
                seed=cfg.seed,
            )
        finally:
            bar.close()
        held_seed = cfg.seed + 104_729
        start_value, start_metrics, start_nfe = measure(
            result.start_counts, cfg.allocation.heldout_samples, held_seed
        )
        best_value, best_metrics, best_nfe = measure(result.counts, cfg.allocation.heldout_samples, held_seed)
        improved = best_value < start_value
        kept = result.counts if improved else result.start_counts
        schedule = AllocationSchedule.from_counts(kept)
        report["allocation"] = {
            "objective": objective.name,
            "policy": policy_for_search.name,
            "counts": kept,
            "start": result.start,
            "start_counts": result.start_counts,
            "evaluations": result.evaluations,
            "search": {"start": result.start_value, "best": result.best_value},
            "heldout": {
                "start": {"value": start_value, **start_metrics, "nfe": start_nfe},
                "learned": {"value": best_value, **best_metrics, "nfe": best_nfe},
            },
            "improved_on_heldout": improved,
            "reference_entropy": reference,
        }
        print(
            f"allocation ({objective.name}, policy {policy_for_search.name}): held-out objective "
            f"{start_value:.4f} ({result.start}) -> {best_value:.4f} (searched); kept "
            f"{'searched' if improved else result.start} "
            f"counts {kept}"
        )
        if cfg.what == "allocation":
            policy = policy_for_search
    return schedule, policy, report


def _grpo_stage(
    model: torch.nn.Module, policy: Any, schedule: Any, chain: Any, seq_len: int, cfg: ScheduleRunConfig
) -> tuple[Any, dict[str, Any]]:
    """GRPO after imitation; the fine-tuned head is kept only if its held-out reward is higher."""
    from fewstep.samplers.grpo import deployed_reward, grpo_finetune
    from fewstep.samplers.policy_head import LearnedPolicy

    if chain is None:
        raise ConfigError(
            "policy.grpo needs an exact scorer for its reward; it runs on markov models only (set "
            "policy.grpo.iterations=0)"
        )
    head, history = grpo_finetune(
        model,
        policy.head,
        policy,
        schedule,
        chain,
        seq_len,
        cfg.steps,
        cfg.policy.grpo,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    tuned = LearnedPolicy(head, policy.vocab_size, policy.threshold, policy.fallback)
    args = (chain, seq_len, cfg.steps, cfg.allocation.heldout_samples, cfg.seed + 15_485_863, cfg.batch_size)
    before, after = (
        deployed_reward(model, schedule, policy, *args),
        deployed_reward(model, schedule, tuned, *args),
    )
    print(
        f"grpo: held-out reward (quality x speed) {before:.4f} (imitation) -> {after:.4f} (fine-tuned); kept "
        f"{'fine-tuned' if after > before else 'imitation'}"
    )
    report = {
        "history": history,
        "heldout_reward": {"imitation": before, "grpo": after},
        "kept": after > before,
    }
    return (tuned if after > before else policy), report


def _head_size(hidden: int) -> int:
    from fewstep.samplers.policy_head import PolicyHead

    return PolicyHead(hidden).num_parameters()
