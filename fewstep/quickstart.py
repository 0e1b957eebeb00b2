"""`fewstep quickstart`: the whole pipeline on the embedded default, with a results table.

teacher -> reference autoregressive evaluator -> distilled students (trajectory or SDTT rounds) -> a learned step
allocation for the last student -> trade-off sweep over samplers and step counts (tradeoff.json,
pareto.png, W&B) -> tune (fewest steps meeting the quality target) -> export.
Each stage writes into its own folder under --out and is reused on a re-run unless --fresh; a
re-run with other settings is refused rather than mixing two configurations. --out is a quickstart
directory (`ownership`): new, empty or marked as one; --fresh deletes nothing else.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fewstep.core.config import load_config, save_config
from fewstep.core.ownership import check_dir, claim_dir, remove_owned
from fewstep.deploy.export import export_model
from fewstep.distillation.config import DistillRunConfig
from fewstep.distillation.run import run_distill
from fewstep.errors import RunError
from fewstep.evaluation.autoregressive import train_evaluator
from fewstep.evaluation.config import EvaluatorRunConfig
from fewstep.schedule.config import ScheduleRunConfig
from fewstep.schedule.run import run_schedule_config
from fewstep.summary import format_table
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher
from fewstep.tradeoff.bench import run_bench, summary_rows
from fewstep.tradeoff.config import BenchModel, BenchRunConfig
from fewstep.tradeoff.tune import Target, reference_row, tune

__all__ = ["QuickstartConfig", "quickstart"]

# what a quickstart directory holds; `--fresh` deletes a directory written before markers only if it holds nothing else
STAGES = ("quickstart.yaml", "teacher", "evaluator", "distill", "bench", "export")


@dataclass
class QuickstartConfig(TeacherRunConfig):
    """The teacher's config plus the settings of the later stages."""

    evaluator_steps: int = 600
    distill_method: str = "trajectory"  # sdtt | trajectory
    distill_trajectories: int = 2048  # trajectory: teacher samples to learn from
    distill_start_steps: int = 32
    distill_rounds: int = 3
    distill_steps_per_round: int = 150
    distill_lr: float = 1e-3
    schedule_policy: str = "dilated"  # the order the last student's step allocation is learned with
    schedule_iterations: int = 24  # allocation search moves
    bench_samplers: list[str] = field(default_factory=lambda: ["ancestral", "dilated/geometric", "learned"])
    bench_steps: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    bench_samples: int = 64
    bench_repeats: int = 3
    target_ratio: float = 1.05  # exact NLL (markov) or gen NLL at most this x the teacher's at its most steps
    min_entropy_ratio: float = 0.95


