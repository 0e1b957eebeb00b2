"""`fewstep quickstart`: the whole pipeline on the embedded default, with a results table.

teacher -> reference autoregressive evaluator -> distilled students (trajectory or SDTT rounds) -> a learned step
allocation for the last student -> trade-off sweep over samplers and step counts (tradeoff.json,
pareto.png, W&B) -> tune (fewest steps meeting the quality target) -> export.
Each stage writes into its own folder under --out and is reused on a re-run unless --fresh; a
re-run with other settings is refused rather than mixing two configurations. --out is a quickstart
directory (`ownership`): new, empty or marked as one; --fresh deletes nothing else.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fewstep.core.config import load_config, save_config
from fewstep.core.ownership import check_dir, claim_dir, remove_owned
from fewstep.deploy.export import export_model
from fewstep.distillation.config import DistillRunConfig, LossConfig, RoundsConfig
from fewstep.distillation.run import run_distill
from fewstep.errors import RunError
from fewstep.evaluation.autoregressive import train_evaluator
from fewstep.evaluation.config import EvaluatorRunConfig
from fewstep.evaluation.metrics import ENTROPY, EXACT_NLL, GEN_NLL, INVALID_RATE
from fewstep.model.config import TeacherSourceConfig
from fewstep.quickstart.config import QuickstartConfig
from fewstep.schedule.config import AllocationSearchConfig, ScheduleRunConfig
from fewstep.schedule.run import run_schedule_config
from fewstep.summary import format_table
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher
from fewstep.tradeoff.bench import run_bench, summary_rows
from fewstep.tradeoff.config import BenchModel, BenchRunConfig
from fewstep.tradeoff.tune import Target, reference_row, tune

__all__ = ["quickstart"]

# what a quickstart directory holds; `--fresh` deletes a directory written before markers only if it holds nothing else
STAGES = ("quickstart.yaml", "teacher", "evaluator", "distill", "bench", "export")
TOTAL = 7  # the stages a run prints, [1/7] to [7/7]


def teacher_config(cfg: QuickstartConfig, out_dir: Path) -> TeacherRunConfig:
    """The teacher stage: the teacher's part of `cfg`, written to `out_dir`, printing no samples."""
    own = {f.name: copy.deepcopy(getattr(cfg, f.name)) for f in fields(TeacherRunConfig)}
    return replace(TeacherRunConfig(**own), out_dir=str(out_dir), num_print_samples=0)


def evaluator_config(cfg: QuickstartConfig, out_dir: Path) -> EvaluatorRunConfig:
    """The autoregressive evaluator: the teacher's data, width, depth, trainer and learning rate, without EMA."""
    base = EvaluatorRunConfig()
    return replace(
        base, out_dir=str(out_dir), data=copy.deepcopy(cfg.data), logger=copy.deepcopy(cfg.logger),
        trainer=replace(cfg.trainer, max_steps=cfg.evaluator_steps),
        optim=replace(base.optim, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps, ema=0.0),
        model=replace(base.model, hidden_size=cfg.model.hidden_size, num_layers=cfg.model.num_layers,
                      num_heads=cfg.model.num_heads, intermediate_size=cfg.model.intermediate_size))


def distill_config(cfg: QuickstartConfig, teacher_dir: Path, out_dir: Path) -> DistillRunConfig:
    """Distillation of the teacher in `cfg.distill_rounds` rounds, on the teacher's data, with a backward KL."""
    base = DistillRunConfig(teacher=TeacherSourceConfig(path=str(teacher_dir)))
    return replace(
        base, out_dir=str(out_dir), method=cfg.distill_method, loss=LossConfig(divergence="kl_bwd"),
        data=copy.deepcopy(cfg.data), logger=copy.deepcopy(cfg.logger),
        trajectory=replace(base.trajectory, num_trajectories=cfg.distill_trajectories),
        rounds=RoundsConfig(start_steps=cfg.distill_start_steps, count=cfg.distill_rounds,
                            steps_per_round=cfg.distill_steps_per_round),
        optim=replace(base.optim, lr=cfg.distill_lr, warmup_steps=20, ema=0.99),
        trainer=replace(base.trainer, progress=cfg.trainer.progress, batch_size=min(cfg.trainer.batch_size, 32),
                        log_every=10),
        eval=replace(base.eval, num_samples=min(cfg.bench_samples, 64)))


def schedule_config(cfg: QuickstartConfig, model: Path, steps: int, progress: bool) -> ScheduleRunConfig:
    """A step allocation for `model` at `steps`, searched with `cfg.schedule_policy`'s order."""
    search = AllocationSearchConfig(policy=cfg.schedule_policy, iterations=cfg.schedule_iterations,
                                    num_samples=cfg.bench_samples, heldout_samples=2 * cfg.bench_samples)
    return ScheduleRunConfig(model=str(model), steps=steps, what="allocation", allocation=search,
                             progress=progress and cfg.trainer.progress)


