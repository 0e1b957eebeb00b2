"""`fewstep bench`: sweep models x samplers x temperatures x step counts; write tradeoff.json, pareto.png and a
W&B run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fewstep.core.config import save_config
from fewstep.core.ownership import check_dir, claim_dir, input_paths
from fewstep.data.config import data_config
from fewstep.data.sources import build_data
from fewstep.errors import ConfigError, OwnershipError, RunError
from fewstep.evaluation.autoregressive import load_evaluator
from fewstep.evaluation.metrics import quality_key
from fewstep.model.model_dir import load_model_dir
from fewstep.samplers.presets import sample_with_spec, sampler_from_spec, spec_is_learned, spec_schedule
from fewstep.samplers.scheduler_config import SCHEDULER_FILE, read_scheduler_config
from fewstep.tradeoff.config import BenchRunConfig
from fewstep.tradeoff.pareto import (
    Candidate,
    SampleFn,
    ar_row,
    aup_by_curve,
    curve_label,
    curve_of,
    log_wandb,
    measure,
    measure_prompted,
    pareto_front,
    plot_pareto,
    write_tradeoff,
)
from fewstep.training.runtime import check_device, wandb_mode

__all__ = [
    "run_bench",
    "sampler_fn",
    "sampler_builder",
    "device_name",
    "summary_rows",
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def sampler_fn(name: str, device: torch.device, schedule: str = "loglinear",
               model_dir: str | Path | None = None, meta: dict[str, Any] | None = None,
               temperature: float = 1.0) -> tuple[SampleFn, str]:
    """A sampler by spec (`fewstep.samplers.presets.parse_spec`); `ancestral` is the MDLM reference sampler.

    Returns the sampling function and the name of its schedule; learned parts come from `model_dir`.
    """

    if name != "ancestral" and not spec_is_learned(name):
        sampler_from_spec(name, 8, meta, model_dir)  # a bad spec fails here, before any sampling

    def sample(model, num, seq_len, steps, seed):
        out = sample_with_spec(name, model, num, seq_len, steps, seed=seed, noise_schedule=schedule, meta=meta,
                               model_dir=model_dir, device=device, temperature=temperature)
        return out.tokens, out.nfe_per_sequence, out.wall_time

    return sample, schedule if name == "ancestral" else spec_schedule(name)


def sampler_builder(name: str, schedule: str, model_dir: str | Path | None, meta: dict[str, Any],
                    temperature: float) -> Callable[[int], Any]:
    """steps -> the Sampler a spec names (prompted rows sample through it)."""

    return lambda steps: sampler_from_spec(name, steps, {**meta, "noise_schedule": schedule}, model_dir, temperature)


def _data_for(meta: dict[str, Any]):
    return build_data(data_config(meta["data"]))


def _task_key(model: Any) -> tuple:
    """What must agree for two models to be compared: data source, sequence length, vocabulary."""
    data = model.meta["data"]
    source = data["markov"] if data["source"] == "markov" else (data.get("path"), data.get("tokenizer"))
    return (data["source"], str(source), model.meta.get("seq_len"), model.denoiser.vocab_size,
            model.denoiser.mask_id)


def _budgets(name: str, model: Any, sampler: str, steps: list[int]) -> list[int]:
    """The step counts to measure: all of them, or for a learned sampler the one budget it was learned for."""

    if not spec_is_learned(sampler):
        return list(steps)

    if model.path is None or not (Path(model.path) / SCHEDULER_FILE).is_file():
        print(f"bench: {name} has no {SCHEDULER_FILE}, so the {sampler!r} sampler skips it")
        return []
    return [int(read_scheduler_config(model.path)["steps"])]


def _claim_out_dir(cfg: BenchRunConfig, overwrite: bool) -> bool:
    """out_dir must be new, empty or a bench's; an earlier tradeoff.json is replaced only with `overwrite`."""
    out_dir = Path(cfg.out_dir)
    sources = input_paths(*(m.path for m in cfg.models), cfg.evaluator, cfg.export)
    check_dir(out_dir, "bench", sources)
    if (out_dir / "tradeoff.json").exists() and not overwrite:
        raise OwnershipError(f"{out_dir / 'tradeoff.json'} holds an earlier bench's results; pass --overwrite to "
                             "replace them, or give another out_dir=...; nothing was changed")
    return claim_dir(out_dir, "bench", sources)


