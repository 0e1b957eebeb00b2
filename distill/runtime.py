"""What every training run shares: output-directory guards, loggers, atomic checkpoints, precision."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf

from fewstep.distill.config import LoggerConfig, RuntimeConfig
from fewstep.distill.io import atomic_save

__all__ = ["RunError", "AtomicCheckpointIO", "prepare_out_dir", "make_loggers", "finish_loggers",
           "resolve_precision", "wandb_mode", "cluster_trainer_args", "prepare_backbone", "clip_gradients"]


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
    for partial in last.parent.glob(".*.tmp"):  # a save killed midway; the checkpoint it was replacing is intact
        partial.unlink(missing_ok=True)
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


def _layer_classes(model: torch.nn.Module) -> set[type[torch.nn.Module]]:
    """The transformer block classes of a Hugging Face backbone (its `_no_split_modules`)."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in names}


def cluster_trainer_args(cfg: RuntimeConfig, model: torch.nn.Module) -> dict[str, Any]:
    """Trainer arguments for `cfg.strategy` on `cfg.num_nodes` nodes, with atomic checkpoints.

    Data is shared out by fewstep's own samplers (`loader.py`), so Lightning's distributed sampler is
    off. FSDP shards each transformer block of `model` (the frozen teacher's too, which it never
    optimises) and can recompute them in the backward pass.
    """
    from fewstep.distill.preemption import slurm_plugins

    strategy: Any = cfg.strategy
    if cfg.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=False)
    elif cfg.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        if cfg.accelerator == "cpu" or not torch.cuda.is_available():
            raise RunError("trainer.strategy=fsdp needs CUDA GPUs (Lightning runs FSDP on GPUs only); on the CPU "
                           "use trainer.strategy=ddp (e.g. --with cluster/cpu_ddp)")

        layers = _layer_classes(model)
        if not layers:
            raise RunError("trainer.strategy=fsdp: the backbone declares no transformer block classes "
                           "(_no_split_modules) to shard; use trainer.strategy=ddp")
        strategy = FSDPStrategy(auto_wrap_policy=layers, sharding_strategy="FULL_SHARD", state_dict_type="full",
                                activation_checkpointing_policy=layers if cfg.activation_checkpointing else None,
                                use_orig_params=True)
    return {
        "strategy": strategy,
        "num_nodes": cfg.num_nodes,
        "accelerator": cfg.accelerator,
        "devices": cfg.devices,
        "precision": resolve_precision(cfg.precision, cfg.accelerator),
        "plugins": [AtomicCheckpointIO(), *slurm_plugins()],
        "use_distributed_sampler": False,
    }


def prepare_backbone(model: torch.nn.Module, cfg: RuntimeConfig) -> None:
    """Activation checkpointing (outside FSDP, which does its own) and `torch.compile`, in place."""
    backbone = getattr(model, "backbone", model)
    if cfg.activation_checkpointing and cfg.strategy != "fsdp":
        if not hasattr(backbone, "gradient_checkpointing_enable"):
            raise RunError("trainer.activation_checkpointing: this backbone does not support gradient checkpointing")
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        backbone.compile()  # in place: parameter names and checkpoints stay as they are


def clip_gradients(module: Any, optimizer: Any, value: float | None, algorithm: str | None) -> None:
    """Gradient clipping that also works under FSDP (a LightningModule's `configure_gradient_clipping`).

    Lightning's FSDP precision plugin refuses norm clipping, because the norm must be taken over
    every shard: the root FSDP module's `clip_grad_norm_` does exactly that.
    """
    if not value:
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    root = getattr(module.trainer.strategy, "model", None)
    if isinstance(root, FullyShardedDataParallel) and algorithm in (None, "norm"):
        root.clip_grad_norm_(value)
    else:
        module.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
