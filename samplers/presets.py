"""Named samplers: a policy and a schedule by name, the learned parts loaded from the model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewstep.distill.runtime import RunError
from fewstep.samplers.ancestral import SampleOutput, ancestral_sample
from fewstep.samplers.policies import POLICY_NAMES, Policy, make_policy
from fewstep.samplers.sampler import Sampler
from fewstep.samplers.scheduler_config import load_learned
from fewstep.samplers.schedules import SCHEDULE_NAMES, Schedule, make_step_schedule

__all__ = [
    "PRESETS",
    "build_sampler",
    "parse_spec",
    "sampler_from_spec",
    "sample_with_spec",
    "spec_is_learned",
    "spec_schedule",
]

# preset -> (policy, schedule)
PRESETS: dict[str, tuple[str, str]] = {
    "ancestral": ("random", "ancestral"),  # MDLM
    "dilated": ("dilated", "loglinear"),  # far-apart tokens first (DUS)
    "llada": ("confidence", "loglinear"),  # low-confidence remasking
    "dream": ("entropy", "loglinear"),
    "fast-dllm": ("threshold", "loglinear"),
    "eb": ("eb", "loglinear"),
    "learned": ("learned", "learned"),  # both from scheduler_config.json (its policy: a head or a heuristic)
}


def build_sampler(
    sampler: str = "ancestral",
    policy: str | None = None,
    schedule: str | None = None,
    steps: int = 16,
    meta: dict[str, Any] | None = None,
    model_dir: str | Path | None = None,
    threshold: float = 0.9,
    gamma: float = 0.1,
    fallback: str | None = None,
    block_size: int | None = None,
    temperature: float = 1.0,
) -> Sampler:
    """A preset, with `policy` / `schedule` overriding its parts; `learned` parts need `model_dir`."""
    if sampler not in PRESETS:
        raise RunError(f"unknown sampler {sampler!r}; choose one of {', '.join(PRESETS)}")
    policy_name, schedule_name = PRESETS[sampler]
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
        learned_schedule, learned_policy, _ = load_learned(Path(model_dir), meta, steps)
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
        chosen_policy = make_policy(policy_name, threshold=threshold, gamma=gamma, fallback=fallback)
    if schedule_name == "learned":
        chosen_schedule = learned_schedule
    else:
        chosen_schedule = make_step_schedule(schedule_name, meta.get("noise_schedule", "loglinear"))
    return Sampler(chosen_schedule, chosen_policy, block_size=block_size, temperature=temperature)


def parse_spec(spec: str) -> dict[str, str | None]:
    """A sampler spec: a preset (`ancestral`, `dilated`, `llada`, `eb`, `learned`, ...) or
    `POLICY[+FALLBACK][/SCHEDULE]`, e.g. `eb+random/loglinear` or `dilated/geometric`."""
    if spec in PRESETS:
        return {"sampler": spec, "policy": None, "fallback": None, "schedule": None}
    policy, _, schedule = spec.partition("/")
    policy, _, fallback = policy.partition("+")
    return {"sampler": "ancestral", "policy": policy, "fallback": fallback or None, "schedule": schedule or None}


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
    return build_sampler(parts["sampler"], policy=parts["policy"], schedule=schedule, steps=steps, meta=meta,
                         model_dir=model_dir, fallback=parts["fallback"], temperature=temperature)


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
) -> SampleOutput:
    """Sample with the sampler a spec names. `ancestral` is the MDLM reference sampler itself
    (`ancestral_sample`, token-for-token, under `noise_schedule`); other specs go through `Sampler`."""
    if spec == "ancestral":
        return ancestral_sample(model, num_samples, seq_len, steps, model.mask_id, schedule=noise_schedule,
                                seed=seed, batch_size=batch_size, temperature=temperature, device=device)
    meta = {"noise_schedule": noise_schedule, **(meta or {})}
    sampler = sampler_from_spec(spec, steps, meta, model_dir, temperature)
    return sampler.generate(model, num_samples, seq_len, steps, seed=seed, batch_size=batch_size, device=device)
