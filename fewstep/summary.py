"""The summaries and tables the CLI prints."""

from __future__ import annotations

from typing import Any

from fewstep.evaluation.metrics import ENTROPY, EXACT_NLL, INVALID_RATE, TEACHER_NELBO
from fewstep.evaluation.quality import sample_records
from fewstep.teacher.config import TeacherRunConfig

__all__ = ["format_table", "print_teacher_summary", "print_distill_summary"]


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
    """A teacher run's size, time, validation NELBO (against the data's entropy where known) and samples."""
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
        records = sample_records(str(result.model_dir), steps=cfg.sample_steps, num_samples=cfg.num_print_samples,
                                 trust_remote_code=cfg.model.trust_remote_code)
        print(f"\nsamples ({cfg.sample_steps} steps):")
        for record in records:
            print("  " + record["text"][:200].replace("\n", "\\n"))


def print_distill_summary(result: Any) -> None:
    """The per-round validation table of a distillation run."""
    print(f"\ndistilled for {result.steps} steps in {result.train_seconds:.0f} s; final student: {result.model_dir}")
    if not result.rounds:
        return
    # a round record names each model's scores `<model>_<metric>`; the exact NLL where the chain is known (markov)
    metric = EXACT_NLL if f"student_{EXACT_NLL}" in result.rounds[0] else TEACHER_NELBO
    rows = []
    for record in result.rounds:
        for who in ("student", "teacher", "original"):
            rows.append({"round": record["round"], "model": who, "steps": int(record[f"{who}_steps"]),
                         metric: record.get(f"{who}_{metric}", float("nan")),
                         INVALID_RATE: record.get(f"{who}_{INVALID_RATE}", ""),
                         ENTROPY: record[f"{who}_{ENTROPY}"]})
    columns = ["round", "model", "steps", metric, ENTROPY] + ([INVALID_RATE] if metric == EXACT_NLL else [])
    print(format_table(rows, columns))
    print("teacher = this round's teacher at k x the student's steps; original = the undistilled teacher at the "
          "student's steps")
