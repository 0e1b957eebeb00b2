"""Distillation benchmark: each round's student against its teacher and the undistilled teacher.

    python benchmarks/bench_distill.py --teacher runs/teacher-markov --out runs/bench-distill \
        --variants sdtt:kl_bwd,sdtt:kl_fwd,trajectory:kl_bwd [key=value ...]

For every variant (method:divergence) it runs `fewstep distill` (configs/distill/<source>.yaml plus
the overrides; a finished variant is reused), then samples with float64 Gumbel noise over several
seeds: the teacher at `--teacher-steps` (e.g. 1024 and 128), the undistilled teacher and each
round's student at the rounds' step counts. With `--train-seeds 0,1,2` every variant is distilled once
per training seed (`trainer.seed`; seed 0 keeps the plain directory, seed N adds `-seedN`), and a
student's spread is over training seeds (each one the mean over the sampling seeds); finished runs are
reused, so seeds can run in separate processes and a last call combines them. Reports mean and
standard deviation over seeds of the
exact NLL per token, invalid-transition rate and unigram entropy (markov), or for corpora the
teacher's NELBO of the samples, the generative NLL under `--evaluator` (an autoregressive model from
`fewstep evaluator`), the fraction of Python lines that parse (stdlib) and entropy. `--sampler`
picks the sampler every row uses (`ancestral`, the MDLM reference, by default; e.g. `dilated`).
Writes `<out>/bench.json` (`bench-<sampler>.json` for another sampler) and prints a Markdown table.
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
from fewstep.data.sources import build_data
from fewstep.distillation.config import DistillRunConfig
from fewstep.distillation.run import run_distill
from fewstep.evaluation.quality import sample_quality
from fewstep.model.model_dir import load_model_dir
from fewstep.summary import format_table
from fewstep.tradeoff.bench import sampler_fn
from fewstep.tradeoff.pareto import sample_quality_row


def evaluate(model, label: str, steps: int, data, reference, seeds: list[int], num_samples: int,
             schedule: str, sampler: str = "ancestral", evaluator=None, temperature: float = 1.0) -> dict:
    sample, _ = sampler_fn(sampler, torch.device("cpu"), schedule, temperature=temperature)
    runs = []
    for seed in seeds:
        tokens, _, seconds = sample(model, num_samples, data.train.shape[1], steps, 1000 + seed)
        quality = sample_quality(tokens, data, reference, schedule)
        if data.task is None:
            quality.update(sample_quality_row(tokens, data, evaluator))
        runs.append({**quality, "tokens_per_s": tokens.numel() / seconds})
    row = {"model": label, "steps": steps}
    for key in runs[0]:
        values = [r[key] for r in runs]
        row[key] = statistics.fmean(values)
        row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return row


def over_train_seeds(rows: list[dict]) -> dict:
    """One row per training seed (means over sampling seeds) -> their mean, and sd over training seeds;
    a single training seed keeps its sd over sampling seeds."""
    if len(rows) == 1:
        return rows[0]
    out = {"model": rows[0]["model"], "steps": rows[0]["steps"], "train_seeds": len(rows)}
    for key in rows[0]:
        if key in ("model", "steps") or key.endswith("_sd"):
            continue
        values = [r[key] for r in rows]
        out[key] = statistics.fmean(values)
        out[f"{key}_sd"] = statistics.stdev(values)
    return out


def fmt(row: dict, key: str) -> str:
    return f"{row[key]:.4f} ± {row[key + '_sd']:.4f}" if key in row else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every distillation run")
    parser.add_argument("--teacher", required=True, help="teacher run out_dir or model directory")
    parser.add_argument("--out", required=True, help="benchmark directory (finished variants are reused)")
    parser.add_argument("--config", default=None, help="distill config (default distill/<data source>)")
    parser.add_argument("--variants", default="sdtt:kl_bwd,sdtt:kl_fwd,trajectory:kl_bwd")
    parser.add_argument("--teacher-steps", default="1024,128", help="teacher reference step counts")
    parser.add_argument("--student-steps", default="",
                        help="more step counts for the last round's students (and the undistilled teacher)")
    parser.add_argument("--seeds", default="0,1,2", help="sampling seeds of every row")
    parser.add_argument("--train-seeds", default="0",
                        help="distillation seeds (trainer.seed): each variant is trained once per seed")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--sampler", default="ancestral",
                        help="sampler of every row: ancestral (MDLM reference), a preset (dilated, llada, eb, ...) "
                             "or POLICY[+FALLBACK][/SCHEDULE]")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of every row (below 1 sharpens: compare a student's entropy loss "
                             "with the teacher's at the same entropy)")
    parser.add_argument("--evaluator", default=None,
                        help="autoregressive evaluator directory (fewstep evaluator): generative NLL of corpus samples")
    args = parser.parse_intermixed_args()

    teacher = load_model_dir(args.teacher)
    source = teacher.meta["data"]["source"]
    config = args.config or f"distill/{source}"
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    report = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
              "no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(), "variants": {}}

    train_seeds = [int(s) for s in args.train_seeds.split(",")]
    first_cfg = None
    for variant in args.variants.split(","):
        method, divergence = variant.split(":")
        runs = []
        for train_seed in train_seeds:
            name = variant.replace(":", "-") + (f"-seed{train_seed}" if train_seed else "")
            cfg = load_config(DistillRunConfig, config, [*args.overrides, f"teacher.path={args.teacher}",
                                                         f"method={method}", f"loss.divergence={divergence}",
                                                         f"trainer.seed={train_seed}", f"out_dir={out / name}"])
            first_cfg = first_cfg or cfg
            start = time.perf_counter()
            if not (Path(cfg.out_dir) / "model" / "fewstep.json").exists():
                resume = (Path(cfg.out_dir) / "checkpoints" / "last.ckpt").exists()
                run_distill(cfg, resume=resume)
            runs.append({"seed": train_seed, "config": cfg.out_dir, "distill_seconds": time.perf_counter() - start})
        report["variants"][variant] = {"runs": runs}

    # corpora: the teacher's own tokenizer, as the distillation runs used
    data = build_data(first_cfg.data, tokenizer=None if first_cfg.data.source == "markov" else teacher.tokenizer)
    evaluator = None
    if args.evaluator:
        from fewstep.evaluation.autoregressive import load_evaluator

        evaluator = load_evaluator(args.evaluator)
    run = dict(sampler=args.sampler, evaluator=evaluator, temperature=args.temperature)
    schedule = teacher.meta.get("noise_schedule", "loglinear")
    reference = teacher.denoiser
    rows = [evaluate(teacher.denoiser, "teacher", n, data, reference, seeds, args.num_samples, schedule, **run)
            for n in (int(s) for s in args.teacher_steps.split(","))]
    round_steps = [first_cfg.rounds.steps_for(r) for r in range(first_cfg.rounds.count)]
    # (round, steps) per student: each round at its own count, the last one also at --student-steps
    # a step count the last round already runs at is not measured twice
    extra = [n for n in dict.fromkeys(int(s) for s in args.student_steps.split(",") if s) if n != round_steps[-1]]
    plan = [*enumerate(round_steps), *((len(round_steps) - 1, n) for n in extra)]
    rows += [evaluate(teacher.denoiser, "undistilled teacher", n, data, reference, seeds, args.num_samples, schedule,
                      **run) for n in dict.fromkeys([*round_steps, *extra])]
    for variant, info in report["variants"].items():
        for r, n in plan:
            per_seed = [evaluate(load_model_dir(Path(one["config"]) / f"round_{r}" / "model").denoiser,
                                 f"{variant} round {r}", n, data, reference, seeds, args.num_samples, schedule, **run)
                        for one in info["runs"]]
            rows.append(over_train_seeds(per_seed))
    report["rows"] = rows
    report["sampler"] = args.sampler
    report["temperature"] = args.temperature
    out.mkdir(parents=True, exist_ok=True)
    name = "bench.json" if args.sampler == "ancestral" else f"bench-{args.sampler.replace('/', '_')}.json"
    if extra:
        name = name.replace(".json", f"-steps-{'_'.join(map(str, extra))}.json")
    if args.temperature != 1.0:
        name = name.replace(".json", f"-t{args.temperature:g}.json")
    (out / name).write_text(json.dumps(report, indent=2))

    metric = "exact_nll" if data.task is not None else ("gen_nll" if evaluator is not None else "teacher_nelbo")
    extra = ["invalid_rate"] if data.task is not None else (
        ["teacher_nelbo", "python_lines_ok"] if evaluator is not None else [])
    table = [{"model": r["model"], "steps": r["steps"], **{k: fmt(r, k) for k in [metric, *extra, "entropy"]},
              "tokens_per_s": f"{r['tokens_per_s']:.0f}"} for r in rows]
    print(format_table(table, ["model", "steps", metric, *extra, "entropy", "tokens_per_s"]))
    spread = (f"students: mean ± sd over training seeds {train_seeds} (each the mean over sampling seeds {seeds}); "
              "teacher rows: over sampling seeds" if len(train_seeds) > 1 else f"mean ± sd over seeds {seeds}")
    print(f"\nsampler {args.sampler}, temperature {args.temperature:g}; {spread}, {args.num_samples} samples each; "
          f"machine: {report['machine']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
