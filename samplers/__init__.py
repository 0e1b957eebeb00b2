"""Samplers and unmasking schedules: a schedule (how many tokens per step) and a policy (which ones).

    sampler = Sampler(make_step_schedule("loglinear"), make_policy("confidence"))
    out = sampler.generate(model, num_samples=8, seq_len=128, steps=16, seed=0)
    out.tokens, out.nfe_per_sequence, out.tokens_per_forward, out.wall_time

`build_sampler` makes one by name (presets ancestral, dilated, llada, dream, fast-dllm, eb, learned); learned
allocations and policy heads live in a model directory's `scheduler_config.json`.
"""

from fewstep.samplers.ancestral import SampleOutput, ancestral_sample, gumbel_argmax
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
from fewstep.samplers.sampler import Sampler, StepRecord
from fewstep.samplers.scheduler_config import load_learned, save_scheduler_config
from fewstep.samplers.schedules import (
    SCHEDULE_NAMES,
    AllocationSchedule,
    GeometricSchedule,
    NoiseCurveSchedule,
    Schedule,
    make_step_schedule,
)
from fewstep.samplers.step import StepStats, select_positions, token_stats

__all__ = [
    "SampleOutput",
    "ancestral_sample",
    "gumbel_argmax",
    "Sampler",
    "StepRecord",
    "Schedule",
    "NoiseCurveSchedule",
    "GeometricSchedule",
    "AllocationSchedule",
    "make_step_schedule",
    "SCHEDULE_NAMES",
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
    "StepStats",
    "token_stats",
    "select_positions",
]
