"""The names a user picks a sampler by: its policies, schedules and presets (no torch here, so that
`fewstep sample --help` lists them in a fraction of a second)."""

from __future__ import annotations

__all__ = ["POLICY_NAMES", "SCHEDULE_NAMES", "PRESETS"]

# which tokens a step reveals (`fewstep.samplers.policies.make_policy`)
POLICY_NAMES = ("random", "dilated", "confidence", "top1", "margin", "entropy", "threshold", "eb", "learned")

# how many tokens each step reveals (`fewstep.samplers.schedules.make_step_schedule`)
SCHEDULE_NAMES = ("loglinear", "linear", "cosine", "geometric", "ancestral", "even", "dream", "cap")

# preset -> (policy, schedule, statistics at, tie-break) (`fewstep.samplers.presets.build_sampler`)
PRESETS: dict[str, tuple[str, str, str, str]] = {
    "ancestral": ("random", "ancestral", "sample", "random"),  # MDLM
    "dilated": ("dilated", "loglinear", "sample", "random"),  # far-apart tokens first (DUS)
    "llada": ("confidence", "even", "one", "first"),  # low-confidence remasking
    "dream": ("entropy", "dream", "sample", "first"),
    "fast-dllm": ("threshold", "cap", "one", "first"),
    "eb": ("eb", "loglinear", "sample", "random"),
    "learned": ("learned", "learned", "sample", "random"),  # both from scheduler_config.json
}
