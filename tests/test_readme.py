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
    """The quickstart itself (every stage shortened), the way the README runs it."""
    main = readme_commands()[0].split("&&", 1)[1].strip()
    args = shlex.split(main)[1:]
    tiny = [o for o in TINY if not o.startswith(("num_print", "sample_steps"))] + [
        "trainer.max_steps=4", "trainer.val_every=2", "evaluator_steps=4", "distill_start_steps=4",
        "distill_rounds=2", "distill_steps_per_round=2", "bench_repeats=1", "schedule_iterations=2"]
    result = run_cli(*args, "--out", str(tmp_path / "qs"), "--steps", "2,4", "--num-samples", "8", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("[7/7] export", 1)[1]
    for word in ("teacher", "student-r0", "student-r1", "autoregressive", "dilated/geometric", "learned", "exact_nll", "entropy", "x_teacher",
                 "x_ar", "chosen for deployment", "pareto.png"):
        assert word in table, word
    for path in ("teacher/model/model.safetensors", "evaluator/model/config.json", "distill/round_1/model",
                 "distill/round_1/model/scheduler_config.json", "bench/tradeoff.json", "bench/pareto.png",
                 "export/fewstep_generation.json"):
        assert (tmp_path / "qs" / path).exists(), path
    again = run_cli(*args, "--out", str(tmp_path / "qs"), "--steps", "2,4", "--num-samples", "8", *tiny)
    assert again.returncode == 0 and again.stdout.count("reusing") == 5, again.stdout[-3000:]
    other = run_cli(*args, "--out", str(tmp_path / "qs"), "--steps", "2", "--num-samples", "8", *tiny)
    assert other.returncode == 2 and "--fresh" in other.stderr
