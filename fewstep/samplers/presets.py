"""Named samplers: a policy, a schedule and the reference's conventions by name; learned parts from the
model directory.

The presets named after a method follow its public `generate` at temperature 0 token for token
(tests/test_reference_samplers.py holds transcriptions of each): `llada` (LLaDA's `generate`: top-k
by the sampled token's probability under softmax(logits), LLaDA's even split of counts per block),
`fast-dllm` (Fast-dLLM's `get_transfer_index` with a threshold: every token at or above it, at least
the best one, the step budget a cap), `dream` (Dream's `_sample` with alg="entropy": its counts on its
time grid, statistics at the sampling temperature). Blocks start where the prompt ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewstep.errors import RunError
from fewstep.samplers.names import PRESETS
from fewstep.samplers.policies import POLICY_NAMES, Policy, make_policy
from fewstep.samplers.policy_head import LearnedPolicy
from fewstep.samplers.sampler import SampleOutput, Sampler
from fewstep.samplers.scheduler_config import load_learned
from fewstep.samplers.schedules import SCHEDULE_NAMES, Schedule, make_step_schedule

__all__ = [
    "PRESETS",
    "SPEC_OPTIONS",
    "build_sampler",
    "parse_spec",
    "sampler_from_spec",
    "sample_with_spec",
    "spec_is_learned",
    "spec_schedule",
]

# what a spec's ":key=value,..." suffix may set, and its type
SPEC_OPTIONS = {"block": int, "threshold": float, "gamma": float, "confidence": str, "stats": str, "ties": str}


def build_sampler(
    sampler: str = "ancestral",
    policy: str | None = None,
    schedule: str | None = None,
    steps: int = 16,
    meta: dict[str, Any] | None = None,
    model_dir: str | Path | None = None,
    threshold: float | None = None,
    gamma: float = 0.1,
    fallback: str | None = None,
    block_size: int | None = None,
    temperature: float = 1.0,
    confidence: str = "sampled",
    stats_at: str | None = None,
    tiebreak: str | None = None,
) -> Sampler:
    """A preset, with `policy` / `schedule` / `stats_at` / `tiebreak` overriding its parts; `learned`
    parts need `model_dir`. `threshold` (default 0.9) is the threshold and EB rules'; given for a learned
    head, it replaces the one the head was learned with (a speed/accuracy knob, as Fast-dLLM's is)."""
    if sampler not in PRESETS:
        raise RunError(f"unknown sampler {sampler!r}; choose one of {', '.join(PRESETS)}")
    policy_name, schedule_name, preset_stats, preset_ties = PRESETS[sampler]
    policy_name, schedule_name = policy or policy_name, schedule or schedule_name
    if policy_name not in POLICY_NAMES:
        raise RunError(f"unknown policy {policy_name!r}; choose one of {', '.join(POLICY_NAMES)}")
    if schedule_name not in (*SCHEDULE_NAMES, "learned"):
        raise RunError(
            f"unknown schedule {schedule_name!r}; choose one of {', '.join(SCHEDULE_NAMES)}, learned"
        )
    meta = meta or {}
    learned_schedule: Schedule | None = None
    learned_policy: Policy | None = None
    if "learned" in (policy_name, schedule_name):
        if model_dir is None:
            raise RunError("a learned policy or schedule is read from a model directory; pass one")
        learned_schedule, learned_policy, content = load_learned(Path(model_dir), meta, steps)
        if block_size is None:  # the blocks it was learned with, unless the spec says otherwise
            block_size = content.get("block_size")
    if sampler == "learned" and policy is None and learned_policy is not None:
        chosen_policy = learned_policy  # what scheduler_config.json holds: a head, or the order it was learned with
    elif policy_name == "learned":
        if learned_policy is None or learned_policy.name != "learned":
            raise RunError(
                f"{model_dir} has no learned policy head for {steps} steps (its scheduler_config.json "
                "holds only an allocation); learn one with `fewstep schedule CONFIG what=policy`"
            )
        chosen_policy = learned_policy
    else:
        chosen_policy = make_policy(policy_name, threshold=0.9 if threshold is None else threshold, gamma=gamma,
                                    fallback=fallback, confidence=confidence)
    if threshold is not None and isinstance(chosen_policy, LearnedPolicy):
        chosen_policy = chosen_policy.with_threshold(threshold)
    if schedule_name == "learned":
        chosen_schedule = learned_schedule
    else:
        chosen_schedule = make_step_schedule(schedule_name, meta.get("noise_schedule", "loglinear"))
    return Sampler(chosen_schedule, chosen_policy, block_size=block_size, temperature=temperature,
                   stats_at=stats_at or preset_stats, tiebreak=tiebreak or preset_ties)


def parse_spec(spec: str) -> dict[str, Any]:
    """A sampler spec: a preset (`ancestral`, `dilated`, `llada`, `eb`, `learned`, ...) or
    `POLICY[+FALLBACK][/SCHEDULE]`, e.g. `eb+random/loglinear` or `dilated/geometric`, optionally with
    `:key=value,...` options (`block`, `threshold`, `gamma`, `confidence`, `stats`, `ties`), e.g.
    `fast-dllm:threshold=0.8,block=32`."""
    spec, _, suffix = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, suffix.split(",")):
        key, eq, value = item.partition("=")
        if key not in SPEC_OPTIONS or not eq:
            raise RunError(f"sampler spec option {item!r}: give key=value with a key among {', '.join(SPEC_OPTIONS)}")
        try:
            options[key] = SPEC_OPTIONS[key](value)
        except ValueError:
            raise RunError(f"sampler spec option {item!r}: {value!r} is not a {SPEC_OPTIONS[key].__name__}") from None
    if spec in PRESETS:
        return {"sampler": spec, "policy": None, "fallback": None, "schedule": None, "options": options}
    policy, _, schedule = spec.partition("/")
    policy, _, fallback = policy.partition("+")
    return {"sampler": "ancestral", "policy": policy, "fallback": fallback or None, "schedule": schedule or None,
            "options": options}


