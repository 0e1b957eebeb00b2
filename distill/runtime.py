"""What every training run shares: output-directory guards, loggers, atomic checkpoints, precision."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf

from fewstep.distill.config import LoggerConfig
from fewstep.distill.io import atomic_save

__all__ = ["RunError", "AtomicCheckpointIO", "prepare_out_dir", "make_loggers", "finish_loggers",
           "resolve_precision", "wandb_mode"]


class RunError(RuntimeError):
    """A run that cannot start or go on as asked; the message says why and what to do."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, fsynced, then renamed: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_save(path, lambda tmp: torch.save(checkpoint, tmp))


def prepare_out_dir(out_dir: Path, cfg: Any, resume: bool,
                    sections: tuple[str, ...] = ("data", "model", "diffusion")) -> Path | None:
    """Guard `out_dir`: never overwrite a run by accident; on resume, return the checkpoint to continue.

    Resuming with a config whose `sections` (those a checkpoint depends on) changed is refused with
    the keys named.
    """
    last = out_dir / "checkpoints" / "last.ckpt"
    saved = out_dir / "config.yaml"
    if not resume:
        if last.exists():
            raise RunError(
                f"{out_dir} already holds a run (checkpoints/last.ckpt). Pass --resume to continue it, or choose "
                "another out_dir=...; nothing was changed."
            )
        return None
    if not last.exists():
        raise RunError(f"--resume: there is no checkpoint to resume at {last}; start without --resume")
    if saved.exists():
        old = OmegaConf.to_container(OmegaConf.load(saved))
        new = OmegaConf.to_container(OmegaConf.structured(cfg))
        changed = []
        for section in sections:
            changed += _diff(old.get(section), new.get(section), section)
        if changed:
            raise RunError(
                "--resume: this config does not fit the checkpoint in "
                f"{out_dir}; these keys differ (saved -> now): {'; '.join(changed)}. Resume with the saved config "
                f"({saved}) or start a new out_dir."
            )
    return last


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def wandb_mode(cfg: LoggerConfig) -> str:
    """`logger.wandb.mode` if set, else $WANDB_MODE, else offline: no account needed by default."""
    return cfg.wandb.mode or os.environ.get("WANDB_MODE") or "offline"


def make_loggers(cfg: LoggerConfig, out_dir: Path, name: str, config: Any) -> list[Any]:
    """A CSV logger (always; benchmarks read it) and a W&B logger unless W&B is disabled."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(out_dir), name="csv", version="")]
    mode = wandb_mode(cfg)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.wandb.project, name=cfg.wandb.name or name, save_dir=str(out_dir),
                                   mode=mode, config=OmegaConf.to_container(OmegaConf.structured(config))))
    return loggers


def finish_loggers(trainer: Any) -> None:
    """Flush every logger and close the W&B run, so its files are complete when the command returns."""
    for logger in trainer.loggers:
        logger.finalize("success")
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16-mixed on a GPU that supports it, full fp32 on the CPU."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"
