"""Prompted distillation benchmark: accuracy against tokens per forward pass on the embedded `anagram` task.

    python benchmarks/bench_prompted.py --teacher runs/teacher-anagram --out runs/bench-prompted

The teacher is a `fewstep teacher configs/teacher/anagram.yaml` run (trained here first with
`--train-teacher`). For every seed it runs `fewstep distill configs/distill/anagram.yaml` (trajectory
distillation on 8 teacher answers per training prompt with reference selection; a finished run is reused), then one
`fewstep bench` over the teacher (undistilled) and each round's student x the samplers x the step
counts on the validation prompts: exact-match accuracy (the task's checker), response tokens per forward
pass, response tokens/s and each curve's AUP (d3LLM). Reports mean and standard deviation over the seeds
(the teacher's rows repeat per seed: its spread is the prompts' sampling noise only) and writes
`<out>/bench.json` and a Markdown table.

`--cycles N` adds self-distillation: N more distillations per seed, each with the previous one's last
student as its teacher (`teacher.path=<run>/round_<last>/model`, exactly what a user runs), so each
student learns its predecessor's own answers; every cycle's students are benched too
(`student-c<cycle>-r<round>`). A seed's finished bench is reused too, so seeds can run in separate
processes (`--seeds 0`, `--seeds 1`, ...) and a last `--seeds 0,1,2` only combines them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fewstep.core.config import load_config
from fewstep.distillation.config import DistillRunConfig
from fewstep.distillation.run import run_distill
from fewstep.summary import format_table
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher
from fewstep.tradeoff.bench import run_bench
from fewstep.tradeoff.config import BenchModel, BenchRunConfig


def distil(teacher: Path, out: Path, seed: int, overrides: list[str], cycle: int = 0) -> Path:
    run = out / (f"distill-seed{seed}" + (f"-cycle{cycle}" if cycle else ""))
    if not (run / "model" / "fewstep.json").exists():
        cfg = load_config(DistillRunConfig, "distill/anagram",
                          [f"teacher.path={teacher}", f"out_dir={run}", f"trainer.seed={seed}",
                           "logger.wandb.mode=disabled", *overrides])
        began = time.perf_counter()
        run_distill(cfg)
        print(f"distillation seed {seed} cycle {cycle}: {time.perf_counter() - began:.0f} s", flush=True)
    return run


def last_student(run: Path) -> Path:
    return sorted(run.glob("round_*/model"), key=lambda p: int(p.parent.name.split("_")[1]))[-1]


def finished_bench(cfg: BenchRunConfig) -> list[dict] | None:
    """The rows of an earlier bench in `cfg.out_dir` run with exactly this config (its saved config.yaml:
    the same models and paths, samplers, step counts, prompts, repeats and seed), else None."""
    out = Path(cfg.out_dir)
    if not (out / "tradeoff.json").exists() or load_config(BenchRunConfig, out / "config.yaml") != cfg:
        return None
    print(f"reusing {out / 'tradeoff.json'}", flush=True)
    return json.loads((out / "tradeoff.json").read_text())["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every distillation run")
    parser.add_argument("--teacher", required=True, help="the anagram teacher's run directory")
    parser.add_argument("--train-teacher", action="store_true", help="train it first (configs/teacher/anagram.yaml)")
    parser.add_argument("--out", required=True, help="benchmark directory (finished runs are reused)")
    parser.add_argument("--seeds", default="0,1,2", help="distillation seeds")
    parser.add_argument("--samplers", default="llada,fast-dllm")
    parser.add_argument("--steps", default="1,2,4,8,16")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cycles", type=int, default=0, help="self-distillation cycles after the first distillation")
    args = parser.parse_args()
    out, teacher = Path(args.out), Path(args.teacher)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.train_teacher and not (teacher / "model" / "fewstep.json").exists():
        began = time.perf_counter()
        train_teacher(load_config(TeacherRunConfig, "teacher/anagram", [f"out_dir={teacher}",
                                                                          "logger.wandb.mode=disabled"]))
        print(f"teacher: {time.perf_counter() - began:.0f} s", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    for seed in seeds:
        runs[seed] = [distil(teacher, out, seed, args.overrides)]
        for cycle in range(1, args.cycles + 1):
            runs[seed].append(distil(last_student(runs[seed][-1]), out, seed, args.overrides, cycle))
    per_seed = {}
    for seed, chain in runs.items():
        models = [BenchModel("teacher", str(teacher / "model"))]
        for cycle, run in enumerate(chain):
            prefix = f"student-c{cycle}-" if cycle else "student-"
            models += [BenchModel(f"{prefix}r{p.parent.name.split('_')[1]}", str(p))
                       for p in sorted(run.glob("round_*/model"))]
        cfg = BenchRunConfig(out_dir=str(out / f"bench-seed{seed}"), models=models,
                             samplers=args.samplers.split(","), steps=[int(s) for s in args.steps.split(",")],
                             num_samples=args.num_prompts, repeats=args.repeats, seed=seed)
        cfg.logger.wandb.mode = "disabled"
        per_seed[seed] = finished_bench(cfg) or run_bench(cfg, progress=False, overwrite=True)["rows"]
    table = []
    order = {name: i for i, name in enumerate(dict.fromkeys(r["model"] for rows in per_seed.values() for r in rows))}
    keys = sorted({(r["model"], r["sampler"], r["steps"]) for rows in per_seed.values() for r in rows},
                  key=lambda k: (order[k[0]], k[1], k[2]))  # models in the order they were made
    for model, sampler, steps in keys:
        cells = [r for rows in per_seed.values() for r in rows
                 if (r["model"], r["sampler"], r["steps"]) == (model, sampler, steps)]

        def stat(get, cells=cells):
            values = [get(r) for r in cells]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return statistics.fmean(values), sd

        acc, acc_sd = stat(lambda r: 100 * r["quality"]["accuracy"])
        tpf, tpf_sd = stat(lambda r: r["tokens_per_forward"])
        aup, aup_sd = stat(lambda r: r["quality"]["aup"])
        ent, _ = stat(lambda r: r["quality"]["entropy"])
        tps, _ = stat(lambda r: r["tokens_per_s"])
        nfe, _ = stat(lambda r: r["nfe"])
        table.append({"model": model, "sampler": sampler, "steps": steps, "nfe": round(nfe, 2),
                      "accuracy_%": f"{acc:.1f} ± {acc_sd:.1f}", "tokens_per_forward": f"{tpf:.2f} ± {tpf_sd:.2f}",
                      "answer_entropy": round(ent, 3), "tokens_per_s": round(tps), "aup": f"{aup:.1f} ± {aup_sd:.1f}"})
    payload = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "seeds": seeds, "rows": table, "per_seed": per_seed}
    (out / "bench.json").write_text(json.dumps(payload, indent=2))
    print(format_table(table, list(table[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
