"""`fewstep schedule`: learn a step allocation and/or a policy head for a model and a step budget.

Writes `scheduler_config.json` (and `policy_head.safetensors`) into the model directory; they load
with the model (`fewstep sample --sampler learned`). A prompted model (its data has prompts) learns on
its training prompts, in disjoint windows (`PromptWindows`): the imitation rollouts answer some, and the
objective (search, held-out check) and GRPO's reward are task accuracy on others, not likelihood; the
validation prompts stay unseen for `fewstep bench`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fewstep.data.config import data_config
from fewstep.data.sources import build_data
from fewstep.data.tokens import TokenData
from fewstep.errors import ConfigError, OwnershipError, RunError
from fewstep.evaluation.quality import unigram_entropy
from fewstep.model.model_dir import load_model_dir
from fewstep.samplers.policies import Policy, make_policy
from fewstep.samplers.policy_head import LearnedPolicy, PolicyHead
from fewstep.samplers.sampler import Sampler
from fewstep.samplers.scheduler_config import save_scheduler_config
from fewstep.samplers.schedules import AllocationSchedule, Schedule, make_step_schedule
from fewstep.schedule.allocation import START_CURVES, AllocationResult, search_allocation
from fewstep.schedule.config import ScheduleRunConfig
from fewstep.schedule.grpo import AccuracyReward, ChainReward, deployed_reward, grpo_finetune
from fewstep.schedule.imitation import head_accuracy, imitation_data, train_head
from fewstep.schedule.objective import PromptSet, SampleObjective
from fewstep.training.runtime import check_device

__all__ = [
    "run_schedule_config",
]


def _model_data(meta: dict[str, Any], model_dir: Path) -> TokenData | None:
    """The model's own data (validation split, and the training prompts of a prompted model), where it
    can be had."""

    data = dict(meta.get("data") or {})
    if not data:
        return None
    if data.get("source") == "markov":
        data["num_train"] = 1  # only the validation split is needed; its seed does not depend on num_train
    elif data.get("source") != "anagram":
        data["tokenizer"] = str(model_dir / "tokenizer.json")
    try:
        return build_data(data_config(data))
    except Exception as error:  # a corpus that is not here: fall back to no held-out data
        print(f"note: held-out data unavailable ({str(error).splitlines()[0][:200]}); no entropy reference")
        return None


def run_schedule_config(cfg: ScheduleRunConfig) -> dict[str, Any]:
    """Learn what `cfg.what` asks for and write it into the model directory; returns the report."""

    began = time.perf_counter()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device, "device")
    loaded = load_model_dir(cfg.model, device=device, trust_remote_code=cfg.trust_remote_code)
    meta, model_dir = loaded.meta, Path(loaded.path)
    _check_writable(model_dir)
    seq_len = cfg.seq_len or int(meta.get("seq_len", 64))
    data = _model_data(meta, model_dir)
    prompts = PromptSet.of(data) if data is not None else None
    chain = data.task if data is not None and (meta.get("data") or {}).get("source") == "markov" else None
    schedule, policy, report = learn_schedule(
        loaded.denoiser,
        cfg,
        seq_len,
        int(meta["vocab_size"]),
        chain,
        None if data is None or prompts is not None else data.val,
        meta.get("noise_schedule", "loglinear"),
        prompts=prompts,
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
    prompts: PromptSet | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Learn the allocation and/or policy head for `model` (any denoiser, the markov oracle included);
    with `prompts` (a prompted model's training prompts), on them and for task accuracy."""

    if cfg.steps > seq_len:
        raise RunError(
            f"steps={cfg.steps} is more than seq_len={seq_len} tokens; a budget above one token per "
            "step needs no schedule"
        )
    if cfg.what == "both" and cfg.policy.schedule == "cap":
        raise ConfigError("policy.schedule=cap leaves the count to the head; it goes with what=policy, not both "
                          "(an allocation is a schedule of its own)")
    report: dict[str, Any] = {"what": cfg.what, "seq_len": seq_len, "seed": cfg.seed}
    search_with = _search_policy(cfg)
    policy: Policy = make_policy(search_with if search_with != "learned" else "confidence")
    schedule: Schedule = make_step_schedule(cfg.policy.schedule)
    reference = unigram_entropy(val) if val is not None else None
    objective = SampleObjective(
        chain=chain,
        model=model if chain is None else None,
        reference_entropy=reference,
        entropy_weight=cfg.allocation.entropy_weight,
        noise_schedule=noise_schedule,
    )
    windows = None if prompts is None else PromptWindows(prompts, cfg)
    quality = _Quality(model, objective, cfg, seq_len, windows)
    if prompts is not None:
        report["objective"] = "accuracy"

    if cfg.what in ("policy", "both"):
        policy, report["policy"] = _learn_policy(model, cfg, seq_len, vocab_size, schedule, chain, quality,
                                                 windows)
        policy_for_search = make_policy(search_with) if search_with != "learned" else policy
    else:
        if search_with == "learned":
            raise ConfigError(
                "allocation.policy=learned needs what=both (the head is learned in the same run)"
            )
        policy_for_search = policy

    if cfg.what in ("allocation", "both"):
        # the tokens to allocate: the longest response of a prompted model, else the whole sequence
        tokens = seq_len if prompts is None else seq_len - int(prompts.prompt_len.min())
        schedule, report["allocation"] = _learn_allocation(cfg, tokens, policy_for_search, quality, reference)
        if cfg.what == "allocation":
            policy = policy_for_search
    return schedule, policy, report


