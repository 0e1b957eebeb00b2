"""The quickstart's stage configs, composed as dataclasses, equal what its earlier `key=value` override lists
gave (transcribed below), field for field and in the YAML each stage saves (a re-run compares that YAML)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fewstep.core.config import load_config
from fewstep.distillation.config import DistillRunConfig
from fewstep.errors import ConfigError
from fewstep.evaluation.config import EvaluatorRunConfig
from fewstep.quickstart.config import QuickstartConfig
from fewstep.quickstart.run import distill_config, evaluator_config, schedule_config, teacher_config
from fewstep.schedule.config import ScheduleRunConfig
from fewstep.teacher.config import TeacherRunConfig

OVERRIDES = (
    [],
    ["trainer.max_steps=4", "trainer.val_every=2", "evaluator_steps=4", "distill_start_steps=4",
     "distill_rounds=2", "distill_steps_per_round=2", "bench_samples=8", "trainer.progress=false"],
    ["distill_method=sdtt", "distill_lr=0.01", "trainer.batch_size=16", "optim.lr=0.005", "model.num_layers=2",
     "schedule_policy=margin", "schedule_iterations=3", "logger.wandb.mode=disabled"],
)


def _section(cfg: Any, schema: type, **changes: Any) -> Any:
    names = {f.name for f in fields(schema)} - set(changes)
    container = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(cfg)).items() if k in names}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), container, changes))


def _yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


@pytest.mark.parametrize("overrides", OVERRIDES)
def test_stage_configs_match_the_override_lists(overrides, tmp_path):
    cfg = load_config(QuickstartConfig, "quickstart", overrides)
    teacher_dir, evaluator_dir, distill_dir = tmp_path / "teacher", tmp_path / "evaluator", tmp_path / "distill"

    expected_teacher = _section(cfg, TeacherRunConfig, out_dir=str(teacher_dir), num_print_samples=0)
    expected_evaluator = _section(
        cfg, EvaluatorRunConfig, out_dir=str(evaluator_dir),
        trainer={**asdict(cfg.trainer), "max_steps": cfg.evaluator_steps},
        optim={"lr": cfg.optim.lr, "warmup_steps": cfg.optim.warmup_steps, "ema": 0.0},
        model={"hidden_size": cfg.model.hidden_size, "num_layers": cfg.model.num_layers,
               "num_heads": cfg.model.num_heads, "intermediate_size": cfg.model.intermediate_size})
    expected_distill = _section(load_config(DistillRunConfig, None, [
        f"teacher.path={teacher_dir}", f"out_dir={distill_dir}", f"method={cfg.distill_method}",
        "loss.divergence=kl_bwd", f"trajectory.num_trajectories={cfg.distill_trajectories}",
        f"rounds.start_steps={cfg.distill_start_steps}", f"rounds.count={cfg.distill_rounds}",
        f"rounds.steps_per_round={cfg.distill_steps_per_round}", f"optim.lr={cfg.distill_lr}",
        "optim.warmup_steps=20", "optim.ema=0.99", f"trainer.progress={cfg.trainer.progress}",
        f"trainer.batch_size={min(cfg.trainer.batch_size, 32)}", "trainer.log_every=10",
        f"eval.num_samples={min(cfg.bench_samples, 64)}"]),
        DistillRunConfig, data=asdict(cfg.data), logger=asdict(cfg.logger))
    student = distill_dir / "round_1" / "model"
    expected_schedule = load_config(ScheduleRunConfig, None, [
        f"model={student}", "steps=4", "what=allocation",
        f"allocation.policy={cfg.schedule_policy}", f"allocation.iterations={cfg.schedule_iterations}",
        f"allocation.num_samples={cfg.bench_samples}", f"allocation.heldout_samples={2 * cfg.bench_samples}",
        f"progress={cfg.trainer.progress}"])

    pairs = [(teacher_config(cfg, teacher_dir), expected_teacher),
             (evaluator_config(cfg, evaluator_dir), expected_evaluator),
             (distill_config(cfg, teacher_dir, distill_dir), expected_distill),
             (schedule_config(cfg, student, 4, True), expected_schedule)]
    for got, expected in pairs:
        assert type(got) is type(expected)
        assert got == expected
        assert _yaml(got) == _yaml(expected)


def test_stage_configs_share_no_section_with_the_quickstart_config(tmp_path):
    """A stage that changes its config in place cannot change the quickstart's (or another stage's)."""
    cfg = load_config(QuickstartConfig, "quickstart", [])
    for stage in (teacher_config(cfg, tmp_path), evaluator_config(cfg, tmp_path),
                  distill_config(cfg, tmp_path, tmp_path)):
        for name in ("data", "model", "optim", "trainer", "logger"):
            if hasattr(stage, name):
                assert getattr(stage, name) is not getattr(cfg, name), name


def test_schedule_progress_follows_both_switches(tmp_path):
    quiet = load_config(QuickstartConfig, "quickstart", ["trainer.progress=false"])
    loud = load_config(QuickstartConfig, "quickstart", [])
    assert not schedule_config(quiet, tmp_path, 4, True).progress
    assert not schedule_config(loud, tmp_path, 4, False).progress
    assert schedule_config(loud, tmp_path, 4, True).progress


def test_a_bad_stage_setting_fails_with_the_same_error(tmp_path):
    cfg = load_config(QuickstartConfig, "quickstart", ["distill_start_steps=30"])
    with pytest.raises(ConfigError, match="not divisible by 4"):
        distill_config(cfg, Path(tmp_path), Path(tmp_path))
    with pytest.raises(ConfigError, match="not divisible by 4"):
        load_config(DistillRunConfig, None, ["teacher.path=x", "rounds.start_steps=30", "rounds.count=3"])
    cfg = load_config(QuickstartConfig, "quickstart", ["distill_method=other"])
    with pytest.raises(ConfigError, match="method='other' is not one of sdtt, trajectory"):
        distill_config(cfg, Path(tmp_path), Path(tmp_path))
