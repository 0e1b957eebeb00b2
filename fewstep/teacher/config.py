"""`fewstep teacher`'s run config: data, model, diffusion, optimiser, trainer and logger sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from fewstep.data.config import DataConfig
from fewstep.model.config import DiffusionConfig, ModelConfig
from fewstep.training.config import LoggerConfig, OptimConfig, TrainerConfig


@dataclass
class TeacherRunConfig:
    """`fewstep teacher`: pretrain a masked-diffusion teacher with the MDLM objective."""

    out_dir: str = "runs/teacher"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sample_steps: int = 64  # steps for the samples printed at the end of a run
    num_print_samples: int = 4
