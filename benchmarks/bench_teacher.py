"""Teacher pretraining benchmark: validation NELBO after a wall-clock budget, and sampler speed.

    python benchmarks/bench_teacher.py teacher/markov --out runs/bench-markov [key=value ...]
    python benchmarks/bench_teacher.py teacher/stdlib --out runs/bench-stdlib [key=value ...]

Trains with `fewstep teacher`'s code path (real Lightning Trainer), then reports: wall time,
steps, validation NELBO (nats/token; bits/byte for corpora; the gap to the exact data entropy on
markov), and the reference ancestral sampler's samples/s at several step counts with the sample
quality beside it (float64 Gumbel noise). Writes `<out>/bench.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fewstep.core.config import load_config
from fewstep.data.sources import build_data
from fewstep.evaluation.quality import markov_quality, unigram_entropy
from fewstep.model.model_dir import load_model_dir
from fewstep.samplers.presets import sample_with_spec
from fewstep.summary import format_table
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{torch.get_num_threads()} threads, {cpu}, torch {torch.__version__}, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")


def sampler_rows(loaded, data, steps: list[int], num_samples: int, repeats: int) -> list[dict]:
    seq_len = data.train.shape[1]
    rows = []
    for n in steps:
        times, out = [], None
        for r in range(repeats):
            out = sample_with_spec("ancestral", loaded.denoiser, num_samples, seq_len, n, seed=r,
                                   noise_schedule=loaded.meta["noise_schedule"], device="cpu")
            times.append(out.wall_time)
        row = {"steps": n, "nfe": out.nfe_per_sequence, "samples_per_s": num_samples / statistics.median(times),
               "tokens_per_s": num_samples * seq_len / statistics.median(times)}
        if data.task is not None:
            row.update(markov_quality(data.task, out.tokens))
        else:
            row["entropy"] = unigram_entropy(out.tokens)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="teacher config (file or shipped name)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument("--out", required=True, help="run directory (must not hold a run)")
    parser.add_argument("--sample-steps", default="8,32,128", help="step counts for the sampler speed table")
    parser.add_argument("--num-samples", type=int, default=64, help="samples per sampler measurement")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per sampler measurement (median)")
    args = parser.parse_intermixed_args()

    cfg = load_config(TeacherRunConfig, args.config, [*args.overrides, f"out_dir={args.out}"])
    start = time.perf_counter()
    result = train_teacher(cfg)
    wall = time.perf_counter() - start
    data = build_data(cfg.data)
    loaded = load_model_dir(result.model_dir)
    report = {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "config": args.config,
        "source": cfg.data.source,
        "parameters": result.num_parameters,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "wall_seconds": wall,
        "val_nelbo": result.val_nelbo,
        "data": data.describe(),
    }
    if "data_entropy_per_token" in data.stats:
        report["data_entropy_per_token"] = data.stats["data_entropy_per_token"]
        report["entropy_rate"] = data.stats["entropy_rate"]
        report["gap"] = result.val_nelbo / data.stats["data_entropy_per_token"] - 1
    if "bytes_per_token" in data.stats:
        report["bits_per_byte"] = result.val_nelbo / data.stats["bytes_per_token"] / math.log(2)
    steps = [int(s) for s in args.sample_steps.split(",")]
    report["sampler"] = sampler_rows(loaded, data, steps, args.num_samples, args.repeats)
    Path(args.out, "bench.json").write_text(json.dumps(report, indent=2, default=str))

    summary = {k: report[k] for k in ("source", "parameters", "steps", "train_seconds", "val_nelbo")}
    for key in ("data_entropy_per_token", "gap", "bits_per_byte"):
        if key in report:
            summary[key] = report[key]
    print(format_table([summary], list(summary)))
    print()
    columns = ["steps", "nfe", "samples_per_s", "tokens_per_s"] + [
        c for c in ("exact_nll", "invalid_rate", "entropy") if c in report["sampler"][0]]
    print(format_table(report["sampler"], columns))
    print(f"\nmachine: {report['machine']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
