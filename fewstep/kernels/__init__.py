"""The denoising step every sampler runs: fused statistics (Triton on CUDA, chunked torch elsewhere),
counter-based noise and position selection.

`token_stats` is what `fewstep.samplers.Sampler` calls at every step (its static loop, which a CUDA
graph can capture, included); `denoise_step` is the whole step as one op (statistics, selection,
scatter). Triton is imported only when a Triton path runs.
"""

from fewstep.kernels.reference import gumbel_from_uniform
from fewstep.kernels.select import select_positions
from fewstep.kernels.stats import StepStats
from fewstep.kernels.step import StepResult, denoise_step, token_stats, triton_available
from fewstep.kernels.streams import LANE_ORDER, LANE_TOKEN, counter_uniform, sequence_keys

__all__ = [
    "LANE_ORDER",
    "LANE_TOKEN",
    "StepResult",
    "StepStats",
    "counter_uniform",
    "denoise_step",
    "gumbel_from_uniform",
    "select_positions",
    "sequence_keys",
    "token_stats",
    "triton_available",
]
