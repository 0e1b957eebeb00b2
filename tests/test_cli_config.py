"""The config keys' docs as users see them: read from the dataclasses' comments, listed by `--help`, and
printed by `--print-config` as YAML that loads back to the same values."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

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

HERE = Path(__file__).resolve().parent  # a working directory with no fewstep/ source folder in it


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


def _cli(*args: str) -> subprocess.CompletedProcess:
    # from the tests folder: `-c` puts the working directory first on sys.path, and in the checkout's root
    # that would import the source folder fewstep/ (which has no configs/) in place of the installed package
    return subprocess.run([sys.executable, "-c", "import sys; from fewstep.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "100"},
                          cwd=HERE)


def test_building_the_parser_and_its_help_import_no_torch():
    script = ("import sys; from fewstep.cli import build_parser; parser = build_parser(); parser.format_help(); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=HERE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command, listed", [
    ("quickstart", "distill_trajectories"),  # its config keys live apart from the pipeline for this reason
    ("distill", "trajectory.entropy_weight"),  # the config checks divergence and sampler names without torch
    ("sample", "fast-dllm"),  # the sampler choices come from fewstep.samplers.names
    ("teacher", "diffusion.masking"),
])
def test_a_commands_help_imports_no_torch(command, listed):
    # --help answers in well under a second: it must not pay for torch, Lightning or transformers
    script = (f"import sys; from fewstep.cli import main\ntry:\n    main([{command!r}, '--help'])\n"
              "except SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=HERE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert listed in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_every_run_command_takes_a_config_the_same_way():
    from fewstep.cli.table import COMMANDS

    with_config = {c.name: c for c in COMMANDS if c.config is not None}
    assert set(with_config) == {"teacher", "distill", "evaluator", "schedule", "bench", "quickstart"}
    for name, command in with_config.items():
        text = _cli(name, "--help").stdout
        assert "KEY=VALUE" in text and "--print-config" in text and "config keys" in text, name
        assert "--with" in text, name
        assert ("CONFIG [KEY=VALUE" in text) == command.config_file, name
        assert ("--resume" in text) == (name in ("teacher", "distill", "evaluator")), name
    assert not any(c.config_file for c in COMMANDS if c.name == "quickstart")  # it keeps --out and --fresh


def test_help_lists_config_keys_with_type_default_and_doc():
    text = _cli("bench", "--help").stdout.split("config keys", 1)[1]
    assert "  repeats: int = 3\n      timing is the median over repeats\n" in text
    assert "  logger.wandb.mode: str | None = null\n" in text
    schedule = _cli("schedule", "--help").stdout
    assert "policy.grpo.kl_weight: float = 0.1" in schedule and "smoothed threshold rule" in schedule


def test_print_config_is_commented_yaml_of_the_merged_layers(tmp_path):
    layer = tmp_path / "more.yaml"
    layer.write_text("repeats: 5\nsamplers: [ancestral, dilated]\n")
    result = _cli("bench", "--print-config", "--with", str(layer), str(layer), "seed=7")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "repeats: 5  # timing is the median over repeats" in result.stdout
    printed = tmp_path / "printed.yaml"
    printed.write_text(result.stdout)
    expected = load_config(BenchRunConfig, [str(layer)], ["seed=7"])
    assert load_config(BenchRunConfig, str(printed)) == expected
    assert yaml.safe_load(result.stdout) == yaml.safe_load(OmegaConf.to_yaml(OmegaConf.structured(expected)))
    quick = _cli("quickstart", "--print-config", "--steps", "2,4", "trainer.max_steps=3")
    assert quick.returncode == 0, quick.stderr[-2000:]
    assert yaml.safe_load(quick.stdout)["bench_steps"] == [2, 4]
    assert yaml.safe_load(quick.stdout)["trainer"]["max_steps"] == 3
    layer.write_text("bench_samples: 16\ntrainer:\n  max_steps: 9\n")
    quick = _cli("quickstart", "--print-config", "--with", str(layer), "trainer.max_steps=3")
    assert quick.returncode == 0, quick.stderr[-2000:]
    assert yaml.safe_load(quick.stdout)["bench_samples"] == 16  # --with over the shipped quickstart config
    assert yaml.safe_load(quick.stdout)["trainer"]["max_steps"] == 3  # and KEY=VALUE over both
