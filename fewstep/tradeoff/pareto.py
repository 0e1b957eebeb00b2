"""The speed/quality trade-off: sweep rows, the Pareto front, `tradeoff.json`, `pareto.png`, W&B.

A row is one (model, sampler, schedule, step count) measured side by side with the others in the
same run: NFE, tokens per forward, tokens/s and latency at the bench's batch, the latency of one
sequence at batch 1 (where deployment often runs, and where the picture against autoregressive
decoding can reverse), and quality with the sample entropy beside
it (`exact_nll` and `invalid_rate` on markov; `gen_nll` under a reference autoregressive model
where one is given; `python_lines_ok` on stdlib). The autoregressive baseline (KV cache, same
device, same batch) is a row too.
"""

from __future__ import annotations

import ast
import json
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.core.io import atomic_save, atomic_write_text
from fewstep.evaluation.accuracy import evaluate_accuracy, reference_answers
from fewstep.evaluation.aup import aup
from fewstep.evaluation.autoregressive import ar_sample, generative_nll
from fewstep.evaluation.metrics import HIGHER_IS_BETTER, quality_key, quality_loss
from fewstep.evaluation.quality import markov_quality, response_entropy, unigram_entropy

__all__ = [
    "SampleFn",
    "Candidate",
    "measure",
    "measure_prompted",
    "ar_row",
    "pareto_front",
    "aup_by_curve",
    "curve_of",
    "curve_label",
    "write_tradeoff",
    "plot_pareto",
    "log_wandb",
    "python_lines_ok",
]

# (model, num_samples, seq_len, steps, seed) -> (tokens [N, L], nfe per sequence, seconds)
SampleFn = Callable[[Any, int, int, int, int], tuple[torch.Tensor, float, float]]


@dataclass
class Candidate:
    """One model with one sampler/schedule, to be measured at several step counts."""

    model_name: str
    model: Any
    sampler: str
    schedule: str
    sample: SampleFn
    build: Callable[[int], Any] | None = None  # steps -> the Sampler itself (prompted rows sample through it)
    temperature: float = 1.0  # what `sample` and `build` sample at (the row records it)


def curve_of(row: dict[str, Any]) -> tuple[str, str, float]:
    """The curve a row belongs to: its model, its sampler and its temperature."""
    return row["model"], row["sampler"], float(row.get("temperature", 1.0))


def curve_label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A row's sampler, with ", T=0.9" when the diffusion rows of `rows` have more than one temperature."""
    temperatures = {curve_of(r)[2] for r in rows if r["model"] != "autoregressive"}
    if len(temperatures) > 1 and row["model"] != "autoregressive":
        return f"{row['sampler']}, T={curve_of(row)[2]:g}"
    return row["sampler"]


def python_lines_ok(texts: list[str]) -> float:
    """Fraction of the complete lines of generated code that parse as Python on their own.

    The first and last line of a sample are cut mid-line and are skipped; a line that opens a block
    (ends with ':') is checked with a `pass` body, so `for x in y:` counts as valid.
    """
    ok = total = 0
    for text in texts:
        lines = [line for line in text.splitlines()[1:-1] if line.strip()]
        for line in lines:
            source = textwrap.dedent(line).strip()
            if source.endswith(":"):
                source += " pass"
            total += 1
            try:
                with warnings.catch_warnings():  # generated text trips SyntaxWarnings (e.g. `1if`): not ours to show
                    warnings.simplefilter("ignore")
                    ast.parse(source)
                ok += 1
            except (SyntaxError, ValueError):
                pass
    return ok / total if total else 0.0


def sample_quality_row(tokens: torch.Tensor, data: Any, evaluator: Any = None) -> dict[str, float]:
    """Quality of samples, entropy always included."""
    if data.task is not None and hasattr(data.task, "nll"):  # an exact chain (markov)
        quality = markov_quality(data.task, tokens)
    else:
        quality = {"entropy": unigram_entropy(tokens)}
        if data.stats.get("source") == "stdlib":
            quality["python_lines_ok"] = python_lines_ok([data.tokenizer.decode(row.tolist()) for row in tokens])
    if evaluator is not None:

        quality.update(generative_nll(evaluator, tokens))
    return quality


