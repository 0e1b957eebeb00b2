"""The command table: every `fewstep` command, its help, its description, the function that runs it, its run
config (a "module:Class" reference, read only when the command runs or shows its help) and its own options.

A command with a config takes KEY=VALUE overrides, --with and --print-config; with `config_file` also CONFIG
(quickstart reads its own); with `resume` (it trains) also --resume. `fewstep.cli.parser` builds the parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from fewstep.cli import runs, tools
from fewstep.cli.options import (
    OVERRIDES_HELP,
    add_bench_options,
    add_export_options,
    add_generate_options,
    add_quickstart_options,
    add_sample_options,
    add_tune_options,
)
from fewstep.cli.sampling import add_sampler_options

__all__ = ["Command", "COMMANDS", "STOP_NOTE"]

STOP_NOTE = (" SIGTERM or SIGUSR1 finish the step, save checkpoints/last.ckpt and exit with status 3 (continue with "
             "--resume); trainer.batch_size is the global batch over data-parallel processes (--with cluster/ddp).")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    run: Callable[[argparse.Namespace], int]
    config: str | None = None  # "module:Class" of the run config; None: the command takes no config
    config_file: bool = True  # takes CONFIG (quickstart reads its own shipped config, then any --with)
    example: str = ""  # a shipped config, named in CONFIG's help
    resume: bool = False  # trains, and can continue from checkpoints/last.ckpt
    options: Callable[[argparse.ArgumentParser], None] | None = None  # the command's own options
    # options added only when the command is parsed or its help shown (their choices import torch)
    late_options: Callable[[argparse.ArgumentParser], None] | None = None
    overrides_help: str = OVERRIDES_HELP


COMMANDS: tuple[Command, ...] = (
    Command(
        "teacher", "pretrain a masked-diffusion teacher (MDLM objective)",
        "Pretrain a masked-diffusion teacher denoiser with the MDLM NELBO. out_dir receives config.yaml, data.json, "
        "tokenizer.json, checkpoints/ (last.ckpt, best.ckpt), csv/ and wandb/ logs, and a loadable model directory "
        "model/." + STOP_NOTE,
        runs.cmd_teacher, "fewstep.teacher.config:TeacherRunConfig", example="teacher/markov", resume=True),
    Command(
        "distill", "distil a teacher into a few-step student, in rounds (SDTT or trajectory)",
        "Distil a teacher (a teacher run's out_dir, a model directory or a Hugging Face id, teacher.path=...) into "
        "a student that samples in fewer steps. method=sdtt: the student learns in one step what the teacher does "
        "in rounds.k; method=trajectory: the student learns the teacher's own samples with a certainty-forcing "
        "term. The student's step count starts at rounds.start_steps and halves (or shrinks linearly) each round; "
        "out_dir receives round_<r>/model/ per round, model/ (the final student), rounds.json (validation per "
        "round), checkpoints/last.ckpt, csv/ and wandb/ logs. Hugging Face teachers: teacher.family=auto, mdlm, "
        "llada or dream (recipes distill/mdlm_owt, distill/llada_8b, distill/dream_7b); student.lora.rank=16 "
        "trains LoRA adapters only." + STOP_NOTE,
        runs.cmd_distill, "fewstep.distillation.config:DistillRunConfig", example="distill/markov", resume=True),
    Command(
        "evaluator", "train the reference autoregressive model (GPT-2 config) for generative NLL",
        "Train a small GPT-2-config causal LM on a data source. It judges samples (generative NLL and perplexity) "
        "and, decoding with a KV cache, is the autoregressive speed baseline. out_dir receives config.yaml, "
        "checkpoints/, summary.json and model/ (a Hugging Face causal LM).",
        runs.cmd_evaluator, "fewstep.evaluation.config:EvaluatorRunConfig", example="evaluator/markov", resume=True),
    Command(
        "sample", "draw samples from a model directory",
        "Draw samples with the ancestral sampler (float64 Gumbel noise) and write one JSON object per line: text, "
        "tokens, and, for the markov task, the exact NLL and invalid transitions.",
        tools.cmd_sample, options=add_sample_options, late_options=add_sampler_options),
    Command(
        "schedule", "learn a step allocation and/or unmasking policy for a model and step budget",
        "Learn how to unmask for model=DIR at a budget of steps=N: what=allocation (how many tokens per step, by "
        "direct search on validation quality), what=policy (a tiny head that decides which tokens to finalise, "
        "imitating an oracle), or what=both. Writes scheduler_config.json (and policy_head.safetensors) into the "
        "model directory; sample with it by `fewstep sample DIR --sampler learned --steps N`.",
        runs.cmd_schedule, "fewstep.schedule.config:ScheduleRunConfig", example="schedule/markov",
        overrides_help="config overrides, e.g. model=runs/teacher-markov steps=16 what=allocation"),
    Command(
        "bench", "sweep models x samplers x step counts: tradeoff.json, pareto.png, a W&B run",
        "Measure every model x sampler x step count side by side (and the autoregressive baseline when an "
        "evaluator is given): NFE, tokens/s, latency, quality with entropy beside it. out_dir receives "
        "tradeoff.json, pareto.png and wandb/ (offline unless WANDB_MODE says otherwise).",
        runs.cmd_bench, "fewstep.tradeoff.config:BenchRunConfig", example="a YAML with models: [{name, path}]",
        options=add_bench_options),
    Command(
        "tune", "pick the smallest step count meeting a quality target; write it into an export",
        "Read a tradeoff.json and choose the row with the fewest steps whose quality is at most RATIO x the "
        "reference's and whose entropy is at least --min-entropy x the reference's; among rows with those steps "
        "that are as fast (within --speed-tolerance of the fastest), the best quality. With --export, the choice "
        "becomes that directory's generation defaults.",
        tools.cmd_tune, options=add_tune_options),
    Command(
        "export", "write a deployable model directory from a checkpoint or model directory",
        "Convert a Lightning checkpoint (teacher or distillation run) or a model directory into a directory "
        "Hugging Face users recognise: config.json, model.safetensors (with fewstep metadata), tokenizer files, "
        "fewstep.json and fewstep_generation.json (generation defaults).",
        tools.cmd_export, options=add_export_options),
    Command(
        "generate", "generate text from an export with its tuned defaults",
        "Load an export (fewstep.load) and print samples, one per line as JSON (text, tokens). With --prompt or "
        "--prompts, answer prompts: one JSON object per answer with `prompt` and `text` (the response only, up to "
        "the first end-of-sequence token), to standard output or --out. A prompt's answer does not depend on the "
        "other prompts in the batch.",
        tools.cmd_generate, options=add_generate_options),
    Command(
        "quickstart", "run the whole pipeline on the embedded default (markov) and print a results table",
        "On the embedded markov task: train a teacher, train the autoregressive evaluator, distil students in "
        "rounds (trajectory distillation by default, distill_method=sdtt for SDTT), learn the last student's step "
        "allocation, sweep the speed/quality trade-off over samplers (ancestral, dilated/geometric, learned) and "
        "step counts (tradeoff.json, pareto.png, an offline W&B run), tune the step count to a quality target and "
        "export the result. Prints a table of quality, entropy, tokens/s and speed-ups over the teacher and the "
        "autoregressive model. Finished stages in --out are reused unless --fresh. Overrides (KEY=VALUE) apply to "
        "configs/quickstart.yaml.",
        runs.cmd_quickstart, "fewstep.quickstart.config:QuickstartConfig", config_file=False,
        options=add_quickstart_options),
)
