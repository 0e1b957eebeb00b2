"""The README's two commands are the ones CI runs and the ones that work (after litgpt's test_readme)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import TINY, run_cli

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_exactly_two_set_up_commands():
    main, tests = readme_commands()
    assert main.startswith("pip install . && fewstep quickstart")
    assert tests == 'pip install ".[test]" && pytest'


def test_ci_runs_the_readme_test_command():
    ci = ROOT.joinpath(".ci", "run").read_text().splitlines()
    assert readme_commands()[1] in ci


@pytest.mark.slow
def test_readme_main_command_runs_end_to_end(tmp_path):
    """The quickstart itself (training shortened), the way the README runs it."""
    main = readme_commands()[0].split("&&", 1)[1].strip()
    args = shlex.split(main)[1:]
    tiny = [o for o in TINY if not o.startswith(("num_print", "sample_steps"))]
    result = run_cli(*args, "--out", str(tmp_path / "qs"), "--steps", "2,8", "--num-samples", "16", *tiny,
                     "trainer.max_steps=4", "trainer.val_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("[2/2]", 1)[1]
    for word in ("data", "teacher", "oracle", "exact_nll", "invalid_rate", "entropy"):
        assert word in table
    assert (tmp_path / "qs" / "teacher" / "model" / "model.safetensors").is_file()
    again = run_cli(*args, "--out", str(tmp_path / "qs"), "--steps", "2", "--num-samples", "4", *tiny)
    assert again.returncode == 0 and "reusing" in again.stdout, again.stderr[-3000:]
    other = run_cli(*args, "--out", str(tmp_path / "qs"), "--steps", "2", "--num-samples", "4")
    assert other.returncode == 2 and "--fresh" in other.stderr