def sampler_from_spec(
    spec: str,
    steps: int,
    meta: dict[str, Any] | None = None,
    model_dir: str | Path | None = None,
    temperature: float = 1.0,
) -> Sampler:
    """The sampler a spec names (see `parse_spec`); the schedule defaults to the preset's, else loglinear."""
    parts = parse_spec(spec)
    schedule = parts["schedule"] or (None if parts["policy"] is None else "loglinear")
    options = parts["options"]
    custom = parts["policy"] is not None  # a policy/schedule spec takes the plain conventions
    return build_sampler(parts["sampler"], policy=parts["policy"], schedule=schedule, steps=steps, meta=meta,
                         model_dir=model_dir, fallback=parts["fallback"], temperature=temperature,
                         block_size=options.get("block"), threshold=options.get("threshold"),
                         gamma=options.get("gamma", 0.1), confidence=options.get("confidence", "sampled"),
                         stats_at=options.get("stats", "sample" if custom else None),
                         tiebreak=options.get("ties", "random" if custom else None))


def spec_schedule(spec: str) -> str:
    """The name of the schedule a spec uses."""
    parts = parse_spec(spec)
    return parts["schedule"] or (PRESETS[parts["sampler"]][1] if parts["policy"] is None else "loglinear")


def spec_is_learned(spec: str) -> bool:
    """Whether a spec reads a learned policy or schedule from the model directory."""
    parts = parse_spec(spec)
    return "learned" in (parts["sampler"], parts["policy"], parts["schedule"])


def sample_with_spec(
    spec: str,
    model: torch.nn.Module,
    num_samples: int,
    seq_len: int,
    steps: int,
    seed: int = 0,
    noise_schedule: str = "loglinear",
    meta: dict[str, Any] | None = None,
    model_dir: str | Path | None = None,
    temperature: float = 1.0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    prompt: Any = None,
    sample_ids: Any = None,
) -> SampleOutput:
    """Sample with the sampler a spec names (`ancestral`: MDLM's sampler under `noise_schedule`);
    `prompt` and `sample_ids` as in `Sampler.generate`."""
    meta = {"noise_schedule": noise_schedule, **(meta or {})}
    sampler = sampler_from_spec(spec, steps, meta, model_dir, temperature)
    return sampler.generate(model, num_samples, seq_len, steps, prompt=prompt, seed=seed, batch_size=batch_size,
                            device=device, sample_ids=sample_ids)
