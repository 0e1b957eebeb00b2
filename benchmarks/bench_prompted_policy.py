"""A learned policy head against Fast-dLLM's threshold on prompts: forward passes at equal accuracy.

    python benchmarks/bench_prompted_policy.py --model teacher=runs/teacher-anagram/model \
        --model student=runs/distill-anagram/round_0/model --out runs/bench-policy

For every model and seed, a copy of the model directory learns a policy head with `fewstep schedule`
(what=policy, policy.schedule=cap: the head alone decides how many tokens each step finalises, at
least one, the step budget a cap, exactly where Fast-dLLM's threshold rule decides; imitation of the
model's own one-token-per-step answers to training prompts, then GRPO with accuracy x speed as the
reward, temperature 0). Then one `fewstep bench` per copy sweeps the threshold of both rules,
`fast-dllm:threshold=T` and `learned:threshold=T`, on the validation prompts (never seen by the
schedule), greedy. Each rule's accuracy-against-forward-passes curve gives:
- the fewest forward passes per prompt at which it keeps `--keep` x the model's best accuracy of the
  sweep (the deployment point, as `fewstep tune --target accuracy:K` picks it);
- the AUP (d3LLM) of its points, y_max the best accuracy of the model's sweep.
Fast-dLLM's rule is deterministic at temperature 0, so its rows come from the first seed's run; the
head's spread over seeds is its training's. Writes `<out>/policy.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
from pathlib import Path

import torch

from fewstep.core.config import load_config
from fewstep.evaluation.aup import aup
from fewstep.schedule.config import ScheduleRunConfig
from fewstep.schedule.run import run_schedule_config
from fewstep.summary import format_table
from fewstep.tradeoff.bench import run_bench
from fewstep.tradeoff.config import BenchModel, BenchRunConfig

HEAD_FILES = ("scheduler_config.json", "policy_head.safetensors")  # what `fewstep schedule` adds to the copy


def learn(source: Path, copy: Path, seed: int, args: argparse.Namespace) -> None:
    """Copy the model directory and learn the head into the copy (a finished copy is reused)."""
    if (copy / "scheduler_config.json").is_file():
        return
    if copy.exists():  # an unfinished copy: delete it only if it holds nothing but the source's files and the head's
        stray = sorted({p.name for p in copy.iterdir()}
                       - {p.name for p in source.iterdir()} - set(HEAD_FILES))
        if stray:
            raise SystemExit(f"error: {copy} holds files that are not a copy of {source} ({', '.join(stray[:3])}); "
                             "it is not deleted. Remove it yourself or give another --out")
        shutil.rmtree(copy)
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns(*HEAD_FILES))
    run_schedule_config(load_config(ScheduleRunConfig, None, [
        f"model={copy}", f"steps={args.steps}", "what=policy", "policy.schedule=cap", "temperature=0",
        f"seed={seed}", f"policy.rollouts={args.rollouts}", f"policy.heldout_rollouts={args.rollouts // 2}",
        f"allocation.num_samples={args.rollouts // 2}", f"allocation.heldout_samples={args.rollouts}",
        f"policy.grpo.iterations={args.grpo}", "policy.grpo.prompts=32", "progress=false", *args.overrides]))


def sweep(copy: Path, out: Path, seed: int, thresholds: list[float], rules: list[str], args: argparse.Namespace
          ) -> list[dict]:
    cfg = BenchRunConfig(out_dir=str(out), models=[BenchModel("model", str(copy))],
                         samplers=[f"{rule}:threshold={t}" for rule in rules for t in thresholds],
                         steps=[args.steps], num_samples=args.num_prompts, repeats=args.repeats, seed=seed,
                         temperature=0.0)
    cfg.logger.wandb.mode = "disabled"
    return run_bench(cfg, progress=False, overwrite=True)["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every `fewstep schedule` run")
    parser.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR (repeatable)")
    parser.add_argument("--out", required=True, help="benchmark directory (finished copies are reused)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the head's training")
    parser.add_argument("--thresholds", default="0.3,0.5,0.7,0.8,0.9,0.95,0.99")
    parser.add_argument("--steps", type=int, default=16, help="the step budget (a cap for both rules)")
    parser.add_argument("--keep", type=float, default=0.99, help="share of the best accuracy a deployment keeps")
    parser.add_argument("--rollouts", type=int, default=256, help="imitation rollouts (training prompts)")
    parser.add_argument("--grpo", type=int, default=30, help="GRPO iterations after imitation")
    parser.add_argument("--num-prompts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    seeds = [int(s) for s in args.seeds.split(",")]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    results: dict[str, dict] = {}
    for item in args.model:
        name, _, path = item.partition("=")
        rows: dict[str, list[list[dict]]] = {"fast-dllm": [], "learned": []}
        for seed in seeds:
            copy = out / f"{name}-seed{seed}" / "model"
            learn(Path(path), copy, seed, args)
            rules = ["fast-dllm", "learned"] if seed == seeds[0] else ["learned"]
            measured = sweep(copy, out / f"{name}-seed{seed}" / "bench", seed, thresholds, rules, args)
            for rule in rules:
                rows[rule].append([r for r in measured if r["sampler"].startswith(rule + ":")])
        results[name] = rows
    table, summary = [], []
    for name, rows in results.items():
        best = max(100 * r["quality"]["accuracy"] for runs in rows.values() for run in runs for r in run)
        for rule, runs in rows.items():
            per_seed = []
            for run in runs:
                points = [(100 * r["quality"]["accuracy"], r["nfe"], r["tokens_per_forward"]) for r in run]
                kept = [nfe for acc, nfe, _ in points if acc >= args.keep * best]
                per_seed.append({"nfe_at_kept": min(kept) if kept else float("nan"),
                                 "aup": aup([p[2] for p in points], [p[0] for p in points], y_max=best)})
            for i, t in enumerate(thresholds):
                accs = [100 * run[i]["quality"]["accuracy"] for run in runs]
                nfes = [run[i]["nfe"] for run in runs]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                table.append({"model": name, "rule": rule, "threshold": t, "seeds": len(runs),
                              "accuracy_%": f"{statistics.fmean(accs):.1f} ± {sd:.1f}",
                              "nfe": f"{statistics.fmean(nfes):.2f}",
                              "tokens_per_forward": f"{statistics.fmean(run[i]['tokens_per_forward'] for run in runs):.2f}",
                              "answer_entropy": round(statistics.fmean(run[i]["quality"]["entropy"] for run in runs), 3)})
            kept = [s["nfe_at_kept"] for s in per_seed]
            aups = [s["aup"] for s in per_seed]
            summary.append({"model": name, "rule": rule, "best_accuracy_%": round(best, 1),
                            f"nfe_at_{args.keep:g}x_best": f"{statistics.fmean(kept):.2f}"
                            + (f" ± {statistics.stdev(kept):.2f}" if len(kept) > 1 else ""),
                            "aup": f"{statistics.fmean(aups):.1f}" + (f" ± {statistics.stdev(aups):.1f}" if len(aups) > 1 else "")})
    payload = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "seeds": seeds, "thresholds": thresholds, "rows": table, "summary": summary, "raw": results}
    (out / "policy.json").write_text(json.dumps(payload, indent=2))
    print(format_table(table, list(table[0])))
    print()
    print(format_table(summary, list(summary[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
