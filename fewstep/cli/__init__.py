"""The `fewstep` command line: one subcommand per stage of the pipeline.

Every subcommand reports bad input as one `error: ...` line saying what to fix, and exits with
status 2 (1 for a failure during a run, such as a NaN loss), without touching good outputs. A run
stopped by SIGTERM or SIGUSR1 saves its checkpoint first and exits with status 3.
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
TRUST_HELP = ("let a model directory that ships its own Python modeling code run it (Hugging Face "
              "trust_remote_code); off by default: only pass it for a directory you trust")


def _add_run_command(commands, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand that runs a config: CONFIG, KEY=VALUE overrides, --resume and --print-config."""
    command = commands.add_parser(name, help=help, description=description)
    command.add_argument("config", metavar="CONFIG", help=f"{CONFIG_HELP} (e.g. {example})")
    command.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    command.add_argument("--resume", action="store_true",
                         help="continue the run in out_dir from checkpoints/last.ckpt (the config must fit it)")
    command.add_argument("--with", dest="layers", metavar="CONFIG", action="append", default=[],
                         help="another YAML config merged over CONFIG (repeatable; later wins), e.g. --with "
                              "cluster/ddp for 8 GPUs per node or --with cluster/fsdp; overrides still win")
    command.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewstep",
        description="Distil many-step masked-diffusion language models into few-step students.",
        epilog="Run `fewstep COMMAND --help` for a command's options. W&B logs offline unless WANDB_MODE "
               "or logger.wandb.mode says otherwise.",
    )
    from fewstep.version import __version__

    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_run_command(
        commands, "teacher", help="pretrain a masked-diffusion teacher (MDLM objective)",
        description="Pretrain a masked-diffusion teacher denoiser with the MDLM NELBO. out_dir receives "
                    "config.yaml, data.json, tokenizer.json, checkpoints/ (last.ckpt, best.ckpt), csv/ and "
                    "wandb/ logs, and a loadable model directory model/."
                    " SIGTERM or SIGUSR1 finish the step, save checkpoints/last.ckpt and exit with status 3 (continue with --resume); trainer.batch_size is the global batch over data-parallel processes (--with cluster/ddp).",
        example="teacher/markov")

    _add_run_command(
        commands, "distill", help="distil a teacher into a few-step student, in rounds (SDTT or trajectory)",
        description="Distil a teacher (a teacher run's out_dir, a model directory or a Hugging Face id, "
                    "teacher.path=...) into a student that samples in fewer steps. method=sdtt: the student "
                    "learns in one step what the teacher does in rounds.k; method=trajectory: the student learns "
                    "the teacher's own samples with a certainty-forcing term. The student's step count starts "
                    "at rounds.start_steps and halves (or shrinks linearly) each round; out_dir receives "
                    "round_<r>/model/ per round, model/ (the final student), rounds.json (validation per round), "
                    "checkpoints/last.ckpt, csv/ and wandb/ logs. Hugging Face teachers: teacher.family=auto, "
                    "mdlm, llada or dream (recipes distill/mdlm_owt, distill/llada_8b, distill/dream_7b); "
                    "student.lora.rank=16 trains LoRA adapters only."
                    " SIGTERM or SIGUSR1 finish the step, save checkpoints/last.ckpt and exit with status 3 (continue with --resume); trainer.batch_size is the global batch over data-parallel processes (--with cluster/ddp).",
        example="distill/markov")

    _add_run_command(
        commands, "evaluator", help="train the reference autoregressive model (GPT-2 config) for generative NLL",
        description="Train a small GPT-2-config causal LM on a data source. It judges samples (generative NLL "
                    "and perplexity) and, decoding with a KV cache, is the autoregressive speed baseline. out_dir "
                    "receives config.yaml, checkpoints/, summary.json and model/ (a Hugging Face causal LM).",
        example="evaluator/markov")

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
    sample.add_argument("--out", default="-", help="output JSONL file, or - for standard output (default); an "
                        "existing file is refused unless --overwrite")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file written by fewstep sample (never any other file)")
    sample.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    from fewstep.cli.sampling import add_sampler_options, add_schedule_parser

    add_sampler_options(sample)
    add_schedule_parser(commands)

    bench = commands.add_parser(
        "bench", help="sweep models x samplers x step counts: tradeoff.json, pareto.png, a W&B run",
        description="Measure every model x sampler x step count side by side (and the autoregressive baseline "
                    "when an evaluator is given): NFE, tokens/s, latency, quality with entropy beside it. out_dir "
                    "receives tradeoff.json, pareto.png and wandb/ (offline unless WANDB_MODE says otherwise).",
    )
    bench.add_argument("config", metavar="CONFIG", help=CONFIG_HELP + " (e.g. a YAML with models: [{name, path}])")
    bench.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    bench.add_argument("--overwrite", action="store_true",
                       help="replace the tradeoff.json of an earlier bench in out_dir (refused without it)")

    tune = commands.add_parser(
        "tune", help="pick the smallest step count meeting a quality target; write it into an export",
        description="Read a tradeoff.json and choose the row with the fewest steps whose quality is at most "
                    "RATIO x the reference's and whose entropy is at least --min-entropy x the reference's; among "
                    "rows with those steps that are as fast (within --speed-tolerance of the fastest), the best "
                    "quality. With --export, the choice becomes that directory's generation defaults.",
    )
    tune.add_argument("tradeoff", metavar="TRADEOFF_JSON", help="a tradeoff.json written by `fewstep bench`")
    tune.add_argument("--target", required=True, metavar="METRIC:RATIO",
                      help="e.g. gen_nll:1.05 or exact_nll:1.05 (a loss: at most RATIO x the reference's), or "
                           "accuracy:0.99 on a prompt set (at least RATIO x the reference's)")
    tune.add_argument("--reference", required=True, metavar="MODEL@STEPS", help="the reference row, e.g. teacher@128")
    tune.add_argument("--min-entropy", type=float, default=0.95,
                      help="entropy at least this fraction of the reference's (default 0.95)")
    tune.add_argument("--speed-tolerance", type=float, default=0.1,
                      help="rows within this fraction of the fastest count as equally fast, and the better quality "
                           "wins (default 0.1: timing noise does not choose)")
    tune.add_argument("--export", metavar="DIR", default=None,
                      help="write the chosen step count, sampler and schedule into this export directory")

    export = commands.add_parser(
        "export", help="write a deployable model directory from a checkpoint or model directory",
        description="Convert a Lightning checkpoint (teacher or distillation run) or a model directory into a "
                    "directory Hugging Face users recognise: config.json, model.safetensors (with fewstep "
                    "metadata), tokenizer files, fewstep.json and fewstep_generation.json (generation defaults).",
    )
    export.add_argument("source", metavar="CKPT", help="a .ckpt file, a model directory or a run's out_dir")
    export.add_argument("out_dir", metavar="OUT_DIR",
                        help="the export directory: new, empty, or an earlier export (with --overwrite, replaced "
                             "atomically); never a run, a model directory or a directory fewstep did not make")
    export.add_argument("--steps", type=int, default=None, help="default step count for generation (>= 1)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is an earlier export")
    export.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)

    generate = commands.add_parser(
        "generate", help="generate text from an export with its tuned defaults",
        description="Load an export (fewstep.load) and print samples, one per line as JSON (text, tokens). With "
                    "--prompt or --prompts, answer prompts: one JSON object per answer with `prompt` and `text` "
                    "(the response only, up to the first end-of-sequence token), to standard output or --out. "
                    "A prompt's answer does not depend on the other prompts in the batch.",
    )
    generate.add_argument("model_dir", metavar="OUT_DIR", help="an export or model directory")
    generate.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                          help="a prompt to answer (repeat for several)")
    generate.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                          help="prompts to answer, one JSON object per line with a `prompt` field")
    generate.add_argument("--chat", action="store_true",
                          help="render each prompt as a user message with the tokenizer's chat template")
    generate.add_argument("--out", default=None, metavar="FILE.jsonl",
                          help="write the answers here (a new file; default: standard output)")
    generate.add_argument("--num-samples", type=int, default=None,
                          help="how many samples (default 4), or answers per prompt (default 1)")
    generate.add_argument("--steps", type=int, default=None, help="override the export's step count")
    generate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    generate.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)

    quick = commands.add_parser(
        "quickstart", help="run the whole pipeline on the embedded default (markov) and print a results table",
        description="On the embedded markov task: train a teacher, train the autoregressive evaluator, distil "
                    "students in rounds (trajectory distillation by default, distill_method=sdtt for SDTT), "
                    "learn the last student's step allocation, sweep the speed/quality trade-off over samplers "
                    "(ancestral, dilated/geometric, learned) and step counts (tradeoff.json, pareto.png, an "
                    "offline W&B run), tune the step count to a quality target and export the result. Prints a "
                    "table of quality, entropy, tokens/s and speed-ups over the teacher and the autoregressive "
                    "model. Finished stages in --out are reused unless --fresh. Overrides (KEY=VALUE) apply to "
                    "configs/quickstart.yaml.",
    )
    quick.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    quick.add_argument("--fresh", action="store_true",
                       help="delete --out and retrain (only if --out is a quickstart directory)")
    quick.add_argument("--steps", default=None,
                       help="comma-separated step counts for the trade-off sweep (default 4,8,16,32,64)")
    quick.add_argument("--num-samples", type=int, default=None, help="samples per measurement (default 64)")
    quick.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)
    return parser


