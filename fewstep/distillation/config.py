"""The distillation run's config (`fewstep distill`): teacher, student, loss, rounds, trajectories.

The shared building blocks (data, model, optimiser, runtime) and the loading machinery are in
`config.py`; this file holds what only distillation needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fewstep.data.config import DataConfig
from fewstep.errors import ConfigError, RunError
from fewstep.model.config import LoraConfig, ModelConfig, TeacherSourceConfig
from fewstep.training.config import LoggerConfig, OptimConfig, RuntimeConfig

__all__ = [
    "StudentConfig",
    "LossConfig",
    "RoundsConfig",
    "TrajectoryConfig",
    "DistillTrainerConfig",
    "EvalConfig",
    "DistillRunConfig",
]


# the divergences of `fewstep.distillation.losses`, by name (here, so that reading a config needs no torch)
DIVERGENCE_NAMES = ("kl_fwd", "kl_bwd", "jeffreys", "tvd", "mse")


def _check_sampler(key: str, spec: str) -> None:
    # lazy: the samplers import torch, and `fewstep distill --help` lists this config without it
    from fewstep.samplers.presets import sampler_from_spec

    try:
        sampler_from_spec(spec, 8)
    except RunError as error:
        raise ConfigError(f"{key}={spec!r}: {error}") from error


@dataclass
class StudentConfig:
    """The student starts as a copy of the teacher (`init: teacher`) or as a new `model` (`init: config`)."""

    init: str = "teacher"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if self.init not in ("teacher", "config"):
            raise ConfigError(f"student.init={self.init!r} is not one of teacher, config")


@dataclass
class LossConfig:
    divergence: str = "kl_bwd"  # kl_fwd | kl_bwd | jeffreys | tvd | mse
    dtype: str = "float32"  # float32 | float64

    def __post_init__(self) -> None:

        if self.divergence not in DIVERGENCE_NAMES:
            raise ConfigError(f"loss.divergence={self.divergence!r} is not one of {', '.join(DIVERGENCE_NAMES)}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"loss.dtype={self.dtype!r} is not one of float32, float64")


@dataclass
class RoundsConfig:
    """Rounds of distillation; round r's student samples in `steps_for(r)` steps."""

    start_steps: int = 64  # N0: the first round's student step count
    count: int = 3
    steps_per_round: int = 500  # optimiser steps per round
    shrink: str = "halve"  # halve | linear
    linear_step: int = 0  # with shrink=linear: steps removed per round
    k: int = 2  # teacher steps per student step (SDTT)
    teacher_from: str = "ema"  # ema | student: what becomes the next round's teacher
    reset_optimizer: bool = True

    def __post_init__(self) -> None:
        if self.count < 1 or self.steps_per_round < 1 or self.start_steps < 1 or self.k < 1:
            raise ConfigError("rounds.count, rounds.steps_per_round, rounds.start_steps and rounds.k must be >= 1")
        if self.shrink == "halve":
            factor = 2 ** (self.count - 1)
            if self.start_steps % factor:
                raise ConfigError(
                    f"rounds.start_steps={self.start_steps} is not divisible by {factor} (2^(rounds.count-1)), so "
                    f"it cannot halve {self.count - 1} times; use e.g. rounds.start_steps={factor * 8}"
                )
        elif self.shrink == "linear":
            if self.linear_step < 1 or self.start_steps - (self.count - 1) * self.linear_step < 1:
                raise ConfigError(
                    "rounds.shrink=linear needs rounds.linear_step >= 1 and start_steps - (count-1)*linear_step >= 1"
                )
        else:
            raise ConfigError(f"rounds.shrink={self.shrink!r} is not one of halve, linear")
        if self.teacher_from not in ("ema", "student"):
            raise ConfigError(f"rounds.teacher_from={self.teacher_from!r} is not one of ema, student")

    def steps_for(self, round_index: int) -> int:
        if self.shrink == "halve":
            return self.start_steps // 2**round_index
        return self.start_steps - round_index * self.linear_step


