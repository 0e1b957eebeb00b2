"""The options each command adds beyond its run config (CONFIG, KEY=VALUE, --with, --print-config, --resume,
which `fewstep.cli.parser` adds from the command table)."""

from __future__ import annotations

import argparse

from fewstep.evaluation.metrics import ACCURACY, EXACT_NLL, GEN_NLL

__all__ = ["CONFIG_HELP", "OVERRIDES_HELP", "TRUST_HELP", "add_sample_options", "add_bench_options",
           "add_tune_options", "add_export_options", "add_generate_options", "add_quickstart_options"]

CONFIG_HELP = (
    "a YAML config file, or the name of one shipped with fewstep (e.g. teacher/markov, teacher/stdlib, "
    "quickstart); keys it does not set keep their defaults"
)
OVERRIDES_HELP = "config overrides as key=value, e.g. data.seq_len=128 trainer.max_steps=500 out_dir=runs/t"
TRUST_HELP = ("let a model directory that ships its own Python modeling code run it (Hugging Face "
              "trust_remote_code); off by default: only pass it for a directory you trust")


def add_sample_options(sample: argparse.ArgumentParser) -> None:
    """`fewstep sample MODEL_DIR`: how many, how long, where to; the sampler's options come from `sampling`."""
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


def add_bench_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--overwrite", action="store_true",
                       help="replace the tradeoff.json of an earlier bench in out_dir (refused without it)")


def add_tune_options(tune: argparse.ArgumentParser) -> None:
    tune.add_argument("tradeoff", metavar="TRADEOFF_JSON", help="a tradeoff.json written by `fewstep bench`")
    tune.add_argument("--target", required=True, metavar="METRIC:RATIO",
                      help=f"e.g. {GEN_NLL}:1.05 or {EXACT_NLL}:1.05 (a loss: at most RATIO x the reference's), "
                           f"or {ACCURACY}:0.99 on a prompt set (at least RATIO x the reference's)")
    tune.add_argument("--reference", required=True, metavar="MODEL@STEPS",
                      help="the reference row, e.g. teacher@128, at the bench's own temperature (rows at its "
                           "extra_temperatures may be chosen, not be the reference)")
    tune.add_argument("--min-entropy", type=float, default=0.95,
                      help="entropy at least this fraction of the reference's (default 0.95)")
    tune.add_argument("--speed-tolerance", type=float, default=0.1,
                      help="rows within this fraction of the fastest count as equally fast, and the better quality "
                           "wins (default 0.1: timing noise does not choose)")
    tune.add_argument("--export", metavar="DIR", default=None,
                      help="write the chosen step count, sampler and schedule into this export directory")


def add_export_options(export: argparse.ArgumentParser) -> None:
    export.add_argument("source", metavar="CKPT", help="a .ckpt file, a model directory or a run's out_dir")
    export.add_argument("out_dir", metavar="OUT_DIR",
                        help="the export directory: new, empty, or an earlier export (with --overwrite, replaced "
                             "atomically); never a run, a model directory or a directory fewstep did not make")
    export.add_argument("--steps", type=int, default=None, help="default step count for generation (>= 1)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is an earlier export")
    export.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)


def add_generate_options(generate: argparse.ArgumentParser) -> None:
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


def add_quickstart_options(quick: argparse.ArgumentParser) -> None:
    quick.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    quick.add_argument("--fresh", action="store_true",
                       help="delete --out and retrain (only if --out is a quickstart directory)")
    quick.add_argument("--steps", default=None,
                       help="comma-separated step counts for the trade-off sweep (default 4,8,16,32,64)")
    quick.add_argument("--num-samples", type=int, default=None, help="samples per measurement (default 64)")