def _search_policy(cfg: ScheduleRunConfig) -> str:
    """The policy the allocation is searched with: `auto` is the learned head with what=both, else confidence."""
    if cfg.allocation.policy == "auto":
        return "learned" if cfg.what == "both" else "confidence"
    return cfg.allocation.policy


class PromptWindows:
    """Disjoint windows of a prompted model's training prompts, one per use, in this order: the imitation
    rollouts (policy.rollouts), their held-out set (policy.heldout_rollouts), the objective's search samples
    (allocation.num_samples) and its held-out check (allocation.heldout_samples, also GRPO's); GRPO's
    training rollouts cycle through the prompts after those (`rest`)."""

    def __init__(self, prompts: PromptSet, cfg: ScheduleRunConfig) -> None:
        self.all = prompts
        sizes = {"imitation": cfg.policy.rollouts, "imitation_heldout": cfg.policy.heldout_rollouts,
                 "search": cfg.allocation.num_samples, "heldout": cfg.allocation.heldout_samples}
        self.windows, start = {}, 0
        for name, size in sizes.items():
            self.windows[name] = (start, size)
            start += size
        self.windows["rest"] = (start, len(prompts) - start)
        if len(prompts) <= start:
            raise ConfigError(f"the schedule's windows of training prompts take {start} of the {len(prompts)} "
                              "there are; lower policy.rollouts / allocation.num_samples or raise data.num_train")

    def __getitem__(self, name: str) -> PromptSet:
        start, size = self.windows[name]
        return self.all.window(start, size, f"the schedule's {name} prompts")


@dataclass
class _Quality:
    """The objective of `sampler`'s samples of `model` at the run's budget: (value, metrics, NFE per sequence).

    `split` "search" is the search's own samples (allocation.num_samples, the run's seed), "heldout" the
    final check's (allocation.heldout_samples, other seeds); on a prompted model, answers to those windows
    of its training prompts."""

    model: torch.nn.Module
    objective: SampleObjective
    cfg: ScheduleRunConfig
    seq_len: int
    prompts: PromptWindows | None = None

    def __call__(self, sampler: Sampler, split: str = "search") -> tuple[float, dict[str, float], float]:
        num, seed = (self.cfg.allocation.num_samples, self.cfg.seed) if split == "search" else (
            self.cfg.allocation.heldout_samples, self.cfg.seed + 104_729)
        if self.prompts is not None:
            result = self.prompts[split].accuracy(self.model, sampler, self.cfg.steps, self.seq_len, seed,
                                                  self.cfg.batch_size)
            metrics = {"accuracy": result.accuracy, "tokens_per_forward": result.tokens_per_forward}
            return 1.0 - result.accuracy, metrics, result.nfe
        out = sampler.generate(self.model, num, self.seq_len, self.cfg.steps, seed=seed,
                               batch_size=self.cfg.batch_size)
        metrics = self.objective.metrics(out.tokens)
        return self.objective.value(metrics), metrics, out.nfe_per_sequence

    @property
    def name(self) -> str:
        return "accuracy" if self.prompts is not None else self.objective.name


