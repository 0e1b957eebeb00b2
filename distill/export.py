"""Deployable model directories: export from a Lightning checkpoint or a model directory, load, generate.

An export is a model directory (`config.json`, `model.safetensors` with fewstep metadata, tokenizer
files, `fewstep.json`) plus `fewstep_generation.json`, the generation defaults: step count,
sampler, schedule and temperature (what `fewstep tune` chose), and `scheduler_config.json` when a
learned schedule came with the model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.distill.denoiser import Denoiser, ModelError
from fewstep.distill.io import atomic_write_text
from fewstep.distill.model_dir import load_model_dir, resolve_model_dir, save_model_dir

__all__ = ["GENERATION_FILE", "export_model", "Pipeline", "load"]

GENERATION_FILE = "fewstep_generation.json"
CARRIED = ("scheduler_config.json", "policy_head.safetensors", GENERATION_FILE)


def _run_dir_of(checkpoint: Path) -> Path:
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    if not (run / "model").exists() and not any(run.glob("round_*/model")):
        raise ModelError(f"cannot find the run of {checkpoint}: expected {run}/model/ beside checkpoints/ "
                         "(export from a teacher or distillation run's checkpoint)")
    return run


def _from_checkpoint(checkpoint: Path) -> tuple[Denoiser, Any, dict[str, Any], Path]:
    """Rebuild the run's architecture from its model directory and load the checkpoint's weights."""
    run = _run_dir_of(checkpoint)
    template = run / "model" if (run / "model").exists() else sorted(run.glob("round_*/model"))[-1]
    loaded = load_model_dir(template)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    except Exception as error:  # a truncated or foreign file raises several types
        raise ModelError(f"{checkpoint} is not a readable Lightning checkpoint ({error})") from error
    for prefix in ("student.", "denoiser."):
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            break
    else:
        raise ModelError(f"{checkpoint} holds no denoiser or student weights")
    try:
        loaded.denoiser.load_state_dict(weights)
    except RuntimeError as error:
        raise ModelError(f"{checkpoint} does not fit the model in {template}: {str(error)[:300]}") from error
    return loaded.denoiser, loaded.tokenizer, loaded.meta, template


def export_model(source: str | Path, out_dir: str | Path, generation: dict[str, Any] | None = None) -> Path:
    """Write a deployable directory from a Lightning checkpoint (.ckpt) or a model directory."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise ModelError(f"{source} does not exist")
    if source.is_file():
        denoiser, tokenizer, meta, origin = _from_checkpoint(source)
    else:
        loaded = load_model_dir(source)
        denoiser, tokenizer, meta, origin = loaded.denoiser, loaded.tokenizer, loaded.meta, resolve_model_dir(source)
    if out_dir.resolve() == origin.resolve():
        raise ModelError("the export directory must differ from the source model directory")
    defaults = {"steps": meta.get("steps", 64), "sampler": "ancestral", "schedule": meta.get("noise_schedule",
                                                                                             "loglinear"),
                "temperature": 1.0}
    previous = origin / GENERATION_FILE
    if previous.exists():
        defaults.update(json.loads(previous.read_text()))
    defaults.update(generation or {})
    meta = {**meta, "steps": defaults["steps"], "sampler": defaults["sampler"], "schedule": defaults["schedule"]}
    save_model_dir(denoiser, tokenizer, out_dir, meta)
    for name in CARRIED:
        if (origin / name).exists() and name != GENERATION_FILE:
            shutil.copy2(origin / name, out_dir / name)
    atomic_write_text(out_dir / GENERATION_FILE, json.dumps(defaults, indent=2))
    return out_dir


@dataclass
class Pipeline:
    """A loaded export: `generate()` with its tuned defaults; `denoiser` and `tokenizer` for more."""

    denoiser: Denoiser
    tokenizer: Any
    meta: dict[str, Any]
    generation: dict[str, Any]
    directory: Path | None = None  # where learned schedules (scheduler_config.json) are read from

    def generate(self, num_samples: int = 1, steps: int | None = None, seed: int = 0,
                 temperature: float | None = None, seq_len: int | None = None,
                 batch_size: int = 64) -> dict[str, Any]:
        """Sample with the export's defaults (its tuned sampler and schedule); returns texts, ids and NFE."""
        from fewstep.samplers.presets import sample_with_spec

        steps = steps or int(self.generation["steps"])
        seq_len = seq_len or int(self.meta.get("seq_len", 64))
        temperature = self.generation.get("temperature", 1.0) if temperature is None else temperature
        sampler = self.generation.get("sampler", "ancestral")
        noise_schedule = self.meta.get("noise_schedule", "loglinear")
        if sampler == "ancestral":  # its "schedule" is the noise schedule it was tuned with
            noise_schedule = self.generation.get("schedule", noise_schedule)
        out = sample_with_spec(sampler, self.denoiser, num_samples, seq_len, steps, seed=seed,
                               noise_schedule=noise_schedule, meta=self.meta, model_dir=self.directory,
                               temperature=temperature, batch_size=batch_size)
        return {"texts": [self.tokenizer.decode(row.tolist()) for row in out.tokens], "tokens": out.tokens,
                "nfe": out.nfe_per_sequence, "steps": steps}


def load(path: str | Path, device: str | torch.device = "cpu") -> Pipeline:
    """Load an export (or any fewstep model directory) for generation."""
    loaded = load_model_dir(path, device=device)
    directory = resolve_model_dir(path)
    generation = {"steps": loaded.meta.get("steps", 64), "sampler": "ancestral",
                  "schedule": loaded.meta.get("noise_schedule", "loglinear"), "temperature": 1.0}
    if (directory / GENERATION_FILE).exists():
        try:
            generation.update(json.loads((directory / GENERATION_FILE).read_text()))
        except json.JSONDecodeError as error:
            raise ModelError(f"{directory / GENERATION_FILE} is not valid JSON ({error})") from error
    return Pipeline(loaded.denoiser, loaded.tokenizer, loaded.meta, generation, directory)
