"""Samplers benchmark: quality versus NFE for every policy and schedule, fixed and learned.

    python benchmarks/bench_samplers.py --oracle --model teacher=/tmp/bench/markov/model \
        --out runs/bench-samplers [--steps 4,8,16,32,64] [--num-samples 128] [--learn-steps 8,16]

For each denoiser (the exact `markov` oracle, and each model directory given as NAME=DIR) and each
step budget: exact NLL per token, invalid-transition rate and unigram entropy of the samples
(float64 Gumbel noise), NFE per sequence. The learned parts are learned in-process at the budgets
in --learn-steps (allocation searched with --alloc-policy; the policy head by imitation, once per
denoiser) and scored on seeds the search never saw. Writes `<out>/bench.json` and `<out>/table.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fewstep.core.config import load_config
from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle
from fewstep.evaluation.quality import markov_quality, task_for
from fewstep.model.model_dir import load_model_dir
from fewstep.samplers import Sampler, make_policy, make_step_schedule
from fewstep.schedule.config import ScheduleRunConfig
from fewstep.schedule.run import learn_schedule

# label -> (policy, schedule, policy options)
HEURISTICS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "random / ancestral (MDLM)": ("random", "ancestral", {}),
    "random / loglinear": ("random", "loglinear", {}),
    "random / linear": ("random", "linear", {}),
    "random / cosine": ("random", "cosine", {}),
    "dilated / loglinear (DUS)": ("dilated", "loglinear", {}),
    "dilated / cosine": ("dilated", "cosine", {}),
    "dilated / geometric": ("dilated", "geometric", {}),
    "confidence / loglinear (LLaDA)": ("confidence", "loglinear", {}),
    "margin / loglinear": ("margin", "loglinear", {}),
    "entropy / loglinear": ("entropy", "loglinear", {}),
    "threshold 0.9 / loglinear (Fast-dLLM)": ("threshold", "loglinear", {"threshold": 0.9}),
    "threshold 0.9, random fallback / loglinear": (
        "threshold",
        "loglinear",
        {"threshold": 0.9, "fallback": "random"},
    ),
    "eb 0.1 / loglinear (EB-sampler)": ("eb", "loglinear", {"gamma": 0.1}),
    "eb 0.1, random fallback / loglinear": ("eb", "loglinear", {"gamma": 0.1, "fallback": "random"}),
    "eb 0.1, dilated fallback / loglinear": ("eb", "loglinear", {"gamma": 0.1, "fallback": "dilated"}),
}
ADAPTIVE = ("threshold", "eb")  # policies whose NFE is their own: also run at one step per token
EVAL_SEED = 1_000  # the learned parts are searched and trained on seeds 0.. and rollouts 0.., never this one


def machine() -> str:
    return f"{torch.get_num_threads()} torch threads, {platform.machine()}, torch {torch.__version__}, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    )


def measure(
    model: torch.nn.Module,
    sampler: Sampler,
    chain: MarkovChain,
    num: int,
    seq_len: int,
    steps: int,
    batch_size: int,
) -> dict[str, Any]:
    out = sampler.generate(model, num, seq_len, steps, seed=EVAL_SEED, batch_size=batch_size)
    return {
        "steps": steps,
        "nfe": out.nfe_per_sequence,
        "seconds": round(out.wall_time, 2),
        **markov_quality(chain, out.tokens),
    }


def bench_denoiser(
    name: str, model: torch.nn.Module, chain: MarkovChain, seq_len: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    data = chain.sample(args.num_samples, seq_len, seed=EVAL_SEED)
    rows.append(
        {
            "denoiser": name,
            "sampler": "data (held-out samples of the chain)",
            "steps": None,
            "nfe": None,
            **markov_quality(chain, data),
        }
    )
    vocab = chain.num_states + 1
    for label, (policy, schedule, options) in HEURISTICS.items():
        if args.policies and policy not in args.policies:
            continue
        sampler = Sampler(make_step_schedule(schedule), make_policy(policy, **options))
        adaptive = args.adaptive and policy in ADAPTIVE and seq_len not in args.steps
        budgets = [*args.steps, seq_len] if adaptive else args.steps
        for steps in budgets:
            rows.append(
                {
                    "denoiser": name,
                    "sampler": label,
                    **measure(model, sampler, chain, args.num_samples, seq_len, steps, args.batch_size),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    for n, steps in enumerate(args.learn_steps):
        common = [
            f"steps={steps}",
            f"allocation.iterations={args.iterations}",
            f"batch_size={args.batch_size}",
            f"allocation.num_samples={args.search_samples}",
            f"policy.rollouts={args.rollouts}",
            f"policy.heldout_rollouts={args.rollouts // 2}",
            f"policy.grpo.iterations={args.grpo}",
        ]
        began = time.perf_counter()
        cfg = load_config(
            ScheduleRunConfig,
            None,
            ["model=in-process", "what=allocation", f"allocation.policy={args.alloc_policy}", *common],
        )
        alloc_schedule, _, alloc_report = learn_schedule(model, cfg, seq_len, vocab, chain, data)
        learned = {
            f"learned allocation / {args.alloc_policy}": Sampler(
                alloc_schedule, make_policy(args.alloc_policy)
            ),
        }
        extra: dict[str, Any] = {"allocation": {args.alloc_policy: alloc_report["allocation"]}}
        head_budgets: list[int] = []
        if args.head:
            cfg = load_config(ScheduleRunConfig, None, ["model=in-process", "what=both", *common])
            schedule, head_policy, report = learn_schedule(model, cfg, seq_len, vocab, chain, data)
            extra = {"policy_head": report["policy"],
                     "allocation": {**extra["allocation"], "head": report["allocation"]}}
            learned[f"learned head (at {steps}) / learned allocation"] = Sampler(schedule, head_policy)
            budgets = [*args.steps, seq_len] if args.adaptive and seq_len not in args.steps else args.steps
            head_budgets = budgets if n == 0 else [steps]
        extra["learn_seconds"] = round(time.perf_counter() - began, 1)
        for label, sampler in learned.items():
            rows.append(
                {
                    "denoiser": name,
                    "sampler": label,
                    **extra,
                    **measure(model, sampler, chain, args.num_samples, seq_len, steps, args.batch_size),
                }
            )
        for budget in head_budgets:
            rows.append(
                {
                    "denoiser": name,
                    "sampler": f"learned head (at {steps}) / loglinear",
                    **extra,
                    **measure(model, Sampler(make_step_schedule("loglinear"), head_policy), chain,
                              args.num_samples, seq_len, budget, args.batch_size),
                }
            )
        for row in rows[-len(learned) - len(head_budgets) :]:
            print(
                json.dumps({k: v for k, v in row.items() if k not in ("allocation", "policy_head")}),
                flush=True,
            )
    return rows


def compare(rows: list[dict[str, Any]]) -> list[str]:
    """Per learned row: the best heuristic at its budget, and the NFE a heuristic needs to match it."""
    lines = []
    heuristic = [r for r in rows if r["sampler"] in HEURISTICS and r["steps"] is not None]
    for row in (r for r in rows if r["sampler"].startswith("learned")):
        same = [r for r in heuristic if r["denoiser"] == row["denoiser"] and r["steps"] == row["steps"]]
        if not same:
            continue
        best = min(same, key=lambda r: r["exact_nll"])
        match = [
            r for r in heuristic if r["denoiser"] == row["denoiser"] and r["exact_nll"] <= row["exact_nll"]
        ]
        cheapest = min(match, key=lambda r: r["nfe"]) if match else None
        need = (
            f"{cheapest['sampler']} needs {cheapest['nfe']:.1f} NFE ({cheapest['nfe'] / row['nfe']:.2f}x)"
            if cheapest
            else "no heuristic reaches it in the budgets run"
        )
        lines.append(
            f"| {row['denoiser']} | {row['sampler']} | {row['steps']} | {row['nfe']:.1f} | "
            f"{row['exact_nll']:.3f} (H {row['entropy']:.2f}) | {best['sampler']}: {best['exact_nll']:.3f} "
            f"(H {best['entropy']:.2f}) | {need} |"
        )
    return lines


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    budgets = sorted({r["steps"] for r in rows if r["steps"] is not None})
    rows = [r for r in rows if r["steps"] is None or r["steps"] in budgets]
    out = []
    for name in dict.fromkeys(r["denoiser"] for r in rows):
        mine = [r for r in rows if r["denoiser"] == name]
        out += [
            f"\n**{name}** — cell: exact NLL/token · invalid % · entropy H (NFE when below the budget)\n",
            "| sampler | " + " | ".join(f"{b} steps" for b in budgets) + " |",
            "| --- |" + " --- |" * len(budgets),
        ]
        for label in dict.fromkeys(r["sampler"] for r in mine):
            cells = []
            for b in budgets:
                hit = [r for r in mine if r["sampler"] == label and (r["steps"] == b or r["steps"] is None)]
                if not hit:
                    cells.append("")
                    continue
                r = hit[0]
                nfe = f" ({r['nfe']:.1f})" if r["nfe"] is not None and r["nfe"] < b - 0.05 else ""
                cells.append(
                    f"{r['exact_nll']:.3f} · {100 * r['invalid_rate']:.1f} · {r['entropy']:.2f}{nfe}"
                )
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += [
        "\nLearned versus heuristics (same seeds; NLL per token with entropy H):\n",
        "| denoiser | learned | budget | NFE | NLL (H) | best heuristic at this budget | cheapest heuristic "
        "at least as good |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *compare(rows),
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--oracle", action="store_true", help="bench the exact markov oracle")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=DIR", help="a model directory to bench"
    )
    parser.add_argument("--out", required=True, help="output directory (bench.json, table.md)")
    parser.add_argument("--steps", default="4,8,16,32,64", help="step budgets")
    parser.add_argument("--learn-steps", default="8,16", help="budgets to learn an allocation for")
    parser.add_argument("--alloc-policy", default="random", help="policy the allocation is searched with")
    parser.add_argument("--policies", default="",
                        help="comma-separated policies whose heuristic rows to run (default: all)")
    parser.add_argument("--no-head", dest="head", action="store_false",
                        help="learn the allocation only, not the policy head")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--search-samples", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument(
        "--grpo", type=int, default=10, help="GRPO iterations after imitation (0: imitation only)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128, help="oracle only: sequence length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-adaptive",
        dest="adaptive",
        action="store_false",
        help="skip the one-step-per-token budget for threshold, eb and learned-head policies",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.steps = [int(s) for s in args.steps.split(",")]
    args.learn_steps = [int(s) for s in args.learn_steps.split(",") if s]
    args.policies = [p for p in args.policies.split(",") if p]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        loaded = load_model_dir(path)
        chain = task_for(loaded.meta.get("data"))
        if chain is None:
            raise SystemExit(
                f"{path}: not a markov model; this benchmark scores samples exactly on markov only"
            )
        rows += bench_denoiser(name or path, loaded.denoiser, chain, int(loaded.meta["seq_len"]), args)
        if args.oracle and not any(r["denoiser"] == "oracle" for r in rows):  # the oracle of the same chain, once
            rows += bench_denoiser("oracle", MarkovOracle(chain), chain, int(loaded.meta["seq_len"]), args)
    if args.oracle and not args.model:
        chain = MarkovChain.from_config(MarkovConfig())
        rows += bench_denoiser("oracle", MarkovOracle(chain), chain, args.seq_len, args)
    info = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "args": vars(args),
        "seconds": round(time.perf_counter() - began, 1),
    }
    (out / "bench.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1, default=str))
    table = markdown(rows, args)
    (out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
