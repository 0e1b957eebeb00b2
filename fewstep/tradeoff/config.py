"""`fewstep bench`'s run config: the models (`models`: a name and a model directory each), the samplers, the
step counts, how many samples per cell and the evaluator that scores them."""

from __future__ import annotations

from dataclasses import dataclass, field

from fewstep.errors import ConfigError
from fewstep.training.config import LoggerConfig


@dataclass
class BenchModel:
    """One model to measure: a model directory or a run's out_dir."""

    name: str = "model"
    path: str = "???"
    trust_remote_code: bool = False  # let a directory that ships its own modeling code run it


@dataclass
class BenchRunConfig:
    """What to sweep. Every model must share the first model's data (checked by fingerprint)."""

    out_dir: str = "runs/bench"
    models: list[BenchModel] = field(default_factory=list)
    evaluator: str | None = None  # causal LM directory: generative NLL and the autoregressive baseline
    samplers: list[str] = field(default_factory=lambda: ["ancestral"])
    steps: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    num_samples: int = 64  # samples per row; on prompted data, validation prompts per row
    repeats: int = 3  # timing is the median over repeats
    # sampling temperature; None = 0 on prompted data (greedy, as the reference evaluations answer), else 1
    temperature: float | None = None
    # more temperatures to sweep, each a curve of its own beside `temperature`'s (e.g. [0.9, 0.8]): a few-step
    # sampler's extra entropy is often cheaper to take back with a temperature than by distilling
    extra_temperatures: list[float] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    export: str | None = None  # a model directory to attach to the W&B run as an artifact
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        if any(s < 1 for s in self.steps):
            raise ConfigError("steps must all be at least 1")
        if self.num_samples < 1 or self.repeats < 1:
            raise ConfigError("num_samples and repeats must be at least 1")
        if self.temperature is not None and not 0.0 <= self.temperature < float("inf"):
            raise ConfigError(f"temperature={self.temperature} must be a finite number >= 0")
        for extra in self.extra_temperatures:
            if not 0.0 <= extra < float("inf"):
                raise ConfigError(f"extra_temperatures holds {extra}; each must be a finite number >= 0")
