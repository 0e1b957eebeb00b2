"""Faults a long run must survive: signals, SIGKILL, a save killed midway, NaN, a config that does not fit."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from conftest import TINY, tiny_overrides

from fewstep.core.config import load_config
from fewstep.distillation.config import DistillRunConfig
from fewstep.distillation.run import run_distill
from fewstep.errors import NonFiniteLossError, RunError
from fewstep.model.model_dir import load_model_dir
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher

DATA = [o for o in TINY if o.startswith("data.")]
TEACHER = ["trainer.max_steps=8", "trainer.val_every=4", "trainer.checkpoint_every=2", "logger.wandb.mode=disabled"]

# Runs fewstep in a child process that kills itself (SIGKILL: no handler, no cleanup) when `step`
# optimiser steps are done, as an out-of-memory killer or a lost node would.
KILL_AT = """
import os, signal, sys
import lightning as L
from fewstep.core.config import load_config
from fewstep.distillation.config import DistillRunConfig
from fewstep.teacher.config import TeacherRunConfig
from fewstep.{module} import {function}

class Kill(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

{function}(load_config({schema}, None, {overrides!r}), callbacks=[Kill()])
"""

# Kills the child in the middle of writing its second checkpoint: half a file is on disk.
KILL_MID_SAVE = """
import os, signal
import torch
from fewstep.core.config import load_config
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher

real_save, saves = torch.save, []

def dying_save(obj, path, *args, **kwargs):
    if isinstance(obj, dict) and "global_step" in obj:
        saves.append(obj["global_step"])
        if len(saves) == 2:
            with open(path, "wb") as handle:
                handle.write(b"half a checkpoint")
                handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *args, **kwargs)

