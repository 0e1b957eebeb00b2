"""`fewstep evaluator`'s run config: the autoregressive baseline (GPT-2 shaped, `model`) trained on the same
data, with the same optimiser, trainer and logger sections as a teacher."""

from __future__ import annotations

from dataclasses import dataclass, field

from fewstep.data.config import DataConfig
from fewstep.training.config import LoggerConfig, OptimConfig, TrainerConfig


@dataclass
class EvaluatorModelConfig:
    """A GPT-2-config causal LM; by default the same width and depth as the default denoiser."""

    pretrained: str | None = None  # any causal LM (local path or hub id) instead of training one
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256


@dataclass
class EvaluatorRunConfig:
    """`fewstep evaluator`: train the reference autoregressive model on a data source."""

    out_dir: str = "runs/evaluator"
    data: DataConfig = field(default_factory=DataConfig)
    model: EvaluatorModelConfig = field(default_factory=EvaluatorModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=100, ema=0.0))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=1500, val_every=250))
    logger: LoggerConfig = field(default_factory=LoggerConfig)