def _run_config(schema: type, args: argparse.Namespace):
    """The validated config of a run command; None after printing it for --print-config."""
    from omegaconf import OmegaConf

    from fewstep.core.config import load_config

    cfg = load_config(schema, [args.config, *args.layers], args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return None
    return cfg


def _cmd_teacher(args: argparse.Namespace) -> int:
    from fewstep.teacher.config import TeacherRunConfig

    cfg = _run_config(TeacherRunConfig, args)
    if cfg is None:
        return 0
    from fewstep.summary import print_teacher_summary
    from fewstep.teacher.run import train_teacher

    result = train_teacher(cfg, resume=args.resume)
    if result.is_global_zero:  # in a data-parallel run, one process reports
        print_teacher_summary(result, cfg)
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from fewstep.distillation.config import DistillRunConfig

    cfg = _run_config(DistillRunConfig, args)
    if cfg is None:
        return 0
    from fewstep.distillation.run import run_distill
    from fewstep.summary import print_distill_summary

    result = run_distill(cfg, resume=args.resume)
    if result.is_global_zero:
        print_distill_summary(result)
    return 0


def _cmd_evaluator(args: argparse.Namespace) -> int:
    from fewstep.evaluation.autoregressive import train_evaluator
    from fewstep.evaluation.config import EvaluatorRunConfig

    cfg = _run_config(EvaluatorRunConfig, args)
    if cfg is None:
        return 0
    summary = train_evaluator(cfg, resume=args.resume)
    print(f"\nevaluator: {summary['parameters']:,} parameters, {summary['steps']} steps, validation NLL "
          f"{summary['val_nll']:.4f} nats/token; model directory: {summary['model_dir']}")
    return 0


def _is_samples_file(path: Path) -> bool:
    """Whether `path` is a JSONL file `fewstep sample` wrote (its first line a record with tokens and sampler)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = json.loads(handle.readline(1_000_000))
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"tokens", "sampler"} <= set(first)


def _cmd_sample(args: argparse.Namespace) -> int:
    from fewstep.cli.sampling import sample_records_with_options
    from fewstep.core.io import atomic_write_text
    from fewstep.core.ownership import check_file
    from fewstep.errors import OwnershipError

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


def _cmd_schedule(args: argparse.Namespace) -> int:
    from fewstep.cli.sampling import run_schedule

    return run_schedule(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from fewstep.core.config import load_config
    from fewstep.summary import format_table
    from fewstep.tradeoff.bench import run_bench, summary_rows
    from fewstep.tradeoff.config import BenchRunConfig

    cfg = load_config(BenchRunConfig, args.config, args.overrides)
    payload = run_bench(cfg, overwrite=args.overwrite)
    rows = summary_rows(payload["rows"])
    print(format_table(rows, list(rows[0])))
    print(f"\nwrote {Path(cfg.out_dir) / 'tradeoff.json'} and {Path(cfg.out_dir) / 'pareto.png'} "
          f"(device: {payload['device']})")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from fewstep.errors import ConfigError
    from fewstep.tradeoff.tune import Target, entropy_reference_row, load_tradeoff, tune

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
    rows = load_tradeoff(args.tradeoff)["rows"]
    chosen, ref = tune(rows, target)
    floor = entropy_reference_row(rows, target)
    print(f"reference {ref['model']} @ {ref['steps']} steps: {metric} {ref['quality'][metric]:.4f}; entropy floor "
          f"{args.min_entropy:g} x {floor['quality']['entropy']:.4f} ({floor['model']} @ {floor['steps']} steps)")
    print(f"chosen    {chosen['model']} ({chosen['sampler']}, {chosen['schedule']}) @ {chosen['steps']} steps: "
          f"{metric} {chosen['quality'][metric]:.4f}, entropy {chosen['quality']['entropy']:.4f}, "
          f"{chosen['tokens_per_s']:.0f} tokens/s ({chosen['tokens_per_s'] / ref['tokens_per_s']:.2f}x the reference)")
    if args.export:
        from fewstep.core.io import atomic_write_text
        from fewstep.deploy.export import GENERATION_FILE
        from fewstep.model.model_dir import resolve_model_dir

        directory = resolve_model_dir(args.export)
        settings = {"steps": chosen["steps"], "sampler": chosen["sampler"], "schedule": chosen["schedule"],
                    "temperature": chosen.get("temperature", 1.0), "tuned": {"target": args.target, "reference": args.reference,
                                                  "min_entropy": args.min_entropy, "row": chosen}}
        atomic_write_text(directory / GENERATION_FILE, json.dumps(settings, indent=2))
        print(f"wrote {directory / GENERATION_FILE}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fewstep.deploy.export import export_model

    out = export_model(args.source, args.out_dir, None if args.steps is None else {"steps": args.steps},
                       overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    print(f"exported to {out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from fewstep.core.io import atomic_write_text
    from fewstep.deploy.export import load, read_prompts
    from fewstep.errors import ConfigError

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


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from fewstep.errors import ConfigError
    from fewstep.quickstart import quickstart

    overrides = list(args.overrides)
    if args.steps:
        try:
            steps = [int(s) for s in args.steps.split(",")]
        except ValueError as error:
            raise ConfigError(f"--steps must be comma-separated integers, got {args.steps!r}") from error
        overrides.append(f"bench_steps=[{','.join(map(str, steps))}]")
    if args.num_samples:
        overrides.append(f"bench_samples={args.num_samples}")
    quickstart(Path(args.out), fresh=args.fresh, overrides=overrides)
    return 0


_COMMANDS = {"teacher": _cmd_teacher, "distill": _cmd_distill, "evaluator": _cmd_evaluator,
             "bench": _cmd_bench, "tune": _cmd_tune, "export": _cmd_export, "generate": _cmd_generate, "schedule": _cmd_schedule, "sample": _cmd_sample, "quickstart": _cmd_quickstart}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (`teacher CFG --resume a=1` and `teacher CFG a=1 --resume`)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from fewstep.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        ModelError,
        NonFiniteLossError,
        OwnershipError,
        Preempted,
        RunError,
    )

    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, DataError, ModelError, RunError, OwnershipError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Preempted as error:
        print(f"stopped: {error}", file=sys.stderr)
        return Preempted.exit_code
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
