"""The quickstart pipeline and the summaries the CLI prints.

For now the pipeline trains a teacher on the embedded `markov` task and compares its samples at
several step counts with the exact oracle denoiser's and with the data; the distillation, schedule,
bench and export stages join it as they land.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fewstep.distill.config import TeacherRunConfig, load_config
from fewstep.distill.runtime import RunError

__all__ = ["format_table", "print_teacher_summary", "print_distill_summary", "quickstart", "markov_step_table"]

QUICKSTART_STEPS = (4, 16, 64, 256)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (also valid Markdown) with floats at four significant figures."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    body = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines)


def print_teacher_summary(result: Any, cfg: TeacherRunConfig) -> None:
    from fewstep.distill.quality import sample_records

    print(f"\nteacher: {result.num_parameters:,} parameters, {result.steps} steps in {result.train_seconds:.0f} s")
    if result.val_nelbo is not None:
        line = f"validation NELBO {result.val_nelbo:.4f} nats/token"
        if "data_entropy_per_token" in result.data:
            line += (f" (data entropy {result.data['data_entropy_per_token']:.4f}, "
                     f"gap {100 * (result.val_nelbo / result.data['data_entropy_per_token'] - 1):+.2f}%)")
        if "bytes_per_token" in result.data:
            line += f" = {result.val_nelbo / result.data['bytes_per_token'] / 0.6931471805599453:.4f} bits/byte"
        print(line)
    print(f"model directory: {result.model_dir}")
    if cfg.num_print_samples > 0:
        records = sample_records(str(result.model_dir), steps=cfg.sample_steps, num_samples=cfg.num_print_samples)
        print(f"\nsamples ({cfg.sample_steps} steps):")
        for record in records:
            print("  " + record["text"][:200].replace("\n", "\\n"))


def print_distill_summary(result: Any) -> None:
    """The per-round validation table of a distillation run."""
    print(f"\ndistilled for {result.steps} steps in {result.train_seconds:.0f} s; final student: {result.model_dir}")
    if not result.rounds:
        return
    metric = "exact_nll" if "student_exact_nll" in result.rounds[0] else "teacher_nelbo"
    rows = []
    for record in result.rounds:
        for who in ("student", "teacher", "original"):
            rows.append({"round": record["round"], "model": who, "steps": int(record[f"{who}_steps"]),
                         metric: record.get(f"{who}_{metric}", float("nan")),
                         "invalid_rate": record.get(f"{who}_invalid_rate", ""),
                         "entropy": record[f"{who}_entropy"]})
    columns = ["round", "model", "steps", metric, "entropy"] + (["invalid_rate"] if metric == "exact_nll" else [])
    print(format_table(rows, columns))
    print("teacher = this round's teacher at k x the student's steps; original = the undistilled teacher at the "
          "student's steps")


def markov_step_table(model: torch.nn.Module, chain: Any, steps: tuple[int, ...], num_samples: int, seq_len: int, seed: int = 0, label: str = "teacher") -> list[dict[str, Any]]:
    """Quality and speed of ancestral sampling from `model` at each step count, float64 Gumbel noise."""
    from fewstep.distill.quality import markov_quality
    from fewstep.samplers.ancestral import ancestral_sample

    rows = []
    for n in steps:
        out = ancestral_sample(model, num_samples, seq_len, n, chain.num_states, seed=seed, device="cpu")
        rows.append({"model": label, "steps": n, "nfe": out.nfe_per_sequence,
                     **markov_quality(chain, out.tokens),
                     "samples_per_s": num_samples / out.wall_time})
    return rows


def quickstart(out: Path, fresh: bool = False, overrides: list[str] | None = None,
               steps: tuple[int, ...] = QUICKSTART_STEPS, num_samples: int = 256) -> list[dict[str, Any]]:
    """Train (or reuse) the quickstart teacher, then print its step-count table beside the oracle's."""
    from fewstep.distill.data import build_data
    from fewstep.distill.markov import MarkovOracle
    from fewstep.distill.model_dir import load_model_dir
    from fewstep.distill.quality import markov_quality
    from fewstep.distill.train import train_teacher

    start = time.perf_counter()
    cfg = load_config(TeacherRunConfig, "quickstart", [*(overrides or []), f"out_dir={out / 'teacher'}"])
    teacher_dir = Path(cfg.out_dir)
    if fresh and teacher_dir.exists():
        shutil.rmtree(teacher_dir)
    if (teacher_dir / "model" / "fewstep.json").exists():
        print(f"[1/2] teacher: reusing {teacher_dir / 'model'} (pass --fresh to retrain)")
    else:
        print(f"[1/2] teacher: training on {cfg.data.source} for {cfg.trainer.max_steps} steps")
        resume = (teacher_dir / "checkpoints" / "last.ckpt").exists()
        train_teacher(cfg, resume=resume)
    loaded = load_model_dir(teacher_dir / "model")
    data = build_data(cfg.data)
    if loaded.meta.get("data_fingerprint") != data.fingerprint:
        raise RunError(
            f"the teacher in {teacher_dir} was trained on other data (fingerprint "
            f"{loaded.meta.get('data_fingerprint')} != {data.fingerprint}): give the same data.* overrides as "
            "before, or pass --fresh to retrain"
        )
    chain = data.task
    print("[2/2] sampling at", ", ".join(map(str, steps)), "steps (float64 Gumbel noise)")
    rows = [{"model": "data", "steps": "-", "nfe": "-", **markov_quality(chain, data.val[:num_samples])}]
    rows += markov_step_table(loaded.denoiser, chain, steps, num_samples, cfg.data.seq_len)
    rows += markov_step_table(MarkovOracle(chain), chain, steps, num_samples, cfg.data.seq_len, label="oracle")
    print()
    print(format_table(rows, ["model", "steps", "nfe", "exact_nll", "invalid_rate", "entropy", "samples_per_s"]))
    print(f"\nexact_nll: nats/token under the true chain (data entropy rate {chain.entropy_rate():.4f}); "
          "entropy: unigram entropy of the samples; oracle = exact conditionals (sampler error only).")
    print(f"teacher: {teacher_dir / 'model'}  W&B (offline): {teacher_dir / 'wandb'}  "
          f"total {time.perf_counter() - start:.0f} s")
    return rows