def bench_config(cfg: QuickstartConfig, out_dir: Path, models: list[BenchModel], evaluator: Path,
                 export: Path) -> BenchRunConfig:
    """The trade-off sweep: every model x `cfg.bench_samplers` x `cfg.bench_steps`."""
    return BenchRunConfig(out_dir=str(out_dir), models=models, evaluator=str(evaluator),
                          samplers=list(cfg.bench_samplers), steps=list(cfg.bench_steps),
                          num_samples=cfg.bench_samples, repeats=cfg.bench_repeats,
                          export=str(export), logger=cfg.logger)


def _stage(name: str, index: int, total: int, done: bool, where: Path) -> bool:
    state = f"reusing {where}" if done else "running"
    print(f"[{index}/{total}] {name}: {state}", flush=True)
    return done


def _prepare_out(out: Path, cfg: QuickstartConfig, fresh: bool) -> None:
    """Own `out` as a quickstart directory (deleted first with `fresh`, only if it is one); save the settings."""
    check_dir(out, "quickstart")
    if fresh:  # only a quickstart's own directory is ever deleted
        remove_owned(out, "quickstart", STAGES)
    saved = out / "quickstart.yaml"
    wanted = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    if saved.exists() and saved.read_text() != wanted:
        raise RunError(f"{out} holds a quickstart made with other settings ({saved}); give the same overrides as "
                       "before, pass --fresh to start over, or choose another --out")
    claim_dir(out, "quickstart")
    save_config(cfg, saved)


def quickstart(out: Path, fresh: bool = False, overrides: list[str] | None = None,
               progress: bool = True, layers: list[str] | None = None) -> dict[str, Any]:
    """Run (or reuse) every stage under `out`; print the results table; return the summary. `layers`:
    more YAML configs merged over the shipped `quickstart` one (`--with`), then `overrides`."""
    start = time.perf_counter()
    out = Path(out)
    cfg = load_config(QuickstartConfig, ["quickstart", *(layers or [])], overrides)
    _prepare_out(out, cfg, fresh)  # refusals come first, before any stage is even run
    teacher_dir, distill_dir, bench_dir = out / "teacher", out / "distill", out / "bench"
    _teacher_stage(cfg, teacher_dir)
    _evaluator_stage(cfg, out / "evaluator")
    d_cfg = distill_config(cfg, teacher_dir, distill_dir)
    _distill_stage(d_cfg)
    _schedule_stage(cfg, d_cfg, progress)
    models = [BenchModel("teacher", str(teacher_dir))] + [
        BenchModel(f"student-r{r}", str(distill_dir / f"round_{r}")) for r in range(cfg.distill_rounds)]
    rows = _bench_stage(cfg, out, models, progress and cfg.trainer.progress)

    print(f"[6/{TOTAL}] tune", flush=True)
    metric = _target_metric(rows)
    reference_steps = max(r["steps"] for r in rows if r["model"] == "teacher")
    chosen, reference = _tune(rows, Target(metric, "teacher", reference_steps, cfg.target_ratio,
                                           cfg.min_entropy_ratio))

    print(f"[7/{TOTAL}] export", flush=True)
    source = teacher_dir if chosen["model"] == "teacher" else next(m.path for m in models if m.name == chosen["model"])
    export_dir = export_model(source, out / "export", {"steps": chosen["steps"], "sampler": chosen["sampler"],
                                                       "schedule": chosen["schedule"]}, overwrite=True)
    _print_results(rows, metric, reference_steps, chosen, reference)
    print(f"chart: {bench_dir / 'pareto.png'}\ntrade-off: {bench_dir / 'tradeoff.json'}\n"
          f"W&B (offline; `wandb sync` to upload): {bench_dir / 'wandb'}\nexport: {export_dir}  "
          f"(fewstep generate {export_dir})\ntotal {time.perf_counter() - start:.0f} s")
    return {"rows": rows, "chosen": chosen, "reference": reference, "export": export_dir, "metric": metric}


def _teacher_stage(cfg: QuickstartConfig, teacher_dir: Path) -> None:
    """[1/7] the teacher, unless `teacher_dir` holds its model; an interrupted one resumes."""
    if not _stage("teacher", 1, TOTAL, (teacher_dir / "model" / "fewstep.json").exists(), teacher_dir / "model"):
        train_teacher(teacher_config(cfg, teacher_dir),
                      resume=(teacher_dir / "checkpoints" / "last.ckpt").exists())


