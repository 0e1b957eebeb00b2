"""`fewstep teacher`'s run config: data, model, diffusion, optimiser, trainer and logger sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from fewstep.data.config import DataConfig
from fewstep.errors import ConfigError
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

    def __post_init__(self) -> None:
        if (self.diffusion.masking == "exact_count" and self.model.time_conditioning
                and self.diffusion.noise_schedule != "loglinear"):
            raise ConfigError(
                "diffusion.masking=exact_count gives a time-conditioned model the loglinear time of its masked "
                f"fraction, which diffusion.noise_schedule={self.diffusion.noise_schedule} would not sample with; "
                "use diffusion.noise_schedule=loglinear, model.time_conditioning=false, or masking=independent"
            )
