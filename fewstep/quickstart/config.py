"""The quickstart's settings: the teacher's run config plus those of the later stages.

Apart from the pipeline (`fewstep.quickstart.run`) so that `fewstep quickstart --help`, which lists these
keys, does not import torch and Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fewstep.teacher.config import TeacherRunConfig

__all__ = ["QuickstartConfig"]


@dataclass
class QuickstartConfig(TeacherRunConfig):
    """The teacher's config plus the settings of the later stages."""

    evaluator_steps: int = 600
    distill_method: str = "trajectory"  # sdtt | trajectory
    distill_trajectories: int = 2048  # trajectory: teacher samples to learn from
    distill_start_steps: int = 32
    distill_rounds: int = 3
    distill_steps_per_round: int = 150
    distill_lr: float = 1e-3
    schedule_policy: str = "dilated"  # the order the last student's step allocation is learned with
    schedule_iterations: int = 24  # allocation search moves
    bench_samplers: list[str] = field(default_factory=lambda: ["ancestral", "dilated/geometric", "learned"])
    bench_steps: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    bench_samples: int = 64
    bench_repeats: int = 3
    target_ratio: float = 1.05  # exact NLL (markov) or gen NLL at most this x the teacher's at its most steps
    min_entropy_ratio: float = 0.95
