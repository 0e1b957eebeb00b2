"""fewstep: distil many-step masked-diffusion language models into few-step students.

The code lives in three subpackages: `fewstep.distill` (diffusion maths, denoiser, data, Lightning
modules, export), `fewstep.samplers` (samplers and unmasking schedules) and `fewstep.kernels`
(fused denoising-step kernels).
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load an export (or any fewstep model directory) for generation: `fewstep.load(d).generate(4)`."""
    from fewstep.distill.export import load as _load

    return _load(path, device=device)
