"""fewstep: distil many-step masked-diffusion language models into few-step students.

`fewstep.load(path).generate(...)` serves an export. The subpackages are layers (ARCHITECTURE.md): errors
and `core` at the bottom, then `kernels`, `data`, `samplers`, `training`, `model`, `evaluation`, the
stages (`teacher`, `distillation`, `schedule`, `tradeoff`, `deploy`) and the CLI on top.
"""

from fewstep.version import __version__

__all__ = ["__version__", "load"]


def load(path, device="cpu", trust_remote_code=False):
    """Load an export (or any fewstep model directory) for generation: `fewstep.load(d).generate(4)`.

    `trust_remote_code=True` lets a directory that ships its own modeling code run it: pass it only for
    a directory whose code you have read; the directory itself never decides.
    """
    # lazy: at the top, `import fewstep.kernels` (or any part) would load the whole stack (torch, lightning,
    # transformers) through this package's __init__
    from fewstep.deploy.export import load as _load

    return _load(path, device=device, trust_remote_code=trust_remote_code)
