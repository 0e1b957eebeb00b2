"""Training throughput per device: teacher pretraining and SDTT distillation, side by side.

    python benchmarks/bench_cluster.py --out runs/bench-cluster                       # GPU, bf16, ~110M
    python benchmarks/bench_cluster.py --out runs/bench-cluster --with cluster/ddp    # every GPU of a node
    python benchmarks/bench_cluster.py --out /tmp/bc --tiny                           # CPU smoke run

Trains a ModernBERT denoiser (hidden 768, 12 layers: ~110M parameters with the stdlib BPE
vocabulary) on the embedded `stdlib` corpus with `fewstep teacher`'s code path, then distils it
with `fewstep distill`'s (student = a copy, frozen teacher beside it). Each phase's optimiser steps
are timed by a callback after `--warmup` steps (compilation, cuDNN autotuning); the median step
time gives tokens/s per device = global batch x length / step time / devices. Writes
`<out>/bench_cluster.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from fewstep.core.config import load_config
from fewstep.distillation.config import DistillRunConfig
from fewstep.distillation.run import run_distill
from fewstep.summary import format_table
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher

MODEL = ["model.hidden_size=768", "model.num_layers=12", "model.num_heads=12", "model.intermediate_size=1152",
         "model.local_attention=128"]
TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]


class StepTimer(L.Callback):
    """Wall time of each optimiser step (synchronised on GPU), after `warmup` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._start = 0.0
        self.devices = 1

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, *args) -> None:
        self.devices = trainer.world_size
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self._sync()
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._start)


def row(phase: str, timer: StepTimer, batch: int, seq_len: int, params: int) -> dict:
    step, devices = statistics.median(timer.times), timer.devices
    return {"phase": phase, "parameters_M": round(params / 1e6, 1), "devices": devices, "global_batch": batch,
            "seq_len": seq_len, "median_step_s": round(step, 4), "steps_timed": len(timer.times),
            "tokens_per_s_per_device": round(batch * seq_len / step / devices, 1),
            "peak_memory_GB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (teacher/ and distill/ runs inside)")
    parser.add_argument("--with", dest="layers", action="append", default=[], help="cluster config layer(s)")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps per phase")
    parser.add_argument("--warmup", type=int, default=10, help="steps not timed")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks the script runs")
    parser.add_argument("overrides", nargs="*", help="extra key=value for both phases")
    args = parser.parse_args()
    out = Path(args.out)
    model = TINY if args.tiny else MODEL
    device = ["trainer.accelerator=cpu", "trainer.precision=32-true"] if args.tiny else ["trainer.precision=bf16-mixed"]
    common = [f"data.seq_len={args.seq_len}", f"trainer.batch_size={args.batch_size}", "trainer.progress=false",
              "logger.wandb.mode=disabled", f"trainer.checkpoint_every={args.steps}", *device, *args.overrides]
    layers = ["teacher/stdlib", *args.layers]

    teacher_cfg = load_config(TeacherRunConfig, layers, [
        f"out_dir={out / 'teacher'}", *model, *common, f"trainer.max_steps={args.steps}",
        f"trainer.val_every={args.steps}", "trainer.val_batches=1", "optim.ema=0"])
    timer = StepTimer(args.warmup)
    teacher = train_teacher(teacher_cfg, callbacks=[timer])  # every process runs both phases
    rows = [row("teacher (MDLM NELBO)", timer, args.batch_size, args.seq_len, teacher.num_parameters)]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    distill_cfg = load_config(DistillRunConfig, [str(layer) for layer in args.layers] or None, [
        f"out_dir={out / 'distill'}", f"teacher.path={out / 'teacher'}", *common, "data.source=stdlib",
        "rounds.count=1", f"rounds.steps_per_round={args.steps}", "rounds.start_steps=16", "eval.enabled=false",
        "optim.ema=0"])
    timer = StepTimer(args.warmup)
    if not run_distill(distill_cfg, callbacks=[timer]).is_global_zero:
        return 0
    rows.append(row("distillation (SDTT, k=2)", timer, args.batch_size, args.seq_len, teacher.num_parameters))
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    (out / "bench_cluster.json").write_text(json.dumps({"device": device_name, "rows": rows}, indent=2))
    print(f"\ndevice: {device_name}")
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
