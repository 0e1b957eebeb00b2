"""The config keys' docs as users see them: read from the dataclasses' comments, listed by `--help`, and
printed by `--print-config` as YAML that loads back to the same values."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml
from omegaconf import OmegaConf

from fewstep.core.config import commented_yaml, config_docs, load_config
from fewstep.distillation.config import DistillRunConfig
from fewstep.evaluation.config import EvaluatorRunConfig
from fewstep.schedule.config import ScheduleRunConfig
from fewstep.teacher.config import TeacherRunConfig
from fewstep.tradeoff.config import BenchModel, BenchRunConfig

RUN_CONFIGS = (TeacherRunConfig, DistillRunConfig, EvaluatorRunConfig, ScheduleRunConfig, BenchRunConfig)


@dataclass
class _Inner:
    """The inner section."""

    width: int = 3  # how wide
    # the comment above a field
    # spans two lines
    depth: int = 1


@dataclass
class _Outer:
    name: str = "x"  # a trailing comment wrapped
    # onto the next line
    after: float = 0.5  # its own comment
    inner: _Inner = field(default_factory=lambda: _Inner(width=7))  # the section


@dataclass
class _Derived(_Outer):
    extra: list[int] = field(default_factory=lambda: [1, 2])  # declared in the subclass


def test_docs_come_from_trailing_comments_and_the_lines_above():
    docs = config_docs(_Derived)
    assert list(docs) == ["name", "after", "inner.width", "inner.depth", "extra"]
    assert docs["name"] == ("str", "x", "a trailing comment wrapped onto the next line")
    assert docs["after"] == ("float", 0.5, "its own comment")
    assert docs["inner.width"] == ("int", 7, "how wide")  # the parent's default wins over the section's
    assert docs["inner.depth"] == ("int", 1, "the comment above a field spans two lines")
    assert docs["extra"] == ("list[int]", [1, 2], "declared in the subclass")


def test_docs_reach_inherited_fields_and_every_section():
    docs = config_docs(TeacherRunConfig)
    assert docs["trainer.checkpoint_every"].doc.startswith("optimiser steps")  # declared in RuntimeConfig
    assert docs["data.markov.branching"].type == "int"
    assert docs["out_dir"].default == "runs/teacher"
    assert config_docs(EvaluatorRunConfig)["optim.lr"].default == 2e-3
    assert "learned head" in config_docs(ScheduleRunConfig)["allocation.policy"].doc
    assert "sampling temperature" in config_docs(BenchRunConfig)["temperature"].doc


@pytest.mark.parametrize("schema", RUN_CONFIGS, ids=lambda s: s.__name__)
def test_commented_yaml_loads_back_to_the_same_values(schema, tmp_path):
    cfg = schema() if schema is not ScheduleRunConfig else schema(model="runs/t")
    if schema is DistillRunConfig:
        cfg.teacher.path = "runs/t"  # the ??? a run must fill in
    text = commented_yaml(cfg)
    assert yaml.safe_load(text) == yaml.safe_load(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    keys = [k for k, d in config_docs(schema).items() if d.doc]
    assert keys and all(config_docs(schema)[k].doc in text for k in keys)
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert load_config(schema, str(path)) == cfg


def test_commented_yaml_keeps_awkward_values():
    cfg = BenchRunConfig(out_dir="a dir: with # signs\nand a newline", models=[BenchModel("m", "p: q")],
                         temperature=1e-5, export="null")
    assert yaml.safe_load(commented_yaml(cfg)) == yaml.safe_load(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