def _evaluator_stage(cfg: QuickstartConfig, evaluator_dir: Path) -> None:
    """[2/7] the autoregressive evaluator, unless `evaluator_dir` holds its model; an interrupted one resumes."""
    if not _stage("autoregressive evaluator", 2, TOTAL, (evaluator_dir / "model" / "config.json").exists(),
                  evaluator_dir / "model"):
        train_evaluator(evaluator_config(cfg, evaluator_dir),
                        resume=(evaluator_dir / "checkpoints" / "last.ckpt").exists())


def _distill_stage(d_cfg: DistillRunConfig) -> None:
    """[3/7] the distilled students, unless the run's final model is there; an interrupted one resumes."""
    distill_dir = Path(d_cfg.out_dir)
    if not _stage("distillation", 3, TOTAL, (distill_dir / "model" / "fewstep.json").exists(), distill_dir / "model"):
        run_distill(d_cfg, resume=(distill_dir / "checkpoints" / "last.ckpt").exists())


def _schedule_stage(cfg: QuickstartConfig, d_cfg: DistillRunConfig, progress: bool) -> None:
    """[4/7] a learned step allocation for the last round's student at its own step count."""
    last = cfg.distill_rounds - 1
    last_student = Path(d_cfg.out_dir) / f"round_{last}" / "model"
    student_steps = d_cfg.rounds.steps_for(last)
    if not _stage(f"learned step allocation ({student_steps} steps, {cfg.schedule_policy} order)", 4, TOTAL,
                  (last_student / "scheduler_config.json").exists(), last_student / "scheduler_config.json"):
        run_schedule_config(schedule_config(cfg, last_student, student_steps, progress))


def _bench_stage(cfg: QuickstartConfig, out: Path, models: list[BenchModel], progress: bool
                 ) -> list[dict[str, Any]]:
    """[5/7] the trade-off sweep, unless its tradeoff.json is there; returns that file's rows."""
    bench_dir = out / "bench"
    if not _stage("trade-off sweep", 5, TOTAL, (bench_dir / "tradeoff.json").exists(), bench_dir / "tradeoff.json"):
        run_bench(bench_config(cfg, bench_dir, models, out / "evaluator", out / "distill" / "model"), progress=progress)
    return json.loads((bench_dir / "tradeoff.json").read_text())["rows"]


def _target_metric(rows: list[dict[str, Any]]) -> str:
    """What the target holds: the exact NLL where the true chain is known (markov), else the AR evaluator's NLL."""
    return EXACT_NLL if EXACT_NLL in rows[0]["quality"] else GEN_NLL


def _tune(rows: list[dict[str, Any]], target: Target) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the row to deploy, the teacher's reference row); no row meets the target: the teacher at full steps."""
    try:
        return tune(rows, target)
    except RunError as error:  # no row meets the target: deploy the teacher at full steps, and say so
        print(f"  {error}; exporting the teacher at {target.reference_steps} steps")
        row = reference_row(rows, target)
        return row, row


def _print_results(rows: list[dict[str, Any]], metric: str, reference_steps: int, chosen: dict[str, Any],
                   reference: dict[str, Any]) -> None:
    """The results table, its legend and the row chosen for deployment."""
    table = summary_rows(rows, reference="teacher")
    columns = ["model", "sampler", "steps", "nfe", metric]
    columns += [GEN_NLL] if metric != GEN_NLL and GEN_NLL in table[0] else []
    columns += [ENTROPY] + ([INVALID_RATE] if metric == EXACT_NLL else [])
    columns += ["tokens_per_s", "x_teacher", "x_ar", "b1_ms", "x_ar_b1", "pareto"]
    print()
    print(format_table(table, columns))
    scale = "under the true chain" if metric == EXACT_NLL else "under the AR evaluator"
    print(f"\n{metric}: nats/token ({scale}, lower is better); gen_nll: nats/token under the AR evaluator; "
          "entropy: unigram entropy of the samples; x_teacher / x_ar: tokens/s over the teacher "
          f"at {reference_steps} steps and over the autoregressive model with a KV cache (same device, same batch); "
          "b1_ms: milliseconds for one sequence at batch 1, x_ar_b1: the autoregressive model's b1_ms over this "
          "row's; * = on the Pareto front.")
    print(f"\nchosen for deployment: {chosen['model']} at {chosen['steps']} steps with the {chosen['sampler']} "
          f"sampler ({metric} {chosen['quality'][metric]:.4f} vs teacher {reference['quality'][metric]:.4f}, "
          f"{ENTROPY} {chosen['quality'][ENTROPY]:.4f} vs {reference['quality'][ENTROPY]:.4f})")
