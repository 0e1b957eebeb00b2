"""The denoising step every sampler runs: fused statistics (Triton on CUDA, chunked torch elsewhere),
counter-based noise, position selection, and a fixed-step loop a CUDA graph can capture.

`token_stats` is what `fewstep.samplers.Sampler` calls at every step; `denoise_step` is the whole
step as one op (statistics, selection, scatter); `generate_static` runs a loop of it with static
shapes. Triton is imported only when a Triton path runs.
"""

from fewstep.kernels.loop import StaticLoop, generate_static
from fewstep.kernels.noise import LANE_ORDER, LANE_TOKEN, counter_uniform, sequence_keys
from fewstep.kernels.reference import gumbel_from_uniform
from fewstep.kernels.select import select_positions
from fewstep.kernels.stats import StepStats
from fewstep.kernels.step import StepResult, denoise_step, token_stats, triton_available

__all__ = [
    "LANE_ORDER",
    "LANE_TOKEN",
    "StaticLoop",
    "StepResult",
    "StepStats",
    "counter_uniform",
    "denoise_step",
    "generate_static",
    "gumbel_from_uniform",
    "select_positions",
    "sequence_keys",
    "token_stats",
    "triton_available",
]
