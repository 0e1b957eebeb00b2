"""Fused denoising-step kernels (Triton), their torch reference, and dispatch.

`denoise_step` is the public op; `fewstep.kernels.loop.generate_static` runs a fixed-step sampling loop
that a CUDA graph can capture. Triton is imported only when a Triton path runs.
"""

from fewstep.kernels.loop import StaticLoop, generate_static
from fewstep.kernels.reference import gumbel_from_uniform
from fewstep.kernels.step import StepResult, denoise_step, triton_available

__all__ = ["StaticLoop", "StepResult", "denoise_step", "generate_static", "gumbel_from_uniform", "triton_available"]
