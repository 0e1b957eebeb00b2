"""The run commands: each reads its run config (CONFIG, --with layers, KEY=VALUE overrides), prints it for
--print-config, or runs its stage and reports. The stages are imported when a command runs."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from fewstep.core.config import commented_yaml, load_config
from fewstep.errors import ConfigError

__all__ = ["resolve", "run_config", "cmd_teacher", "cmd_distill", "cmd_evaluator", "cmd_schedule", "cmd_bench",
           "cmd_quickstart"]


def resolve(ref: str) -> Any:
    """The object a "module:name" reference names (the command table's config classes: a config module may
    import torch, and naming it does not)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def run_config(args: argparse.Namespace, config: str | list[str] | None = None,
               overrides: list[str] | None = None) -> Any:
    """The validated config of a run command; None after printing it (with its keys' docs) for --print-config."""
    layers = [args.config, *args.layers] if config is None else config
    cfg = load_config(resolve(args.config_class), layers, args.overrides if overrides is None else overrides)
    if args.print_config:
        print(commented_yaml(cfg))
        return None
    return cfg


def cmd_teacher(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    if cfg is None:
        return 0
    # lazy: the teacher's run and its summary import torch and lightning, which `fewstep --help` must not
    from fewstep.summary import print_teacher_summary

    # lazy: (as above) the stage itself
    from fewstep.teacher.run import train_teacher

    result = train_teacher(cfg, resume=args.resume)
    if result.is_global_zero:  # in a data-parallel run, one process reports
        print_teacher_summary(result, cfg)
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    if cfg is None:
        return 0
    # lazy: the distillation run imports torch and lightning, which `fewstep --help` must not
    from fewstep.distillation.run import run_distill

    # lazy: (as above) its summary samples with torch
    from fewstep.summary import print_distill_summary

    result = run_distill(cfg, resume=args.resume)
    if result.is_global_zero:
        print_distill_summary(result)
    return 0


def cmd_evaluator(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    if cfg is None:
        return 0
    # lazy: the evaluator's training imports torch, lightning and transformers, which `fewstep --help` must not
    from fewstep.evaluation.autoregressive import train_evaluator

    summary = train_evaluator(cfg, resume=args.resume)
    print(f"\nevaluator: {summary['parameters']:,} parameters, {summary['steps']} steps, validation NLL "
          f"{summary['val_nll']:.4f} nats/token; model directory: {summary['model_dir']}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    if cfg is None:
        return 0
    # lazy: the schedule search imports torch, which `fewstep --help` must not
    from fewstep.schedule.run import run_schedule_config

    run_schedule_config(cfg)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    if cfg is None:
        return 0
    # lazy: the bench imports torch and matplotlib, which `fewstep --help` must not
    from fewstep.summary import format_table

    # lazy: (as above) the sweep itself
    from fewstep.tradeoff.bench import run_bench, summary_rows

    payload = run_bench(cfg, overwrite=args.overwrite)
    rows = summary_rows(payload["rows"])
    print(format_table(rows, list(rows[0])))
    print(f"\nwrote {Path(cfg.out_dir) / 'tradeoff.json'} and {Path(cfg.out_dir) / 'pareto.png'} "
          f"(device: {payload['device']})")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """`fewstep quickstart`: --steps and --num-samples become overrides of configs/quickstart.yaml."""
    overrides = list(args.overrides)
    if args.steps:
        try:
            steps = [int(s) for s in args.steps.split(",")]
        except ValueError as error:
            raise ConfigError(f"--steps must be comma-separated integers, got {args.steps!r}") from error
        overrides.append(f"bench_steps=[{','.join(map(str, steps))}]")
    if args.num_samples:
        overrides.append(f"bench_samples={args.num_samples}")
    if args.print_config:
        run_config(args, ["quickstart", *args.layers], overrides)
        return 0
    # lazy: the quickstart runs every stage (torch, lightning), which `fewstep --help` must not import
    from fewstep.quickstart.run import quickstart

    quickstart(Path(args.out), fresh=args.fresh, overrides=overrides, layers=args.layers)
    return 0
