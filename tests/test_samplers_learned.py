"""Learned schedules with a real (tiny) model directory: learn, save, load, refuse what does not fit."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
from conftest import run_cli

from fewstep.cli.sampling import add_sampler_options, sample_with_options
from fewstep.core.config import load_config
from fewstep.errors import ConfigError, RunError
from fewstep.model.model_dir import load_model_dir
from fewstep.samplers import build_sampler
from fewstep.schedule.config import ScheduleRunConfig
from fewstep.schedule.run import run_schedule_config

SMALL = [
    "steps=4",
    "what=both",
    "batch_size=16",
    "policy.hidden=0",
    "policy.rollouts=8",
    "policy.heldout_rollouts=8",
    "policy.updates=50",
    "allocation.num_samples=8",
    "allocation.heldout_samples=8",
    "allocation.iterations=4",
    "policy.grpo.iterations=2",
    "policy.grpo.prompts=4",
    "policy.grpo.group=2",
]


@pytest.fixture(scope="module")
def learned_dir(tiny_teacher, tmp_path_factory):
    """A copy of the tiny teacher's model directory with a schedule learned for 4 steps."""
    model_dir = tmp_path_factory.mktemp("learned") / "model"
    shutil.copytree(tiny_teacher / "model", model_dir)
    cfg = load_config(ScheduleRunConfig, "schedule/markov", [f"model={model_dir}", *SMALL])
    run_schedule_config(cfg)
    return model_dir


def test_schedule_is_written_beside_the_model_with_its_identity(learned_dir):
    saved = json.loads((learned_dir / "scheduler_config.json").read_text())
    meta = json.loads((learned_dir / "fewstep.json").read_text())
    assert saved["steps"] == 4 and saved["model"]["data_fingerprint"] == meta["data_fingerprint"]
    assert saved["model"]["mask_id"] == meta["mask_id"] and saved["model"]["vocab_size"] == meta["vocab_size"]
    assert saved["schedule"]["name"] == "learned" and len(saved["schedule"]["fractions"]) == 5
    assert sum(saved["report"]["allocation"]["counts"]) == meta["seq_len"]
    assert saved["policy"]["name"] == "learned" and (learned_dir / "policy_head.safetensors").is_file()
    assert saved["report"]["policy"]["grpo"]["heldout_reward"].keys() == {"imitation", "grpo"}
    assert saved["report"]["policy"]["fallback"] in ("none", "random", "dilated", "confidence", "margin")
    heldout = saved["report"]["policy"]["heldout"]
    assert 0.0 <= heldout["accuracy"] <= 1.0 and heldout["examples"] > 0
    assert saved["report"]["policy"]["parameters"] <= 0.001 * saved["report"]["policy"]["model_parameters"]


def test_learned_sampler_loads_with_the_model_and_samples(learned_dir):
    loaded = load_model_dir(learned_dir)
    sampler = build_sampler("learned", steps=4, meta=loaded.meta, model_dir=learned_dir)
    out = sampler.generate(loaded.denoiser, 5, 16, 4, seed=0)
    assert out.tokens.shape == (5, 16) and (out.tokens != loaded.denoiser.mask_id).all()
    assert out.nfe_per_sequence <= 4


def test_an_allocation_learned_with_a_heuristic_order_samples_with_that_order(tiny_teacher, tmp_path):
    """`--sampler learned` on an allocation-only file: the learned counts with the order they were searched with."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_teacher / "model", model_dir)
    small = [o for o in SMALL if o.startswith(("steps", "batch_size", "allocation."))]
    run_schedule_config(load_config(ScheduleRunConfig, "schedule/markov", [
        f"model={model_dir}", *small, "what=allocation", "allocation.policy=dilated"]))
    loaded = load_model_dir(model_dir)
    sampler = build_sampler("learned", steps=4, meta=loaded.meta, model_dir=model_dir)
    assert sampler.policy.name == "dilated" and sampler.schedule.name == "learned"
    with pytest.raises(RunError, match="no learned policy head"):
        build_sampler("llada", policy="learned", steps=4, meta=loaded.meta, model_dir=model_dir)


def test_a_schedule_for_another_budget_or_model_is_refused(learned_dir):
    loaded = load_model_dir(learned_dir)
    with pytest.raises(RunError, match="budget of 4 steps, not 8"):
        build_sampler("learned", steps=8, meta=loaded.meta, model_dir=learned_dir)
    other = {**loaded.meta, "data_fingerprint": "0123456789abcdef"}
    with pytest.raises(RunError, match="learned for another model.*data_fingerprint"):
        build_sampler("llada", schedule="learned", steps=4, meta=other, model_dir=learned_dir)


def test_a_head_above_the_size_limit_is_refused(learned_dir):
    cfg = load_config(ScheduleRunConfig, None, [f"model={learned_dir}", *SMALL, "policy.hidden=64"])
    with pytest.raises(ConfigError, match="0.1% of the model"):
        run_schedule_config(cfg)
    with pytest.raises(ConfigError, match="what=bogus is not one of|what='bogus' is not one of"):
        load_config(ScheduleRunConfig, None, [f"model={learned_dir}", "what=bogus"])


def test_sample_options_cover_presets_prompts_and_bad_input(learned_dir):
    parser = argparse.ArgumentParser()
    for flag, kind, default in (
        ("--steps", int, 4),
        ("--num-samples", int, 3),
        ("--seq-len", int, None),
        ("--seed", int, 0),
        ("--temperature", float, 1.0),
        ("--batch-size", int, 64),
        ("--device", str, None),
    ):
        parser.add_argument(flag, type=kind, default=default)
    add_sampler_options(parser)
    loaded = load_model_dir(learned_dir)
    args = parser.parse_args(["--sampler", "fast-dllm", "--block-size", "8", "--prompt", "s1 s2 [MASK] s3"])
    out, described = sample_with_options(loaded, args)
    assert out.tokens.shape == (3, 16) and out.tokens[:, [0, 1, 3]].tolist() == [[1, 2, 3]] * 3
    assert described["policy"]["name"] == "threshold" and described["block_size"] == 8
    with pytest.raises(RunError, match="longer than seq_len"):
        sample_with_options(loaded, parser.parse_args(["--prompt", " ".join(["s1"] * 17)]))
    with pytest.raises(RunError, match="steps must be at least 1"):
        sample_with_options(loaded, parser.parse_args(["--steps", "0"]))


def test_cli_bad_input_exits_2_with_a_message(learned_dir):
    from fewstep.cli import build_parser

    if "schedule" not in build_parser().format_help():
        pytest.skip("`fewstep schedule` is not wired into the CLI yet")
    bad = run_cli("schedule", "schedule/markov", f"model={learned_dir}", "steps=0")
    assert bad.returncode == 2 and "steps must be at least 1" in bad.stderr
    wrong = run_cli("sample", str(learned_dir), "--sampler", "learned", "--steps", "8", "--num-samples", "1")
    assert wrong.returncode == 2 and "budget of 4 steps, not 8" in wrong.stderr
