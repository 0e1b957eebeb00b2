"""The `--sampler/--policy/--schedule` options of `fewstep sample`, and sampling as they say.

Their choices come from `fewstep.samplers.names`, which needs no torch; sampling itself imports the samplers
when it runs."""

from __future__ import annotations

import argparse
import math
from typing import Any

from fewstep.errors import RunError
from fewstep.samplers.names import POLICY_NAMES, PRESETS, SCHEDULE_NAMES

__all__ = [
    "add_sampler_options",
    "sample_with_options",
    "sample_records_with_options",
]


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """Add `--sampler`, `--policy`, `--schedule` and their parameters to `fewstep sample`."""

    parser.add_argument(
        "--sampler",
        default="ancestral",
        choices=list(PRESETS),
        help="a named sampler (policy + schedule): ancestral (MDLM, default), dilated (far-apart "
        "tokens first), llada, dream, fast-dllm (each as its reference's generate: blocks from the "
        "prompt's end, its counts and confidence), eb, learned (both from the model's scheduler_config.json)",
    )
    parser.add_argument(
        "--policy",
        default=None,
        choices=list(POLICY_NAMES),
        help="which tokens to reveal, overriding the sampler's: random, dilated (a fixed order that "
        "never reveals neighbours together while gaps remain), confidence (the sampled token's "
        "probability, as LLaDA), top1 (the most likely token's), margin, entropy (top-k), "
        "threshold (Fast-dLLM), eb (entropy-bounded), learned",
    )
    parser.add_argument(
        "--schedule",
        default=None,
        choices=[*SCHEDULE_NAMES, "learned"],
        help="how many tokens per step, overriding the sampler's: loglinear, linear, cosine, "
        "geometric (doubling each step; pairs with --policy dilated), ancestral (random counts, MDLM), "
        "even (LLaDA's split per block), dream (Dream's int(M(1 - s/t))), cap (only what the policy "
        "accepts, the rest at the block's last step) or learned",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.9, help="--policy threshold: the sampled token's probability at or above which it is revealed (0.9)"
    )
    parser.add_argument(
        "--fallback",
        default=None,
        choices=["random", "dilated", "confidence", "margin", "entropy"],
        help="--policy threshold / eb: the order that fills the schedule's count beyond the "
        "accepted tokens (default: their own score)",
    )
    parser.add_argument(
        "--eb-gamma", type=float, default=0.1, help="--policy eb: entropy bound in nats (0.1)"
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="semi-autoregressive blocks of this many tokens, filled left to right from where the "
        "prompt ends; the step budget is split over them (LLaDA's block_length)",
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help="text the samples start with (a prefix; the tokenizer's mask token marks spans to infill)",
    )


def sample_with_options(
    loaded: Any, args: argparse.Namespace, seq_len: int | None = None, device: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """Sample from a loaded model directory as the options say; returns (SampleOutput, the sampler)."""
    # lazy: the samplers import torch, which `fewstep --help` must not
    from fewstep.samplers.presets import build_sampler

    if args.steps < 1:
        raise RunError("--steps must be at least 1")
    if args.num_samples < 1:
        raise RunError("--num-samples must be at least 1")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise RunError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    meta = loaded.meta
    seq_len = seq_len or args.seq_len or int(meta.get("seq_len", 64))
    max_len = getattr(getattr(loaded.denoiser, "backbone", None), "config", None)
    max_len = getattr(max_len, "max_position_embeddings", None)
    if max_len is not None and seq_len > max_len:
        raise RunError(f"--seq-len {seq_len} is longer than the model's {max_len} positions")
    sampler = build_sampler(
        args.sampler,
        args.policy,
        args.schedule,
        steps=args.steps,
        meta=meta,
        model_dir=loaded.path,
        threshold=args.threshold,
        gamma=args.eb_gamma,
        fallback=args.fallback,
        block_size=args.block_size,
        temperature=args.temperature,
    )
    prompt = None
    if getattr(args, "prompt", None):
        prompt = loaded.tokenizer(args.prompt, add_special_tokens=False)["input_ids"]
        if not prompt:
            raise RunError(f"--prompt {args.prompt!r} encodes to no tokens")
    output = sampler.generate(
        loaded.denoiser,
        args.num_samples,
        seq_len,
        args.steps,
        prompt=prompt,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device or args.device,
    )
    return output, sampler.describe()


def sample_records_with_options(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`fewstep sample`: one dict per sequence (text, tokens, NFE, the sampler, exact scores on markov)."""
    # lazy: torch, the model directory and the scorers are the whole stack, which `fewstep --help` must not import
    import torch

    # lazy: (as above)
    from fewstep.evaluation.quality import sequence_records

    # lazy: (as above)
    from fewstep.model.model_dir import load_model_dir

    # lazy: (as above)
    from fewstep.training.runtime import check_device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    loaded = load_model_dir(args.model_dir, device=device, trust_remote_code=args.trust_remote_code)
    output, described = sample_with_options(loaded, args, device=device)
    return sequence_records(output.tokens, loaded.tokenizer, loaded.meta.get("data"), steps=args.steps,
                            seed=args.seed, nfe=output.nfe_per_sequence, sampler=described)
