"""The commands that take no run config: `sample`, `tune`, `export` and `generate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fewstep.core.io import atomic_write_text
from fewstep.core.ownership import check_file
from fewstep.errors import ConfigError, OwnershipError
from fewstep.evaluation.metrics import ENTROPY
from fewstep.tradeoff.tune import Target, entropy_reference_row, load_tradeoff, tune

__all__ = ["cmd_sample", "cmd_tune", "cmd_export", "cmd_generate"]


def _is_samples_file(path: Path) -> bool:
    """Whether `path` is a JSONL file `fewstep sample` wrote (its first line a record with tokens and sampler)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = json.loads(handle.readline(1_000_000))
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"tokens", "sampler"} <= set(first)


def cmd_sample(args: argparse.Namespace) -> int:
    # lazy: sampling loads a model with torch, which `fewstep --help` must not import
    from fewstep.cli.sampling import sample_records_with_options

    if args.out != "-":  # checked before sampling, so a refusal costs nothing
        check_file(Path(args.out), args.overwrite, _is_samples_file, "a samples file")
    records = sample_records_with_options(args)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.out == "-":
        sys.stdout.write(lines)
        return 0
    try:
        atomic_write_text(Path(args.out), lines)
    except OSError as error:
        raise OwnershipError(f"cannot write --out {args.out}: {error.strerror or error}; give a path you can write "
                             "to") from error
    print(f"wrote {len(records)} samples to {args.out}", file=sys.stderr)
    return 0


def _target(args: argparse.Namespace) -> Target:
    try:
        metric, ratio = args.target.split(":")
        model, steps = args.reference.rsplit("@", 1)
        target = Target(metric, model, int(steps), float(ratio), args.min_entropy,
                        speed_tolerance=args.speed_tolerance)
    except ValueError as error:
        raise ConfigError("--target must look like METRIC:RATIO (gen_nll:1.05) and --reference like MODEL@STEPS "
                          "(teacher@128)") from error
    if not 0.0 <= args.speed_tolerance < 1.0:
        raise ConfigError(f"--speed-tolerance must be in [0, 1), got {args.speed_tolerance}")
    return target


def _write_generation_settings(args: argparse.Namespace, chosen: dict[str, Any]) -> None:
    """Make the tuned row the generation defaults of the export --export names."""
    # lazy: the export module loads models with torch, which `fewstep --help` must not import
    from fewstep.deploy.export import GENERATION_FILE

    # lazy: (as above) model directories are read with torch
    from fewstep.model.model_dir import resolve_model_dir

    directory = resolve_model_dir(args.export)
    settings = {"steps": chosen["steps"], "sampler": chosen["sampler"], "schedule": chosen["schedule"],
                "temperature": chosen.get("temperature", 1.0), "tuned": {"target": args.target, "reference": args.reference,
                                              "min_entropy": args.min_entropy, "row": chosen}}
    atomic_write_text(directory / GENERATION_FILE, json.dumps(settings, indent=2))
    print(f"wrote {directory / GENERATION_FILE}")


def cmd_tune(args: argparse.Namespace) -> int:
    target = _target(args)
    metric = target.metric
    payload = load_tradeoff(args.tradeoff)
    rows = payload["rows"]
    if isinstance(payload.get("temperature"), (int, float)):  # the sweep's own; older files have one only
        target.reference_temperature = float(payload["temperature"])
    chosen, ref = tune(rows, target)
    floor = entropy_reference_row(rows, target)
    print(f"reference {ref['model']} @ {ref['steps']} steps: {metric} {ref['quality'][metric]:.4f}; entropy floor "
          f"{args.min_entropy:g} x {floor['quality'][ENTROPY]:.4f} ({floor['model']} @ {floor['steps']} steps)")
    print(f"chosen    {chosen['model']} ({chosen['sampler']}, {chosen['schedule']}, temperature "
          f"{chosen.get('temperature', 1.0):g}) @ {chosen['steps']} steps: "
          f"{metric} {chosen['quality'][metric]:.4f}, entropy {chosen['quality'][ENTROPY]:.4f}, "
          f"{chosen['tokens_per_s']:.0f} tokens/s ({chosen['tokens_per_s'] / ref['tokens_per_s']:.2f}x the reference)")
    if args.export:
        _write_generation_settings(args, chosen)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # lazy: exporting reads checkpoints with torch, which `fewstep --help` must not import
    from fewstep.deploy.export import export_model

    out = export_model(args.source, args.out_dir, None if args.steps is None else {"steps": args.steps},
                       overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    print(f"exported to {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    # lazy: generating loads the export with torch, which `fewstep --help` must not import
    from fewstep.deploy.export import load, read_prompts

    prompted = args.prompt is not None or args.prompts is not None
    num_samples = args.num_samples if args.num_samples is not None else (1 if prompted else 4)
    if args.steps is not None and args.steps < 1 or num_samples < 1:
        raise ConfigError("--steps and --num-samples must be at least 1")
    if args.chat and not prompted:
        raise ConfigError("--chat renders prompts: give --prompt TEXT or --prompts FILE.jsonl")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise ConfigError(f"--out {out} already exists; give a new file (generate never overwrites one)")
    prompts = [*(args.prompt or []), *(read_prompts(Path(args.prompts)) if args.prompts else [])]
    pipeline = load(args.model_dir, trust_remote_code=args.trust_remote_code)
    result = pipeline.generate(num_samples=num_samples, steps=args.steps, seed=args.seed,
                               prompts=prompts if prompted else None, chat=args.chat)
    if prompted:
        lines = [json.dumps({"prompt": p, "text": t, "tokens": r, "steps": result["steps"]})
                 for p, t, r in zip(result["prompts"], result["texts"], result["responses"])]
    else:
        lines = [json.dumps({"text": t, "tokens": r, "steps": result["steps"]})
                 for t, r in zip(result["texts"], result["tokens"].tolist())]
    if out is None:
        print("\n".join(lines))
    else:
        atomic_write_text(out, "".join(line + "\n" for line in lines))
    return 0