@dataclass
class TrajectoryConfig:
    """Trajectory distillation (dParallel / d3LLM): learn from the teacher's own samples."""

    num_trajectories: int = 2048  # training examples: prompts answered `references` times each on prompted data
    teacher_steps: int = 0  # 0 = rounds.start_steps * rounds.k
    batch_size: int = 64  # sequences per teacher sampling batch
    entropy_weight: float = 0.5  # weight of the certainty-forcing term
    # the teacher's sampler (a `fewstep sample --sampler` spec); auto = `llada` (semi-autoregressive blocks,
    # low-confidence remasking, as the reference teachers answer prompts) on prompted data, else `ancestral`
    sampler: str = "auto"
    # the teacher's temperature; None = 0 (greedy, LLaDA's default) on prompted data with one reference, else 1
    temperature: float | None = None
    # teacher answers per training prompt (prompted data). With more than one, each training step learns the
    # answer the student already finds likeliest in one forward pass from the fully masked response (reference
    # selection, Shao et al. 2022, "One Reference Is Not Enough"): where a prompt has many right answers, the
    # student picks one it can give in parallel instead of copying the teacher's arbitrary choice. The answers
    # must differ, so the teacher samples them at a temperature above 0.
    references: int = 1
    # keep only the teacher answers the task's exact checker accepts (prompted data whose task has one, e.g.
    # data.source=anagram): rejection sampling, so that a student distilled from its predecessor does not learn
    # the predecessor's mistakes; prompts without an accepted answer drop out of training
    verify: bool = False
    seed: int | None = None  # the teacher's sampling seed; None = trainer.seed
    # another run's trajectories.pt of the same teacher and settings to start from (read, never written): students
    # trained with other seeds or losses share the teacher's samples instead of drawing them again
    reuse: str | None = None

    def resolved(self, prompted: bool) -> tuple[str, float]:
        """(sampler spec, temperature) for data with or without prompts."""
        spec = self.sampler if self.sampler != "auto" else ("llada" if prompted else "ancestral")
        greedy = prompted and self.references == 1
        temperature = self.temperature if self.temperature is not None else (0.0 if greedy else 1.0)
        return spec, temperature

    def __post_init__(self) -> None:
        if self.references < 1:
            raise ConfigError(f"trajectory.references={self.references} must be >= 1 (teacher answers per prompt)")
        if self.references > 1 and self.temperature == 0.0:
            raise ConfigError(f"trajectory.references={self.references} needs answers that differ, but "
                              "trajectory.temperature=0 makes the teacher give every reference the same one; "
                              "set trajectory.temperature=1 (or leave it unset)")
        if self.temperature is not None and not 0.0 <= self.temperature < float("inf"):
            raise ConfigError(f"trajectory.temperature={self.temperature} must be a finite number >= 0")
        if self.sampler not in ("auto", "ancestral"):
            _check_sampler("trajectory.sampler", self.sampler)


@dataclass
class DistillTrainerConfig(RuntimeConfig):
    """Trainer settings for distillation; the length is rounds.count * rounds.steps_per_round."""

    batch_size: int = 32  # the global batch, shared out over data-parallel processes


@dataclass
class EvalConfig:
    """Round-end validation: samples per model, float64 Gumbel noise.

    Each round's student is held against the undistilled teacher's own many-step samples (MDLM's
    ancestral sampler at `reference_steps`): a student whose sample entropy falls below
    `min_entropy_ratio` x theirs is flagged, since a lower NLL bought with diversity is not quality.
    """

    num_samples: int = 64
    seed: int = 0
    enabled: bool = True
    sampler: str = "ancestral"  # ancestral (MDLM), a preset (e.g. dilated) or POLICY[+FALLBACK][/SCHEDULE]
    min_entropy_ratio: float = 0.95  # a student below this x the reference's entropy is flagged
    reference_steps: int = 0  # the teacher's many-step setting; 0 = the steps of the first round's teacher

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_entropy_ratio) and 0.0 <= self.min_entropy_ratio <= 1.0):
            raise ConfigError(f"eval.min_entropy_ratio={self.min_entropy_ratio} must be in [0, 1], e.g. 0.95 (a "
                              "student may lose at most 5% of the teacher's sample entropy)")
        if self.reference_steps < 0:
            raise ConfigError(f"eval.reference_steps={self.reference_steps} must be >= 0 (0 = the first round's "
                              "teacher steps)")
        if self.sampler != "ancestral":
            _check_sampler("eval.sampler", self.sampler)


@dataclass
class DistillRunConfig:
    """`fewstep distill`: distil a teacher into a few-step student in rounds."""

    out_dir: str = "runs/distill"
    teacher: TeacherSourceConfig = field(default_factory=TeacherSourceConfig)
    method: str = "sdtt"  # sdtt | trajectory
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=50, decay="constant"))
    trainer: DistillTrainerConfig = field(default_factory=DistillTrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.method not in ("sdtt", "trajectory"):
            raise ConfigError(f"method={self.method!r} is not one of sdtt, trajectory")

    @property
    def reference_steps(self) -> int:
        """The undistilled teacher's many-step setting that students' entropy is held against: `eval.reference_steps`,
        else the steps its trajectories were sampled with (trajectory), else the first round's teacher steps."""
        if self.eval.reference_steps:
            return self.eval.reference_steps
        if self.method == "trajectory" and self.trajectory.teacher_steps:
            return self.trajectory.teacher_steps
        return self.rounds.start_steps * self.rounds.k
