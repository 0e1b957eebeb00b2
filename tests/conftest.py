"""Shared fixtures: tiny configs, offline W&B, and a small trained teacher reused across tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton reads TRITON_INTERPRET when it is imported, and Lightning imports it: without a GPU the
# kernel tests need the interpreter, so it is switched on here, before any test module is imported.
if not any(Path("/dev").glob("nvidia[0-9]*")):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = [
    "data.source=markov",
    "data.seq_len=16",
    "data.num_train=256",
    "data.num_val=64",
    "data.markov.num_states=8",
    "data.markov.branching=3",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "optim.warmup_steps=2",
    "trainer.batch_size=16",
    "trainer.val_batches=2",
    "trainer.log_every=1",
    "trainer.progress=false",
    "num_print_samples=2",
    "sample_steps=8",
]


def tiny_overrides(out_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"out_dir={out_dir}", *extra]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed `fewstep` console script the way a user would."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    exe = Path(sys.executable).with_name("fewstep")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "fewstep"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A teacher trained for a few steps on a tiny markov task; returns its out_dir."""
    from fewstep.core.config import load_config
    from fewstep.teacher.config import TeacherRunConfig
    from fewstep.teacher.run import train_teacher

    out = tmp_path_factory.mktemp("teacher") / "run"
    cfg = load_config(TeacherRunConfig, None, tiny_overrides(out, "trainer.max_steps=6", "trainer.val_every=3"))
    train_teacher(cfg)
    return out


import lightning as L  # noqa: E402  (after TRITON_INTERPRET is set above: Lightning imports Triton)


class Crash(RuntimeError):
    """The simulated crash of `StopAt`."""


class StopAt(L.Callback):
    """Simulate a crash after `step` optimiser steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise Crash("simulated crash")