def _learn_policy(
    model: torch.nn.Module,
    cfg: ScheduleRunConfig,
    seq_len: int,
    vocab_size: int,
    schedule: Schedule,
    chain: Any,
    quality: _Quality,
    prompts: PromptWindows | None = None,
) -> tuple[Policy, dict[str, Any]]:
    """A policy head by imitation of reference rollouts, its fallback order, then GRPO where asked."""
    model_params = _check_head_size(model, cfg.policy.hidden)
    rollout_steps = cfg.policy.rollout_steps or seq_len
    train, heldout = _imitation_sets(model, cfg, seq_len, vocab_size, rollout_steps, prompts)
    head = train_head(train, cfg.policy.hidden, cfg.policy.updates, cfg.policy.lr, seed=cfg.seed)
    chosen, tried = _choose_fallback(head, vocab_size, cfg, schedule, quality)
    policy = LearnedPolicy(
        head, vocab_size, cfg.policy.threshold, None if chosen == "none" else make_policy(chosen)
    )
    grpo_report = None
    if cfg.policy.grpo.iterations > 0:
        policy, grpo_report = _grpo_stage(model, policy, schedule, chain, seq_len, cfg, prompts)
    report = {
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
    held = report["heldout"]
    print(
        f"policy head: {head.num_parameters()} parameters; held-out imitation accuracy "
        f"{held['accuracy']:.3f} (majority class {held['majority_baseline']:.3f}, top-1 > 0.5 rule "
        f"{held['confidence_rule']:.3f}); "
        f"fallback order {chosen}"
    )
    return policy, report


def _check_head_size(model: torch.nn.Module, hidden: int) -> int:
    """Refuse a head above 0.1% of the model's parameters; returns the model's parameter count."""
    head_params = PolicyHead(hidden).num_parameters()
    model_params = sum(p.numel() for p in model.parameters())
    if model_params and head_params > 0.001 * model_params:
        raise ConfigError(
            f"a policy head with hidden={hidden} has {head_params} parameters, more than "
            f"0.1% of the model's {model_params}; lower policy.hidden (0 = logistic regression)"
        )
    return model_params


def _imitation_sets(
    model: torch.nn.Module, cfg: ScheduleRunConfig, seq_len: int, vocab_size: int, rollout_steps: int,
    prompts: PromptWindows | None = None,
) -> tuple[Any, Any]:
    """The head's training and held-out examples, from reference rollouts of the model (other seeds; on a
    prompted model, answers to their windows of the training prompts)."""
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
    if prompts is not None:
        rollouts, held = cfg.policy.rollouts, cfg.policy.heldout_rollouts
        return (imitation_data(model, rollouts, seq_len, seed=cfg.seed, prompt=prompts["imitation"].prompt_list(),
                               **kwargs),
                imitation_data(model, held, seq_len, seed=cfg.seed + 7919,
                               prompt=prompts["imitation_heldout"].prompt_list(), **kwargs))
    train = imitation_data(model, cfg.policy.rollouts, seq_len, seed=cfg.seed, **kwargs)
    heldout = imitation_data(model, cfg.policy.heldout_rollouts, seq_len, seed=cfg.seed + 7919, **kwargs)
    return train, heldout


def _choose_fallback(
    head: PolicyHead, vocab_size: int, cfg: ScheduleRunConfig, schedule: Schedule, quality: _Quality
) -> tuple[str, dict[str, float]]:
    """The order that fills a step beyond the head's picks: `auto` tries each and keeps the best objective."""
    fallbacks = (
        ["none", "random", "dilated", "confidence", "margin"]
        if cfg.policy.fallback == "auto"
        else [cfg.policy.fallback]
    )
    tried = {}
    if len(fallbacks) > 1:
        for name in fallbacks:
            candidate = LearnedPolicy(
                head, vocab_size, cfg.policy.threshold, None if name == "none" else make_policy(name)
            )
            tried[name] = quality(Sampler(schedule, candidate, temperature=cfg.temperature))[0]
    chosen = min(tried, key=tried.get) if tried else fallbacks[0]
    return chosen, tried


def _learn_allocation(
    cfg: ScheduleRunConfig, seq_len: int, policy: Policy, quality: _Quality, reference: float | None
) -> tuple[AllocationSchedule, dict[str, Any]]:
    """Search per-step token counts with `policy`; keep them only if they beat the start curve on held-out seeds."""

    def measure(counts: list[int], split: str) -> tuple[float, dict[str, float], float]:
        return quality(Sampler(AllocationSchedule.from_counts(counts), policy, temperature=cfg.temperature), split)

    result = _search(cfg, seq_len, lambda counts: measure(counts, "search")[0])
    start_value, start_metrics, start_nfe = measure(result.start_counts, "heldout")
    best_value, best_metrics, best_nfe = measure(result.counts, "heldout")
    improved = best_value < start_value
    kept = result.counts if improved else result.start_counts
    name = quality.name
    report = {
        "objective": name,
        "policy": policy.name,
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
        f"allocation ({name}, policy {policy.name}): held-out objective "
        f"{start_value:.4f} ({result.start}) -> {best_value:.4f} (searched); kept "
        f"{'searched' if improved else result.start} "
        f"counts {kept}"
    )
    return AllocationSchedule.from_counts(kept), report


def _search(cfg: ScheduleRunConfig, seq_len: int, value: Callable[[list[int]], float]) -> AllocationResult:
    """`search_allocation` over `value` (the search seeds' objective of some counts), with a progress bar."""
    bar = tqdm(
        total=len(START_CURVES) + cfg.allocation.iterations,
        desc=f"allocation search ({cfg.steps} steps)",
        disable=not cfg.progress,
    )
    best = float("inf")

    def evaluate(counts: list[int]) -> float:
        nonlocal best
        result = value(counts)
        best = min(best, result)
        bar.update()
        bar.set_postfix(best=f"{best:.4f}")
        return result

    try:
        return search_allocation(
            evaluate, cfg.steps, seq_len, cfg.allocation.iterations, cfg.allocation.patience, seed=cfg.seed
        )
    finally:
        bar.close()


def _grpo_stage(
    model: torch.nn.Module, policy: Any, schedule: Any, chain: Any, seq_len: int, cfg: ScheduleRunConfig,
    prompts: PromptWindows | None = None,
) -> tuple[Any, dict[str, Any]]:
    """GRPO after imitation; the fine-tuned head is kept only if its held-out reward is higher.

    The reward's quality: the exact NLL on markov, accuracy on a prompted model (its training prompts in
    turn, and the held-out window for the check)."""

    held = cfg.allocation.heldout_samples
    if prompts is not None:
        reward, held_reward = AccuracyReward(prompts["rest"]), AccuracyReward(prompts["heldout"])
    elif chain is not None:
        reward = held_reward = ChainReward(chain, seq_len)
    else:
        raise ConfigError(
            "policy.grpo needs an exact reward: a markov model's chain or a prompted model's answers (set "
            "policy.grpo.iterations=0)"
        )
    head, history = grpo_finetune(
        model,
        policy.head,
        policy,
        schedule,
        reward,
        seq_len,
        cfg.steps,
        cfg.policy.grpo,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        temperature=cfg.temperature,
    )
    tuned = LearnedPolicy(head, policy.vocab_size, policy.threshold, policy.fallback)
    args = (held_reward, seq_len, cfg.steps, held, cfg.seed + 15_485_863, cfg.batch_size, cfg.temperature)
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
