"""Samplers and unmasking schedules: a schedule (how many tokens per step) and a policy (which ones).

    sampler = Sampler(make_step_schedule("loglinear"), make_policy("confidence"))
    out = sampler.generate(model, num_samples=8, seq_len=128, steps=16, seed=0)
    out.tokens, out.nfe_per_sequence, out.tokens_per_forward, out.wall_time

Every step runs through `fewstep.kernels.token_stats`; MDLM's ancestral sampler is the preset
`ancestral` (random order, MDLM's per-token reveal counts). `build_sampler` makes one by name (presets ancestral, dilated, llada, dream, fast-dllm, eb, learned); learned
allocations and policy heads live in a model directory's `scheduler_config.json`.

The names below load with their modules on first use, so that importing `fewstep.samplers.names`
(the choices `fewstep sample --help` lists) does not import torch.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    **dict.fromkeys(("SampleOutput", "Sampler", "StepRecord"), "sampler"),
    **dict.fromkeys(("Schedule", "NoiseCurveSchedule", "GeometricSchedule", "AllocationSchedule", "EvenSchedule",
                     "DreamSchedule", "CapSchedule", "make_step_schedule", "curve_counts"), "schedules"),
    **dict.fromkeys(("Policy", "RandomPolicy", "DilatedPolicy", "TopKPolicy", "ThresholdPolicy",
                     "EntropyBoundedPolicy", "StepContext", "make_policy"), "policies"),
    **dict.fromkeys(("LearnedPolicy", "PolicyHead"), "policy_head"),
    **dict.fromkeys(("POLICY_NAMES", "SCHEDULE_NAMES", "PRESETS"), "names"),
    "build_sampler": "presets",
    **dict.fromkeys(("load_learned", "save_scheduler_config"), "scheduler_config"),
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
