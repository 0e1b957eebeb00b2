"""Samplers and unmasking schedules: a schedule (how many tokens per step) and a policy (which ones).

    sampler = Sampler(make_step_schedule("loglinear"), make_policy("confidence"))
    out = sampler.generate(model, num_samples=8, seq_len=128, steps=16, seed=0)
    out.tokens, out.nfe_per_sequence, out.tokens_per_forward, out.wall_time

Every step runs through `fewstep.kernels.token_stats`; MDLM's ancestral sampler is the preset
`ancestral` (random order, MDLM's per-token reveal counts). `build_sampler` makes one by name (presets ancestral, dilated, llada, dream, fast-dllm, eb, learned); learned
allocations and policy heads live in a model directory's `scheduler_config.json`.
"""

from fewstep.samplers import schedules
from fewstep.samplers.policies import (
    POLICY_NAMES,
    DilatedPolicy,
    EntropyBoundedPolicy,
    Policy,
    RandomPolicy,
    StepContext,
    ThresholdPolicy,
    TopKPolicy,
    make_policy,
)
from fewstep.samplers.policy_head import LearnedPolicy, PolicyHead
from fewstep.samplers.presets import PRESETS, build_sampler
from fewstep.samplers.sampler import SampleOutput, Sampler, StepRecord
from fewstep.samplers.scheduler_config import load_learned, save_scheduler_config
from fewstep.samplers.schedules import *  # noqa: F403 (exactly schedules.__all__, named once, there)

__all__ = [
    "SampleOutput",
    "Sampler",
    "StepRecord",
    *schedules.__all__,  # every schedule, by the list that module keeps
    "Policy",
    "RandomPolicy",
    "DilatedPolicy",
    "TopKPolicy",
    "ThresholdPolicy",
    "EntropyBoundedPolicy",
    "LearnedPolicy",
    "PolicyHead",
    "StepContext",
    "make_policy",
    "POLICY_NAMES",
    "PRESETS",
    "build_sampler",
    "load_learned",
    "save_scheduler_config",
]