torch.save = dying_save
train_teacher(load_config(TeacherRunConfig, None, {overrides!r}))
"""


def _child(script: str, cwd) -> subprocess.CompletedProcess:
    # cwd outside the repository: `python -c` puts it first on sys.path, and the repository's own
    # fewstep/ folder is not the installed package (its subpackages are mapped by setuptools)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=cwd)


def _step(path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_model_dir(directory).denoiser.state_dict()


def _assert_same_weights(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


# ------------------------------------------------------------------------------------------ SIGKILL
def test_teacher_killed_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    train_teacher(load_config(TeacherRunConfig, None, tiny_overrides(reference, *TEACHER)))

    out = tmp_path / "killed"
    overrides = tiny_overrides(out, *TEACHER)
    child = _child(KILL_AT.format(schema="TeacherRunConfig", module="teacher.run", function="train_teacher", step=5,
                                  overrides=overrides), tmp_path)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert _step(out / "checkpoints" / "last.ckpt") == 4 and not (out / "model").exists()
    result = train_teacher(load_config(TeacherRunConfig, None, overrides), resume=True)
    assert result.steps == 8
    _assert_same_weights(out, reference)  # data position, noise, optimiser and EMA all continued exactly


def test_distillation_killed_mid_round_resumes_to_the_same_end(tiny_teacher, tmp_path):
    def overrides(out):
        return [f"teacher.path={tiny_teacher}", f"out_dir={out}", *DATA, "rounds.start_steps=8", "rounds.count=3",
                "rounds.steps_per_round=4", "trainer.batch_size=8", "trainer.checkpoint_every=2",
                "trainer.progress=false", "eval.num_samples=8", "logger.wandb.mode=disabled",
                "optim.warmup_steps=1"]

    reference = tmp_path / "reference"
    expected = run_distill(load_config(DistillRunConfig, None, overrides(reference)))

    out = tmp_path / "killed"
    child = _child(KILL_AT.format(schema="DistillRunConfig", module="distillation.run", function="run_distill", step=7,
                                  overrides=overrides(out)), tmp_path)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert _step(out / "checkpoints" / "last.ckpt") == 6  # round 1 (steps 4-7), after round 0's export
    assert (out / "round_0" / "model").is_dir() and not (out / "round_1").exists()
    result = run_distill(load_config(DistillRunConfig, None, overrides(out)), resume=True)
    assert result.steps == expected.steps == 12
    assert [r["round"] for r in result.rounds] == [r["round"] for r in expected.rounds] == [0, 1, 2]
    for index in range(3):
        _assert_same_weights(out / f"round_{index}" / "model", reference / f"round_{index}" / "model")
    for mine, theirs in zip(result.rounds, expected.rounds):
        assert mine["student_exact_nll"] == pytest.approx(theirs["student_exact_nll"], rel=1e-6)


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, *TEACHER)
    child = _child(KILL_MID_SAVE.format(overrides=overrides), tmp_path)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    checkpoints = out / "checkpoints"
    assert _step(checkpoints / "last.ckpt") == 2  # the half-written step-4 file never replaced it
    assert list(checkpoints.glob(".last.ckpt.*.tmp"))  # the partial write is on disk, beside it
    result = train_teacher(load_config(TeacherRunConfig, None, overrides), resume=True)
    assert result.steps == 8
    assert not list(checkpoints.glob(".*.tmp"))  # resuming cleared it


# ------------------------------------------------------------------------------------------ signals
def _run_until_checkpoint(args: list[str], checkpoint) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    process = subprocess.Popen([sys.executable, "-m", "fewstep", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=checkpoint.parents[2])
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, signum):
    out = tmp_path / "run"
    args = ["teacher", "teacher/markov", *tiny_overrides(out, "trainer.max_steps=100000", "trainer.val_every=100000",
                                                         "trainer.checkpoint_every=5")]
    process = _run_until_checkpoint(args, out / "checkpoints" / "last.ckpt")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-2000:]
    assert f"stopped: {signal.Signals(signum).name} at step" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    step = int(stderr.split(" at step ")[1].split(":")[0])
    assert _step(out / "checkpoints" / "last.ckpt") == step > 0  # the step it stopped at, not an older one
    resumed = subprocess.run([sys.executable, "-m", "fewstep", *args[:-3], f"trainer.max_steps={step + 2}",
                              "trainer.val_every=100000", "trainer.checkpoint_every=5", "--resume"],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"},
                             cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _step(out / "checkpoints" / "last.ckpt") == step + 2


def test_sigterm_during_distillation_saves_the_round_position(tiny_teacher, tmp_path):
    out = tmp_path / "d"
    args = ["distill", "distill/markov", f"teacher.path={tiny_teacher}", f"out_dir={out}", *DATA,
            "rounds.start_steps=8", "rounds.count=2", "rounds.steps_per_round=100000", "trainer.batch_size=8",
            "trainer.checkpoint_every=3", "trainer.progress=false", "eval.enabled=false"]
    process = _run_until_checkpoint(args, out / "checkpoints" / "last.ckpt")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-2000:]
    assert "(round 0)" in stderr
    step = int(stderr.split(" at step ")[1].split(" ")[0])
    assert _step(out / "checkpoints" / "last.ckpt") == step


# ------------------------------------------------------------------------------------------ NaN
class PoisonStudent(L.Callback):
    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == 3:
            with torch.no_grad():
                for p in module.student.parameters():
                    p.fill_(math.nan)


def test_nan_in_distillation_stops_and_keeps_the_last_good_checkpoint(tiny_teacher, tmp_path):
    out = tmp_path / "d"
    cfg = load_config(DistillRunConfig, None, [
        f"teacher.path={tiny_teacher}", f"out_dir={out}", *DATA, "rounds.start_steps=8", "rounds.count=1",
        "rounds.steps_per_round=8", "trainer.batch_size=8", "trainer.checkpoint_every=2", "trainer.progress=false",
        "eval.enabled=false", "logger.wandb.mode=disabled", "optim.ema=0"])
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is kept"):
        run_distill(cfg, callbacks=[PoisonStudent()])
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_resuming_distillation_with_a_different_config_names_the_differences(tiny_teacher, tmp_path):
    out = tmp_path / "d"
    base = [f"teacher.path={tiny_teacher}", f"out_dir={out}", *DATA, "rounds.start_steps=8", "rounds.count=1",
            "rounds.steps_per_round=2", "trainer.batch_size=8", "trainer.progress=false", "eval.enabled=false",
            "logger.wandb.mode=disabled"]
    run_distill(load_config(DistillRunConfig, None, base))
    before = (out / "checkpoints" / "last.ckpt").read_bytes()
    changed = load_config(DistillRunConfig, None, [*base, "rounds.k=4", "loss.divergence=kl_fwd"])
    with pytest.raises(RunError) as error:
        run_distill(changed, resume=True)
    assert "rounds.k: 2 -> 4" in str(error.value) and "loss.divergence: 'kl_bwd' -> 'kl_fwd'" in str(error.value)
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == before
