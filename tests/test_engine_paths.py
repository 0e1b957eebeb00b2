"""Every product path samples through the kernels' step: one engine, no second implementation.

The probe counts calls into `fewstep.kernels.stats.torch_token_stats`, the CPU path of the step
(`fewstep.kernels.token_stats` dispatches there without a GPU, and `draw_tokens` is built on it).
"""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep.kernels import stats as kernel_stats


@pytest.fixture
def probe(monkeypatch):
    calls = []
    real = kernel_stats.torch_token_stats

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel_stats, "torch_token_stats", counting)
    return calls


def _loaded(tiny_teacher):
    from fewstep.model.model_dir import load_model_dir

    return load_model_dir(tiny_teacher)


@pytest.mark.parametrize("spec", ["ancestral", "dilated/geometric", "llada", "fast-dllm", "dream", "eb"])
def test_every_preset_reaches_the_kernels_step(tiny_teacher, probe, spec):
    from fewstep.samplers.presets import sample_with_spec

    model = _loaded(tiny_teacher).denoiser
    out = sample_with_spec(spec, model, 3, 16, 4, seed=0)
    assert probe and not bool((out.tokens == model.mask_id).any())


def test_generate_from_an_export_reaches_the_kernels_step(tiny_teacher, tmp_path, probe):
    from fewstep.deploy.export import export_model

    out = export_model(tiny_teacher / "checkpoints" / "last.ckpt", tmp_path / "export", {"steps": 4})
    probe.clear()
    fewstep.load(out).generate(num_samples=2, seed=1)
    assert probe


def test_trajectories_and_sdtt_targets_reach_the_kernels_step(tiny_teacher, tmp_path, probe):
    from fewstep.core.diffusion import make_schedule
    from fewstep.distillation.targets import ancestral_reveal, sdtt_target
    from fewstep.distillation.trajectory import ensure_trajectories

    teacher = _loaded(tiny_teacher).denoiser
    tokens, _ = ensure_trajectories(teacher, tmp_path / "traj.pt", 4, 16, 4, 4, 0, teacher.mask_id, "loglinear",
                                    {"t": 1}, progress=False)
    assert tokens.shape == (4, 16) and probe
    probe.clear()
    z = torch.full((2, 16), teacher.mask_id)
    target = sdtt_target(teacher, z, torch.ones(2), 0.25, 2, teacher.mask_id, ancestral_reveal(make_schedule("loglinear")),
                         torch.Generator().manual_seed(0))
    assert target.dtype == torch.float32 and probe


def test_bench_samples_through_the_kernels_step(tiny_teacher, probe):
    from fewstep.tradeoff.bench import sampler_fn

    model = _loaded(tiny_teacher).denoiser
    for spec in ("ancestral", "llada"):
        probe.clear()
        sample, _ = sampler_fn(spec, torch.device("cpu"))
        tokens, nfe, _ = sample(model, 2, 16, 4, 0)
        assert probe and tokens.shape == (2, 16) and nfe <= 4