def measure(candidate: Candidate, steps: int, data: Any, num_samples: int, seed: int, evaluator: Any = None,
            device: str = "cpu", repeats: int = 1) -> dict[str, Any]:
    """One trade-off row: the median time over `repeats`, quality from the first repeat's samples."""
    seq_len = data.train.shape[1]
    # warm-up (first calls are slow), at the real budget: a learned schedule serves only its own
    candidate.sample(candidate.model, min(num_samples, 4), seq_len, steps, seed)
    times, tokens, nfe = [], None, 0.0
    for r in range(repeats):
        out_tokens, out_nfe, seconds = candidate.sample(candidate.model, num_samples, seq_len, steps, seed + r)
        times.append(seconds)
        if tokens is None:
            tokens, nfe = out_tokens, out_nfe
    seconds = sorted(times)[len(times) // 2]
    single = [candidate.sample(candidate.model, 1, seq_len, steps, seed + r)[2] for r in range(max(3, repeats))]
    return {
        "model": candidate.model_name, "sampler": candidate.sampler, "schedule": candidate.schedule,
        "temperature": candidate.temperature, "steps": steps, "nfe": float(nfe), "tokens_per_forward": seq_len / max(nfe, 1e-9),
        "tokens_per_s": num_samples * seq_len / seconds, "latency_ms": 1000.0 * seconds,
        "latency_b1_ms": 1000.0 * sorted(single)[len(single) // 2],
        "batch_size": num_samples, "quality": sample_quality_row(tokens, data, evaluator),
    }


def measure_prompted(candidate: Candidate, steps: int, data: Any, num_prompts: int, seed: int,
                     repeats: int = 1) -> dict[str, Any]:
    """One row on the validation prompts: accuracy (the task's exact checker, or the reference responses
    after whitespace normalisation), response tokens per forward pass and per second (never the prompt),
    the answers' entropy; the median time over `repeats`, quality from the first."""

    if candidate.build is None:
        raise ValueError("a prompted row samples through the Sampler itself: give the candidate a build function")
    count = min(num_prompts, len(data.val))
    prompts, lengths = data.val[:count], data.val_prompt_len[:count]
    check = getattr(data.task, "check", None)
    answers = None if check is not None else reference_answers(data, count)
    sampler = candidate.build(steps)

    def run(rows: slice, run_seed: int):
        return evaluate_accuracy(candidate.model, sampler, prompts[rows], lengths[rows], steps, data.tokenizer,
                                 check=check, answers=None if answers is None else answers[rows], seed=run_seed)

    run(slice(0, min(count, 4)), seed)  # warm-up
    results = [run(slice(0, count), seed + r) for r in range(repeats)]
    first = results[0]
    seconds = sorted(r.seconds for r in results)[len(results) // 2]
    single = sorted(run(slice(0, 1), seed + r).seconds for r in range(max(3, repeats)))
    return {
        "model": candidate.model_name, "sampler": candidate.sampler, "schedule": candidate.schedule,
        "temperature": candidate.temperature, "steps": steps, "nfe": float(first.nfe), "tokens_per_forward": first.tokens_per_forward,
        "tokens_per_s": first.response_tokens / seconds, "latency_ms": 1000.0 * seconds,
        "latency_b1_ms": 1000.0 * single[len(single) // 2], "batch_size": count,
        "quality": {"accuracy": first.accuracy, "answer_tokens_per_forward": first.answer_tokens_per_forward,
                    "entropy": response_entropy(first.responses, data.tokenizer.eos_token_id)},
    }


def ar_row(evaluator: Any, data: Any, num_samples: int, seed: int, repeats: int = 1) -> dict[str, Any]:
    """The autoregressive baseline: the evaluator architecture decoding with a KV cache."""

    seq_len = data.train.shape[1]
    runs = [ar_sample(evaluator, num_samples, seq_len, seed=seed + r, exclude=data.mask_id) for r in range(repeats)]
    seconds = sorted(r[1] for r in runs)[len(runs) // 2]
    single = sorted(ar_sample(evaluator, 1, seq_len, seed=seed + r, exclude=data.mask_id)[1]
                    for r in range(max(3, repeats)))
    return {
        "model": "autoregressive", "sampler": "kv-cache", "schedule": "left-to-right", "temperature": 1.0,
        "steps": seq_len,
        "nfe": float(seq_len), "tokens_per_forward": 1.0, "tokens_per_s": num_samples * seq_len / seconds,
        "latency_ms": 1000.0 * seconds, "latency_b1_ms": 1000.0 * single[len(single) // 2],
        "batch_size": num_samples,
        "quality": sample_quality_row(runs[0][0], data, evaluator),
    }


def pareto_front(rows: list[dict[str, Any]], key: str) -> list[int]:
    """Indices of rows no other row beats on both speed (tokens/s, higher) and quality (`key`)."""
    front = []
    for i, row in enumerate(rows):
        mine = quality_loss(row, key)
        dominated = any(
            other["tokens_per_s"] >= row["tokens_per_s"] and quality_loss(other, key) <= mine
            and (other["tokens_per_s"] > row["tokens_per_s"] or quality_loss(other, key) < mine)
            for j, other in enumerate(rows) if j != i)
        if not dominated:
            front.append(i)
    return front


def aup_by_curve(rows: list[dict[str, Any]]) -> dict[tuple[str, str, float], float]:
    """d3LLM's AUP of each curve (`curve_of`: model, sampler, temperature) of accuracy against tokens per
    forward, with y_max the best accuracy of the whole sweep (one scale for the table)."""

    prompted = [r for r in rows if "accuracy" in r["quality"]]
    if not prompted:
        return {}
    y_max = 100.0 * max(r["quality"]["accuracy"] for r in prompted)
    curves: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in prompted:
        curves.setdefault(curve_of(r), []).append(r)
    return {curve: aup([r["tokens_per_forward"] for r in members], [100.0 * r["quality"]["accuracy"] for r in members],
                       y_max)
            for curve, members in curves.items()}


def write_tradeoff(path: Path, task: str, device: str, rows: list[dict[str, Any]], temperature: float = 1.0) -> None:
    """The rows, with the sweep's own `temperature` (the one `fewstep tune` takes its reference rows at)."""
    payload = {"task": task, "device": device, "temperature": temperature, "rows": rows}
    atomic_write_text(path, json.dumps(payload, indent=2))


def plot_pareto(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Quality against tokens/s, one series per model and `curve_label`, the Pareto front marked, entropy as labels."""
    from matplotlib.figure import (
        Figure,  # lazily: matplotlib stays out of start-up; no pyplot, no backend switch
    )

    key = quality_key(rows)
    front = set(pareto_front(rows, key))
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    series: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        series.setdefault(f"{row['model']} ({curve_label(row, rows)})", []).append(i)
    for label, indices in series.items():
        indices = sorted(indices, key=lambda i: rows[i]["tokens_per_s"])
        xs = [rows[i]["tokens_per_s"] for i in indices]
        ys = [rows[i]["quality"][key] for i in indices]
        ax.plot(xs, ys, marker="o", label=label)
        for i, x, y in zip(indices, xs, ys):
            ax.annotate(f"{rows[i]['steps']} st, H={rows[i]['quality']['entropy']:.2f}", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    fx = [rows[i]["tokens_per_s"] for i in sorted(front, key=lambda i: rows[i]["tokens_per_s"])]
    fy = [rows[i]["quality"][key] for i in sorted(front, key=lambda i: rows[i]["tokens_per_s"])]
    ax.plot(fx, fy, color="black", linestyle="--", linewidth=1, label="Pareto front")
    ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="black")
    ax.set_xscale("log")
    ax.set_xlabel("tokens / s (higher is faster)")
    ax.set_ylabel(f"{key} ({'higher' if key in HIGHER_IS_BETTER else 'lower'} is better)")
    ax.set_title(title or f"speed / quality trade-off ({key}; H = sample entropy)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path


def log_wandb(rows: list[dict[str, Any]], pareto_png: Path, run: Any, artifact_dir: Path | None = None,
              prefix: str = "tradeoff") -> None:
    """Log a Table, a line chart per model (quality against steps, a line per sampler), the Pareto chart and the export."""
    import wandb

    key = quality_key(rows)
    columns = ["model", "sampler", "schedule", "steps", "temperature", "nfe", "tokens_per_s", "latency_ms",
               "latency_b1_ms", key, "entropy"]
    table = wandb.Table(columns=columns, data=[
        [r["model"], r["sampler"], r["schedule"], r["steps"], curve_of(r)[2], r["nfe"], r["tokens_per_s"],
         r["latency_ms"], r.get("latency_b1_ms"), r["quality"][key], r["quality"]["entropy"]] for r in rows])
    logged: dict[str, Any] = {f"{prefix}/table": table, f"{prefix}/pareto": wandb.Image(str(pareto_png))}
    for model in sorted({r["model"] for r in rows}):
        sub = [r for r in rows if r["model"] == model]
        # one line per sampler (and temperature, when the sweep has several) of this model
        sub_table = wandb.Table(columns=["sampler", "steps", key],
                                data=[[curve_label(r, rows), r["steps"], r["quality"][key]] for r in sub])
        logged[f"{prefix}/{model}/{key}_vs_steps"] = wandb.plot.line(
            sub_table, "steps", key, stroke="sampler", title=f"{model}: {key} against steps, per sampler")
    run.log(logged)
    if artifact_dir is not None and Path(artifact_dir).exists():
        artifact = wandb.Artifact(name=Path(artifact_dir).name.replace("/", "-") or "model", type="model")
        artifact.add_dir(str(artifact_dir))
        run.log_artifact(artifact)