def _section(cfg: Any, schema: type, **changes: Any) -> Any:
    """The part of `cfg` that `schema` knows, with `changes` replacing or merging in (a validated dataclass)."""
    names = {f.name for f in fields(schema)} - set(changes)
    container = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(cfg)).items() if k in names}
    merged = OmegaConf.merge(OmegaConf.structured(schema), container, changes)
    return OmegaConf.to_object(merged)


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
               progress: bool = True) -> dict[str, Any]:
    """Run (or reuse) every stage under `out`; print the results table; return the summary."""
    start = time.perf_counter()
    out = Path(out)
    cfg = load_config(QuickstartConfig, "quickstart", overrides)
    _prepare_out(out, cfg, fresh)  # refusals come first, before any stage is even imported
    total = 7

    teacher_dir = out / "teacher"
    if not _stage("teacher", 1, total, (teacher_dir / "model" / "fewstep.json").exists(), teacher_dir / "model"):
        teacher_cfg = _section(cfg, TeacherRunConfig, out_dir=str(teacher_dir), num_print_samples=0)
        train_teacher(teacher_cfg, resume=(teacher_dir / "checkpoints" / "last.ckpt").exists())

    evaluator_dir = out / "evaluator"
    if not _stage("autoregressive evaluator", 2, total, (evaluator_dir / "model" / "config.json").exists(),
                  evaluator_dir / "model"):
        ev_cfg = _section(cfg, EvaluatorRunConfig, out_dir=str(evaluator_dir),
                          trainer={**asdict(cfg.trainer), "max_steps": cfg.evaluator_steps},
                          optim={"lr": cfg.optim.lr, "warmup_steps": cfg.optim.warmup_steps, "ema": 0.0},
                          model={"hidden_size": cfg.model.hidden_size, "num_layers": cfg.model.num_layers,
                                 "num_heads": cfg.model.num_heads,
                                 "intermediate_size": cfg.model.intermediate_size})
        train_evaluator(ev_cfg, resume=(evaluator_dir / "checkpoints" / "last.ckpt").exists())

    distill_dir = out / "distill"
    d_cfg = load_config(DistillRunConfig, None, [
        f"teacher.path={teacher_dir}", f"out_dir={distill_dir}", f"method={cfg.distill_method}",
        "loss.divergence=kl_bwd", f"trajectory.num_trajectories={cfg.distill_trajectories}",
        f"rounds.start_steps={cfg.distill_start_steps}", f"rounds.count={cfg.distill_rounds}",
        f"rounds.steps_per_round={cfg.distill_steps_per_round}", f"optim.lr={cfg.distill_lr}",
        "optim.warmup_steps=20", "optim.ema=0.99", f"trainer.progress={cfg.trainer.progress}",
        f"trainer.batch_size={min(cfg.trainer.batch_size, 32)}", "trainer.log_every=10",
        f"eval.num_samples={min(cfg.bench_samples, 64)}"])
    d_cfg = _section(d_cfg, DistillRunConfig, data=asdict(cfg.data), logger=asdict(cfg.logger))
    if not _stage("distillation", 3, total, (distill_dir / "model" / "fewstep.json").exists(), distill_dir / "model"):
        run_distill(d_cfg, resume=(distill_dir / "checkpoints" / "last.ckpt").exists())

    last_student = distill_dir / f"round_{cfg.distill_rounds - 1}" / "model"
    student_steps = d_cfg.rounds.steps_for(cfg.distill_rounds - 1)
    if not _stage(f"learned step allocation ({student_steps} steps, {cfg.schedule_policy} order)", 4, total,
                  (last_student / "scheduler_config.json").exists(), last_student / "scheduler_config.json"):

        run_schedule_config(load_config(ScheduleRunConfig, None, [
            f"model={last_student}", f"steps={student_steps}", "what=allocation",
            f"allocation.policy={cfg.schedule_policy}", f"allocation.iterations={cfg.schedule_iterations}",
            f"allocation.num_samples={cfg.bench_samples}", f"allocation.heldout_samples={2 * cfg.bench_samples}",
            f"progress={progress and cfg.trainer.progress}"]))

    bench_dir = out / "bench"
    models = [BenchModel("teacher", str(teacher_dir))] + [
        BenchModel(f"student-r{r}", str(distill_dir / f"round_{r}")) for r in range(cfg.distill_rounds)]
    if not _stage("trade-off sweep", 5, total, (bench_dir / "tradeoff.json").exists(), bench_dir / "tradeoff.json"):
        bench_cfg = BenchRunConfig(out_dir=str(bench_dir), models=models, evaluator=str(evaluator_dir),
                                   samplers=list(cfg.bench_samplers), steps=list(cfg.bench_steps),
                                   num_samples=cfg.bench_samples, repeats=cfg.bench_repeats,
                                   export=str(distill_dir / "model"), logger=cfg.logger)
        run_bench(bench_cfg, progress=progress and cfg.trainer.progress)
    import json

    payload = json.loads((bench_dir / "tradeoff.json").read_text())
    rows = payload["rows"]

    print(f"[6/{total}] tune", flush=True)
    metric = "exact_nll" if "exact_nll" in rows[0]["quality"] else "gen_nll"
    reference_steps = max(r["steps"] for r in rows if r["model"] == "teacher")
    target = Target(metric, "teacher", reference_steps, cfg.target_ratio, cfg.min_entropy_ratio)
    try:
        chosen, reference = tune(rows, target)
    except RunError as error:  # no row meets the target: deploy the teacher at full steps, and say so
        print(f"  {error}; exporting the teacher at {reference_steps} steps")
        chosen = reference = reference_row(rows, target)

    print(f"[7/{total}] export", flush=True)
    source = teacher_dir if chosen["model"] == "teacher" else next(m.path for m in models if m.name == chosen["model"])
    export_dir = export_model(source, out / "export", {"steps": chosen["steps"], "sampler": chosen["sampler"],
                                                       "schedule": chosen["schedule"]}, overwrite=True)

    table = summary_rows(rows, reference="teacher")
    columns = ["model", "sampler", "steps", "nfe", metric]
    columns += ["gen_nll"] if metric != "gen_nll" and "gen_nll" in table[0] else []
    columns += ["entropy"] + (["invalid_rate"] if metric == "exact_nll" else [])
    columns += ["tokens_per_s", "x_teacher", "x_ar", "b1_ms", "x_ar_b1", "pareto"]
    print()
    print(format_table(table, columns))
    scale = "under the true chain" if metric == "exact_nll" else "under the AR evaluator"
    print(f"\n{metric}: nats/token ({scale}, lower is better); gen_nll: nats/token under the AR evaluator; "
          "entropy: unigram entropy of the samples; x_teacher / x_ar: tokens/s over the teacher "
          f"at {reference_steps} steps and over the autoregressive model with a KV cache (same device, same batch); "
          "b1_ms: milliseconds for one sequence at batch 1, x_ar_b1: the autoregressive model's b1_ms over this "
          "row's; * = on the Pareto front.")
    print(f"\nchosen for deployment: {chosen['model']} at {chosen['steps']} steps with the {chosen['sampler']} "
          f"sampler ({metric} {chosen['quality'][metric]:.4f} vs teacher {reference['quality'][metric]:.4f}, "
          f"entropy {chosen['quality']['entropy']:.4f} vs {reference['quality']['entropy']:.4f})")
    print(f"chart: {bench_dir / 'pareto.png'}\ntrade-off: {bench_dir / 'tradeoff.json'}\n"
          f"W&B (offline; `wandb sync` to upload): {bench_dir / 'wandb'}\nexport: {export_dir}  "
          f"(fewstep generate {export_dir})\ntotal {time.perf_counter() - start:.0f} s")
    return {"rows": rows, "chosen": chosen, "reference": reference, "export": export_dir, "metric": metric}
