"""The training sections of a run config: the optimiser (`optim`), the trainer and its cluster settings
(`trainer`: devices, strategy, precision, budget, checkpoints) and the loggers (`logger`: W&B, CSV)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fewstep.errors import ConfigError


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then constant or cosine decay; EMA of the weights.

    `ema` is the EMA's decay (0 disables it); with `ema_warmup` the decay of update t is
    min(ema, (1 + t) / (10 + t)), so a short run's average does not still hold its first weights.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    decay: str = "cosine"  # constant | cosine
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables
    ema: float = 0.999  # 0 disables EMA
    ema_warmup: bool = True  # decay of update t: min(ema, (1 + t) / (10 + t))

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"optim.lr={self.lr} must be a positive finite number, e.g. optim.lr=1e-3")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"optim.{name}={value} must be a finite number >= 0")
        if not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} must both be in [0, 1)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps must be >= 0")
        if self.decay not in ("constant", "cosine"):
            raise ConfigError(f"optim.decay={self.decay!r} is not one of constant, cosine")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError("optim.ema must be in [0, 1); 0 disables it")


@dataclass
class RuntimeConfig:
    """Where and how a run executes; shared by every kind of training run."""

    precision: str = "auto"  # auto = bf16-mixed on GPU, 32-true on CPU
    accelerator: str = "auto"
    devices: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 25
    progress: bool = True
    strategy: str = "auto"  # auto | ddp | fsdp: data parallel or sharded (see configs/cluster/)
    num_nodes: int = 1
    checkpoint_every: int = 100  # optimiser steps between writes of checkpoints/last.ckpt
    requeue: bool = True  # under SLURM, SIGUSR1 saves a checkpoint and requeues the job
    compile: bool = False  # torch.compile the trained backbone
    activation_checkpointing: bool = False  # recompute each layer in the backward pass: less memory

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"trainer.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.num_nodes < 1 or self.checkpoint_every < 1:
            raise ConfigError("trainer.num_nodes and trainer.checkpoint_every must be at least 1")


STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class TrainerConfig(RuntimeConfig):
    """Lightning Trainer settings that a user changes."""

    max_steps: int = 2000
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit); the LR plan uses max_steps
    batch_size: int = 64  # the global batch, shared out over data-parallel processes
    val_every: int = 250  # optimiser steps between validations (and checkpoints)
    val_batches: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_steps < 1:
            raise ConfigError("trainer.max_steps must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("trainer.batch_size must be at least 1")


@dataclass
class WandbConfig:
    """W&B logging; offline unless the user sets WANDB_MODE or logger.wandb.mode."""

    mode: str | None = None  # offline | online | disabled; None = $WANDB_MODE or offline
    project: str = "fewstep"
    name: str | None = None


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
