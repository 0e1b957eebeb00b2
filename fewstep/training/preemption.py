"""SIGTERM / SIGUSR1: write a checkpoint at the end of the current step, then stop cleanly.

Cluster schedulers send SIGTERM before killing a job (preemption, `scancel`) and SLURM sends the
signal chosen with `#SBATCH --signal=USR1@120` shortly before the time limit. Either one makes the
run finish its optimiser step, save `checkpoints/last.ckpt` (atomically), close its loggers and
return; with `trainer.requeue` under SLURM, SIGUSR1 also requeues the job, which then resumes from
that checkpoint. Every process stops at the same step: the flag is shared before anyone acts.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = [
    "PreemptionCheckpoint",
    "slurm_plugins",
]

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCheckpoint(L.Callback):
    """Turn SIGTERM / SIGUSR1 into: finish the step, save `last.ckpt`, stop (and requeue under SLURM).

    It also writes `last.ckpt` when training ends normally."""

    def __init__(self, checkpoint_path: str | Path, requeue: bool = False) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.requeue = requeue
        self.received: int | None = None
        self.stopped_by: str | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ handlers
    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum  # acted on at the end of the step, never inside it

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = {signum: signal.getsignal(signum) for signum in SIGNALS}  # restored at teardown

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # installed after Lightning's own handlers (which stop without saving), replacing them
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # ------------------------------------------------------------------ acting
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        signum = self.received or 0
        if trainer.world_size > 1:  # any process signalled: all stop at this step (one host sync per step)
            got = torch.tensor(float(signum), device=pl_module.device)
            signum = int(trainer.strategy.reduce(got, reduce_op="max").item())
        if signum == 0 or trainer.should_stop:
            return
        trainer.save_checkpoint(self.checkpoint_path)  # every rank calls it; rank 0 writes, atomically
        trainer.should_stop = True
        self.stopped_by = signal.Signals(signum).name
        if trainer.is_global_zero:
            print(f"\n{self.stopped_by}: saved {self.checkpoint_path} at step {trainer.global_step}; "
                  "stopping. Resume with --resume.", flush=True)
        if signum == signal.SIGUSR1 and self.requeue and trainer.is_global_zero:
            _requeue()


    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The finished state too (periodic saves fall on multiples of checkpoint_every): a later
        --resume with a larger max_steps continues from the end, not from an older step."""
        if self.stopped_by is None:
            trainer.save_checkpoint(self.checkpoint_path)


def _requeue() -> None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        print("SIGUSR1 without a SLURM job id: not requeued", flush=True)
        return
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    state = "requeued" if result.returncode == 0 else f"requeue failed: {result.stderr.strip()}"
    print(f"SLURM job {job} {state}", flush=True)


def slurm_plugins() -> list[Any]:
    """Under SLURM, Lightning's own auto-requeue is switched off: this module's callback does it."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