def run_bench(cfg: BenchRunConfig, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Measure every combination side by side; returns the tradeoff payload.

    `out_dir` is owned (`ownership`): new, empty or a bench's, and an earlier `tradeoff.json` in it
    is replaced only with `overwrite`. A directory this call created is removed if the bench fails.
    """
    if not cfg.models:
        raise ConfigError("bench needs at least one model: models=[{name: teacher, path: runs/teacher}] in the YAML")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    check_device(device, "device")
    created = _claim_out_dir(cfg, overwrite)
    try:
        return _bench(cfg, Path(cfg.out_dir), device, progress)
    except Exception:
        if created:
            shutil.rmtree(cfg.out_dir, ignore_errors=True)
        raise


def _bench(cfg: BenchRunConfig, out_dir: Path, device: torch.device, progress: bool) -> dict[str, Any]:
    loaded = {m.name: load_model_dir(m.path, device=device, trust_remote_code=m.trust_remote_code)
              for m in cfg.models}
    first = next(iter(loaded.values()))
    data = _data_for(first.meta)
    for name, model in loaded.items():
        if _task_key(model) != _task_key(first):
            raise RunError(f"model {name!r} is for another task than {cfg.models[0].name!r} "
                           f"({_task_key(model)} != {_task_key(first)}); bench models of one task together")
    evaluator = None
    if cfg.evaluator:

        evaluator = load_evaluator(cfg.evaluator, device=device)
    prompted = data.prompted
    if prompted and evaluator is not None:
        print("bench: the autoregressive baseline samples without prompts; on prompted data it is left out")
        evaluator = None
    temperature = cfg.temperature if cfg.temperature is not None else (0.0 if prompted else 1.0)
    temperatures = [temperature, *(t for t in dict.fromkeys(cfg.extra_temperatures) if t != temperature)]
    jobs = []
    for name, model in loaded.items():
        for sampler in cfg.samplers:
            budgets = _budgets(name, model, sampler, cfg.steps)
            if not budgets:
                continue
            noise = model.meta.get("noise_schedule", "loglinear")
            for at in temperatures:
                fn, schedule = sampler_fn(sampler, device, noise, model_dir=model.path, meta=model.meta,
                                          temperature=at)
                build = sampler_builder(sampler, noise, model.path, model.meta, at)
                jobs += [(Candidate(name, model.denoiser, sampler, schedule, fn, build, at), n) for n in budgets]
    if not jobs:
        raise ConfigError(f"nothing to measure: no model has what the samplers {cfg.samplers} need")
    save_config(cfg, out_dir / "config.yaml")  # only now: every check has passed
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(total=len(jobs) + (1 if evaluator else 0), desc="trade-off sweep", disable=not progress)
    for candidate, steps in jobs:
        bar.set_postfix_str(f"{candidate.model_name} {candidate.sampler} T={candidate.temperature:g} {steps} steps")
        if prompted:
            rows.append(measure_prompted(candidate, steps, data, cfg.num_samples, cfg.seed, cfg.repeats))
        else:
            rows.append(measure(candidate, steps, data, cfg.num_samples, cfg.seed, evaluator, str(device),
                                cfg.repeats))
        bar.update()
    if evaluator is not None:
        bar.set_postfix_str("autoregressive baseline")
        rows.append(ar_row(evaluator, data, cfg.num_samples, cfg.seed, cfg.repeats))
        bar.update()
    bar.close()

    task = first.meta["data"]["source"]
    curves = aup_by_curve(rows)
    for row in rows:  # each prompted row carries its curve's AUP (accuracy against tokens per forward)
        if curve_of(row) in curves:
            row["quality"]["aup"] = curves[curve_of(row)]
    write_tradeoff(out_dir / "tradeoff.json", task, device_name(device), rows, temperature)
    png = plot_pareto(rows, out_dir / "pareto.png", title=f"{task}: speed / quality")
    mode = wandb_mode(cfg.logger)
    if mode != "disabled":
        import wandb

        run = wandb.init(project=cfg.logger.wandb.project, name=cfg.logger.wandb.name or f"bench-{task}",
                         dir=str(out_dir), mode=mode, config={"task": task, "device": device_name(device)})
        try:
            log_wandb(rows, png, run, artifact_dir=Path(cfg.export) if cfg.export else None)
        finally:
            run.finish()
    return {"task": task, "device": device_name(device), "temperature": temperature, "rows": rows}


def summary_rows(rows: list[dict[str, Any]], reference: str | None = None) -> list[dict[str, Any]]:
    """Flat rows for a printed table, with speed-ups over the slowest teacher row and the AR baseline:
    throughput at the bench's batch (`x_ar`) and latency of one sequence at batch 1 (`b1_ms`, `x_ar_b1`:
    the AR model's batch-1 latency over this row's)."""
    key = quality_key(rows)
    ar = next((r for r in rows if r["model"] == "autoregressive"), None)
    teacher_rows = [r for r in rows if r["model"] == (reference or rows[0]["model"])]
    slowest = min(teacher_rows, key=lambda r: r["tokens_per_s"]) if teacher_rows else None
    front = set(pareto_front(rows, key))
    out = []
    for i, r in enumerate(rows):
        row = {"model": r["model"], "sampler": curve_label(r, rows), "steps": r["steps"], "nfe": r["nfe"]}
        if "accuracy" in r["quality"]:
            row["tpf"] = r["tokens_per_forward"]  # response tokens per forward pass
        for metric in ("accuracy", "aup", "exact_nll", "gen_nll", "teacher_nelbo", "entropy", "invalid_rate",
                       "python_lines_ok"):
            if metric in r["quality"]:
                row[metric] = r["quality"][metric]
        row["tokens_per_s"] = r["tokens_per_s"]
        if slowest is not None:
            row["x_teacher"] = r["tokens_per_s"] / slowest["tokens_per_s"]
        if ar is not None:
            row["x_ar"] = r["tokens_per_s"] / ar["tokens_per_s"]
        if "latency_b1_ms" in r:
            row["b1_ms"] = r["latency_b1_ms"]
            if ar is not None and "latency_b1_ms" in ar:
                row["x_ar_b1"] = ar["latency_b1_ms"] / r["latency_b1_ms"]
        row["pareto"] = "*" if i in front else ""
        out.append(row)
    return out
