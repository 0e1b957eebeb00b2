"""The `fewstep` command line: one subcommand per stage of the pipeline.

Every subcommand reports bad input as one `error: ...` line saying what to fix, and exits with
status 2 (1 for a failure during a run, such as a NaN loss), without touching good outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

CONFIG_HELP = (
    "a YAML config file, or the name of one shipped with fewstep (e.g. teacher/markov, teacher/stdlib, "
    "quickstart); keys it does not set keep their defaults"
)
OVERRIDES_HELP = "config overrides as key=value, e.g. data.seq_len=128 trainer.max_steps=500 out_dir=runs/t"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewstep",
        description="Distil many-step masked-diffusion language models into few-step students.",
        epilog="Run `fewstep COMMAND --help` for a command's options. W&B logs offline unless WANDB_MODE "
               "or logger.wandb.mode says otherwise.",
    )
    from fewstep import __version__

    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    teacher = commands.add_parser(
        "teacher", help="pretrain a masked-diffusion teacher (MDLM objective)",
        description="Pretrain a masked-diffusion teacher denoiser with the MDLM NELBO. out_dir receives "
                    "config.yaml, data.json, tokenizer.json, checkpoints/ (last.ckpt, best.ckpt), csv/ and "
                    "wandb/ logs, and a loadable model directory model/.",
    )
    teacher.add_argument("config", metavar="CONFIG", help=CONFIG_HELP)
    teacher.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    teacher.add_argument("--resume", action="store_true",
                         help="continue the run in out_dir from checkpoints/last.ckpt (the config must fit it)")
    teacher.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    distill = commands.add_parser(
        "distill", help="distil a teacher into a few-step student, in rounds (SDTT or trajectory)",
        description="Distil a teacher (a teacher run's out_dir, a model directory or a Hugging Face id, "
                    "teacher.path=...) into a student that samples in fewer steps. method=sdtt: the student "
                    "learns in one step what the teacher does in rounds.k; method=trajectory: the student learns "
                    "the teacher's own samples with a certainty-forcing term. The student's step count starts "
                    "at rounds.start_steps and halves (or shrinks linearly) each round; out_dir receives "
                    "round_<r>/model/ per round, model/ (the final student), rounds.json (validation per round), "
                    "checkpoints/last.ckpt, csv/ and wandb/ logs.",
    )
    distill.add_argument("config", metavar="CONFIG", help=CONFIG_HELP + " (e.g. distill/markov)")
    distill.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    distill.add_argument("--resume", action="store_true",
                         help="continue the run in out_dir from checkpoints/last.ckpt (the config must fit it)")
    distill.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    sample = commands.add_parser(
        "sample", help="draw samples from a model directory",
        description="Draw samples with the ancestral sampler (float64 Gumbel noise) and write one JSON object "
                    "per line: text, tokens, and, for the markov task, the exact NLL and invalid transitions.",
    )
    sample.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory or a run's out_dir")
    sample.add_argument("--steps", type=int, default=64, help="denoising steps (default 64)")
    sample.add_argument("--num-samples", type=int, default=8, help="how many sequences (default 8)")
    sample.add_argument("--seq-len", type=int, default=None, help="sequence length (default: the model's)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy")
    sample.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass (default 64)")
    sample.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sample.add_argument("--out", default="-", help="output JSONL file, or - for standard output (default)")

    quick = commands.add_parser(
        "quickstart", help="run the pipeline on the embedded default (markov) and print a results table",
        description="Train a small teacher on the embedded markov task, sample from it at several step counts "
                    "and print a table of exact NLL, invalid-transition rate and entropy next to the data's.",
    )
    quick.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    quick.add_argument("--fresh", action="store_true", help="retrain even if a finished run is in --out")
    quick.add_argument("--steps", default="4,16,64,256",
                       help="comma-separated step counts to sample at (default 4,16,64,256)")
    quick.add_argument("--num-samples", type=int, default=256, help="samples per step count (default 256)")
    quick.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    return parser


def _cmd_teacher(args: argparse.Namespace) -> int:
    from fewstep.distill.config import TeacherRunConfig, load_config

    cfg = load_config(TeacherRunConfig, args.config, args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return 0
    from fewstep.distill.train import train_teacher
    from fewstep.pipeline import print_teacher_summary

    result = train_teacher(cfg, resume=args.resume)
    print_teacher_summary(result, cfg)
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from fewstep.distill.config import DistillRunConfig, load_config

    cfg = load_config(DistillRunConfig, args.config, args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return 0
    from fewstep.distill.distill_run import run_distill
    from fewstep.pipeline import print_distill_summary

    print_distill_summary(run_distill(cfg, resume=args.resume))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from fewstep.distill.io import atomic_write_text
    from fewstep.distill.quality import sample_records

    records = sample_records(args.model_dir, steps=args.steps, num_samples=args.num_samples, seq_len=args.seq_len,
                             seed=args.seed, temperature=args.temperature, batch_size=args.batch_size,
                             device=args.device)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.out == "-":
        sys.stdout.write(lines)
    else:
        atomic_write_text(Path(args.out), lines)
        print(f"wrote {len(records)} samples to {args.out}", file=sys.stderr)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from fewstep.distill.config import ConfigError
    from fewstep.pipeline import quickstart

    try:
        steps = tuple(int(s) for s in args.steps.split(","))
    except ValueError as error:
        raise ConfigError(f"--steps must be comma-separated integers, got {args.steps!r}") from error
    if min(steps) < 1 or args.num_samples < 1:
        raise ConfigError("--steps and --num-samples must be at least 1")
    quickstart(Path(args.out), fresh=args.fresh, overrides=args.overrides, steps=steps,
               num_samples=args.num_samples)
    return 0


_COMMANDS = {"teacher": _cmd_teacher, "distill": _cmd_distill, "sample": _cmd_sample, "quickstart": _cmd_quickstart}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (`teacher CFG --resume a=1` and `teacher CFG a=1 --resume`)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from fewstep.distill.config import ConfigError
    from fewstep.distill.data import DataError
    from fewstep.distill.denoiser import ModelError
    from fewstep.distill.runtime import RunError
    from fewstep.distill.teacher import NonFiniteLossError

    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, DataError, ModelError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
