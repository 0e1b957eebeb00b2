"""What every training run shares: output-directory guards, loggers, atomic checkpoints, precision."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf

from fewstep.core.io import atomic_save, load_checkpoint
from fewstep.core.ownership import RunLock, check_dir, claim_dir, is_worker_process
from fewstep.errors import CheckpointError, RunError
from fewstep.training.config import LoggerConfig, RuntimeConfig
from fewstep.training.preemption import slurm_plugins

__all__ = [
    "expected_warnings",
    "AtomicCheckpointIO",
    "prepare_out_dir",
    "own_run_dir",
    "check_device",
    "allocation_errors",
    "make_loggers",
    "finish_loggers",
    "resolve_precision",
    "wandb_mode",
    "cluster_trainer_args",
    "prepare_backbone",
    "clip_gradients",
]


@contextmanager
def expected_warnings() -> Iterator[None]:
    """Silence, for one fit and only there, the Lightning warnings fewstep's runs cause on purpose: a
    dataloader that is "not resumable" (GlobalBatchSampler takes its position from the restored step)
    and modules in eval mode (the frozen teacher)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        yield


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, fsynced, then renamed: a crash never leaves half a file.

    They are read back (Lightning's own resume) with `load_checkpoint`: tensors and plain
    containers only, so a crafted checkpoint cannot run code even inside `trainer.fit`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_save(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        try:
            return load_checkpoint(path, map_location="cpu" if map_location is None else map_location)
        except CheckpointError as error:
            raise RunError(str(error)) from error


def _holds_run(out_dir: Path) -> str | None:
    """What in `out_dir` shows a run already produced something (checkpoints, a model, rounds), or None."""
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
        return "checkpoints/"
    for name in ("model", "round_0", "summary.json", "rounds.json"):
        if (out_dir / name).exists():
            return f"{name}{'/' if (out_dir / name).is_dir() else ''}: a finished run"
    return None


def prepare_out_dir(out_dir: Path, cfg: Any, resume: bool,
                    sections: tuple[str, ...] = ("data", "model", "diffusion", "optim")) -> Path | None:
    """Check `out_dir` for a run, writing nothing: never start over a run; on resume, return the checkpoint.

    Resuming needs an intact `checkpoints/last.ckpt` (read without unpickling code) and a config
    whose `sections` (those a checkpoint depends on, the optimiser's included: a new `optim.lr`
    would be recorded in config.yaml but not used) are unchanged; otherwise the keys are named.
    """
    last = out_dir / "checkpoints" / "last.ckpt"
    saved = out_dir / "config.yaml"
    if not resume:
        held = _holds_run(out_dir)
        if held:
            raise RunError(
                f"{out_dir} already holds a run ({held}). Pass --resume to continue it, or choose another "
                "out_dir=...; nothing was changed."
            )
        return None
    if not last.exists():
        held = _holds_run(out_dir)
        state = f"it holds {held} but no checkpoint" if held else "there is no checkpoint there"
        raise RunError(f"--resume: {state} to continue from ({last}); start without --resume in a new out_dir")
    try:
        load_checkpoint(last, mmap=True)
    except CheckpointError as error:
        raise RunError(f"--resume: {error}. Restore an intact last.ckpt or start a new out_dir; nothing was "
                       "changed.") from error
    if saved.exists():
        old = _with_defaults(OmegaConf.to_container(OmegaConf.load(saved)), type(cfg))
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


@contextmanager
def own_run_dir(out_dir: Path, kind: str, cfg: Any, resume: bool,
                sections: tuple[str, ...] = ("data", "model", "diffusion", "optim"),
                sources: tuple[str | Path, ...] = ()) -> Iterator[Path | None]:
    """Own `out_dir` for a run of `kind`: check, mark and lock it; yield the checkpoint to resume from.

    Every check (`ownership.check_dir`, a live lock, `prepare_out_dir`) comes before anything is
    written. The lock is held until the run returns or fails. A directory this call created is
    removed again if the run fails before its first checkpoint, so a refused start leaves nothing.
    Other data-parallel processes only read: the first process did the checks and holds the lock.
    """
    if is_worker_process():
        yield prepare_out_dir(out_dir, cfg, resume, sections) if resume else None
        return
    check_dir(out_dir, kind, sources)
    lock = RunLock(out_dir)
    lock.check()
    ckpt_path = prepare_out_dir(out_dir, cfg, resume, sections)
    created = claim_dir(out_dir, kind, sources)
    lock.acquire()
    if ckpt_path is not None:
        for partial in ckpt_path.parent.glob(".*.tmp"):  # a save killed midway; the checkpoint it replaced is intact
            partial.unlink(missing_ok=True)
    try:
        yield ckpt_path
    except Exception:
        if created and _holds_run(out_dir) is None:
            lock.release()
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        lock.release()


def check_device(device: str | torch.device | None, what: str = "--device") -> None:
    """Refuse a CUDA device where torch sees no GPU, with what to use instead (`what`: the flag or config key)."""
    name = str(device or "")
    if name.startswith(("cuda", "gpu")) and not torch.cuda.is_available():
        sep = " " if what.startswith("-") else "="
        raise RunError(f"{what}{sep}{name}: torch sees no CUDA GPU here (torch {torch.__version__}); use "
                       f"{what}{sep}cpu, or run where a GPU is visible")


@contextmanager
def allocation_errors(what: str) -> Iterator[None]:
    """Turn an allocator failure (a huge data.seq_len or data set) into one line saying what to lower."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise RunError(f"out of memory while {what}; lower data.seq_len, data.num_train or the model size") from error
    except RuntimeError as error:
        if "allocate" not in str(error) and "out of memory" not in str(error):
            raise
        raise RunError(f"out of memory while {what} ({str(error).splitlines()[0][:120]}); lower data.seq_len, "
                       "data.num_train or the model size") from error


def _with_defaults(saved: Any, schema: type) -> Any:
    """A saved config with the keys it lacks (added by a later fewstep) at their defaults: an older run's
    config.yaml resumes under today's code unless a key it did record has changed."""
    def fill(value: Any, default: Any) -> Any:
        if isinstance(value, dict) and isinstance(default, dict):
            return {**default, **{k: fill(v, default.get(k)) for k, v in value.items()}}
        return value

    return fill(saved, OmegaConf.to_container(OmegaConf.structured(schema)))


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):  # YAML has no tuples
        old, new = list(old), list(new)
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
