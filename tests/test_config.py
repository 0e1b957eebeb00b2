"""Structured configs: YAML + key=value overrides, strict keys and types, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewstep.core.config import load_config, resolve_config_path
from fewstep.errors import ConfigError
from fewstep.teacher.config import TeacherRunConfig


def test_overrides_merge_over_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  seq_len: 32\ntrainer:\n  max_steps: 7\n")
    cfg = load_config(TeacherRunConfig, path, ["trainer.max_steps=9", "model.hidden_size=64"])
    assert (cfg.data.seq_len, cfg.trainer.max_steps, cfg.model.hidden_size) == (32, 9, 64)
    assert isinstance(cfg, TeacherRunConfig)


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        load_config(TeacherRunConfig, None, ["data.seqlen=32"])
    message = str(error.value)
    assert "data.seqlen" in message and "data.seq_len" in message and "data.source" in message


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  max_step: 5\n")
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(TeacherRunConfig, path)


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(TeacherRunConfig, None, ["trainer.max_steps=lots"])


def test_value_checks_run_at_start_up():
    with pytest.raises(ConfigError, match="data.source"):
        load_config(TeacherRunConfig, None, ["data.source=wikipedia"])
    with pytest.raises(ConfigError, match="data.path"):
        load_config(TeacherRunConfig, None, ["data.source=text"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TeacherRunConfig, None, ["trainer.max_steps"])


def test_missing_config_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="teacher/markov"):
        resolve_config_path("teacher/nope")


@pytest.mark.parametrize("name", ["teacher/markov", "teacher/stdlib"])
def test_shipped_teacher_configs_load(name):
    cfg = load_config(TeacherRunConfig, name)
    assert cfg.trainer.max_steps > 0
    assert Path(resolve_config_path(name)).is_file()


def test_other_shipped_configs_load():
    from fewstep.distillation.config import DistillRunConfig
    from fewstep.evaluation.config import EvaluatorRunConfig
    from fewstep.quickstart.config import QuickstartConfig

    assert load_config(QuickstartConfig, "quickstart").distill_rounds >= 1
    assert load_config(DistillRunConfig, "distill/markov").rounds.start_steps == 64
    stdlib = load_config(DistillRunConfig, "distill/stdlib")  # the setting BENCHMARKS.md measured
    assert (stdlib.method, stdlib.rounds.count, stdlib.trajectory.teacher_steps) == ("trajectory", 2, 128)
    assert (stdlib.trajectory.num_trajectories, stdlib.trajectory.entropy_weight) == (512, 0.2)
    for name in ("evaluator/markov", "evaluator/stdlib"):
        assert load_config(EvaluatorRunConfig, name).trainer.max_steps > 0


def test_shipped_text_config_needs_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_config(TeacherRunConfig, "teacher/text")
    cfg = load_config(TeacherRunConfig, "teacher/text", ["data.path=corpus.txt"])
    assert cfg.data.path == "corpus.txt"


def test_the_text_recipes_follow_the_text_teacher():
    from fewstep.distillation.config import DistillRunConfig
    from fewstep.evaluation.config import EvaluatorRunConfig

    teacher = load_config(TeacherRunConfig, "teacher/text", ["data.path=corpus.txt"])
    for cls, name in ((DistillRunConfig, "distill/text"), (EvaluatorRunConfig, "evaluator/text")):
        with pytest.raises(ConfigError, match="data.path"):
            load_config(cls, name)
        cfg = load_config(cls, name, ["data.path=corpus.txt"])
        assert (cfg.data.source, cfg.data.seq_len) == ("text", teacher.data.seq_len), name
    distill = load_config(DistillRunConfig, "distill/text", ["data.path=corpus.txt"])
    assert distill.teacher.path == teacher.out_dir
    evaluator = load_config(EvaluatorRunConfig, "evaluator/text", ["data.path=corpus.txt"])
    assert evaluator.data.tokenizer == f"{teacher.out_dir}/tokenizer.json"  # the teacher's tokens, not its own
