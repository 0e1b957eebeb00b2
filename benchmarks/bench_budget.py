"""Budget to quality: the diffusion teacher against the same-size autoregressive model at equal wall-clock.

    python benchmarks/bench_budget.py teacher/markov evaluator/markov --minutes 5 --out runs/bench-budget
    python benchmarks/bench_budget.py teacher/stdlib evaluator/stdlib --minutes 10 --out runs/bench-budget

Trains the teacher (`fewstep teacher`'s code path) and then the AR evaluator (`fewstep evaluator`'s),
each for `--minutes` of wall-clock (`trainer.max_minutes`; the LR plan follows each config's
`trainer.max_steps`), one after the other on the same machine, on the same data and validation split
(the evaluator takes the teacher's data section and tokenizer) and with the teacher's width and depth.
Reports the teacher's validation NELBO (the exported weights: raw or EMA, whichever validated better),
the AR model's validation NLL, their ratio (the issue's bound: at most 1.15), the steps each took, and
on `markov` the data's exact entropy per token. Both are nats per token of the same tokenisation; the
NELBO is an upper bound on the diffusion model's NLL. Writes `<out>/budget.json`, prints a table.
`key=value` overrides apply to both runs (data.*, trainer.*); one prefixed `ar.` applies to the evaluator
only, after them (`ar.trainer.max_steps=580` gives each model an LR plan that ends inside the budget:
set each to the steps it reaches in `--minutes`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from fewstep.core.config import load_config
from fewstep.evaluation.autoregressive import train_evaluator
from fewstep.evaluation.config import EvaluatorRunConfig
from fewstep.summary import format_table
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher

SHARED = ("data.", "trainer.")  # overrides that apply to both runs
AR_ONLY = "ar."  # the prefix of an override for the evaluator alone


def flatten(prefix: str, value: object) -> list[str]:
    """`key=value` items for a config section (a nested dict), for load_config."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in flatten(f"{prefix}.{k}", v)]
    return [] if value is None else [f"{prefix}={json.dumps(value) if isinstance(value, (list, bool)) else value}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="teacher config (file or shipped name)")
    parser.add_argument("evaluator", help="evaluator config (file or shipped name)")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides (data.*, trainer.* apply to both; ar.KEY=VALUE to the evaluator only)")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training budget of each model")
    parser.add_argument("--out", required=True, help="benchmark directory (a finished run is reused)")
    args = parser.parse_intermixed_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    budget = [f"trainer.max_minutes={args.minutes}", "logger.wandb.mode=disabled", "trainer.progress=false"]
    ar_only = [o.removeprefix(AR_ONLY) for o in args.overrides if o.startswith(AR_ONLY)]
    overrides = [o for o in args.overrides if not o.startswith(AR_ONLY)]
    teacher_cfg = load_config(TeacherRunConfig, args.teacher, [f"out_dir={out / 'teacher'}", *budget, *overrides])
    result = train_teacher(teacher_cfg)
    data = asdict(teacher_cfg.data)
    if data["source"] not in ("markov", "anagram"):
        data["tokenizer"] = str(result.out_dir / "tokenizer.json")  # the same tokens, so the same per-token units
    model = asdict(teacher_cfg.model)
    same_size = [f"model.{k}={model[k]}" for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")]
    evaluator_cfg = load_config(EvaluatorRunConfig, args.evaluator, [
        f"out_dir={out / 'evaluator'}", *flatten("data", data), *same_size, *budget,
        f"trainer.val_batches={teacher_cfg.trainer.val_batches}",
        *[o for o in overrides if o.startswith(SHARED)], *ar_only])
    ar = train_evaluator(evaluator_cfg)
    row = {
        "source": data["source"], "minutes": args.minutes, "parameters": result.num_parameters,
        "teacher_steps": result.steps, "teacher_seconds": round(result.train_seconds), "weights": result.weights,
        "teacher_val_nelbo": round(result.val_nelbo, 4), "ar_parameters": ar["parameters"], "ar_steps": ar["steps"],
        "ar_seconds": round(ar["train_seconds"]), "ar_val_nll": round(ar["val_nll"], 4),
        "ratio": round(result.val_nelbo / ar["val_nll"], 3),
    }
    entropy = result.data.get("data_entropy_per_token")
    if entropy:
        row["data_entropy"] = round(entropy, 4)
    payload = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "row": row}
    (out / "budget.json").write_text(json.dumps(payload, indent=2))
    print(format_table([row], list(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
