"""`denoise_step`: validation, the rule that picks positions, dispatch (Triton on CUDA, torch elsewhere).

The op is registered as the torch custom op `fewstep::denoise_step` with a fake implementation, so
`torch.compile(fullgraph=True)` traces through it and a CUDA graph can capture it.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch

from fewstep.kernels import stats as _stats
from fewstep.kernels.reference import reference_step, select_reveal
from fewstep.kernels.stats import StepStats
from fewstep.kernels.streams import LANE_TOKEN, counter_uniform, sequence_keys

__all__ = ["StepResult", "denoise_step", "token_stats", "triton_available"]

_LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "torch", "triton")


class StepResult(NamedTuple):
    """One step's outcome. Per position [B, L] unless noted; statistics are float32.

    `sampled` is the proposal (the current token where already revealed); `prob` its probability under
    softmax(logits / T) (T = 1 when T = 0); `margin` top-1 minus top-2 probability; `entropy` in nats.
    Revealed positions report prob 1, margin 1, entropy 0. `num_revealed` is [B] int64.
    """

    tokens: torch.Tensor
    sampled: torch.Tensor
    prob: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor
    revealed: torch.Tensor
    num_revealed: torch.Tensor


@functools.cache
def triton_available() -> bool:
    """Whether `triton` imports (checked once, lazily)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _use_triton(device: torch.device, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the `triton` package")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' on a CPU tensor needs TRITON_INTERPRET=1 set before triton is imported")
        return True
    return device.type == "cuda" and triton_available()


@torch.library.custom_op("fewstep::denoise_step", mutates_args=())
def _denoise_step_op(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, temperature: float, seed: int,
                     seed_tensor: torch.Tensor | None, offset: int, noise: torch.Tensor | None,
                     count: torch.Tensor | None, threshold: float, scores: torch.Tensor | None, strict: bool,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                            torch.Tensor, torch.Tensor]:
    rule_threshold = None if count is not None else threshold
    if _use_triton(logits.device, backend):
        # lazy: triton_step imports triton, an optional dependency that only a CUDA path needs
        from fewstep.kernels.triton_step import triton_step

        keys = None
        if noise is None:  # seed mode: the same per-sequence keys as the torch path
            keys = sequence_keys(seed_tensor if seed_tensor is not None else seed,
                                 torch.arange(tokens.shape[0], device=logits.device))
        return triton_step(logits, tokens, mask_id, temperature, seed_tensor if seed_tensor is not None else seed,
                           offset, noise, count, rule_threshold, scores, strict, keys=keys)[:7]
    if noise is not None:  # injected Gumbel noise: the float64 reference, the oracle of the tests
        return reference_step(logits, tokens, mask_id, temperature, noise, count, rule_threshold, scores, strict)
    return _torch_step(logits, tokens, mask_id, temperature, seed_tensor if seed_tensor is not None else seed,
                       offset, count, rule_threshold, scores, strict)


def _torch_step(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, temperature: float,
                seed: int | torch.Tensor, offset: int, count: torch.Tensor | None, threshold: float | None,
                scores: torch.Tensor | None, strict: bool) -> tuple[torch.Tensor, ...]:
    """The step on the torch path: counter-based uniforms keyed by (seed, row, offset, position), the
    chunked statistics, then the selection; nothing of size [B, L, V] beyond the logits."""
    batch, length, _ = logits.shape
    masked = tokens == mask_id
    keys = sequence_keys(seed, torch.arange(batch, device=logits.device))
    uniform = counter_uniform(keys, offset, torch.arange(length, device=logits.device), LANE_TOKEN)
    stats = _stats.torch_token_stats(logits, masked, uniform, mask_id, temperature)
    one = torch.ones_like(stats.sampled_prob)
    prob = torch.where(masked, stats.sampled_prob, one)
    margin = torch.where(masked, stats.margin, one)
    entropy = torch.where(masked, stats.entropy, torch.zeros_like(one))
    sampled = torch.where(masked, stats.proposal.to(tokens.dtype), tokens)
    revealed = select_reveal(prob if scores is None else scores, masked, count=count, threshold=threshold,
                             strict=strict)
    return torch.where(revealed, sampled, tokens), sampled, prob, margin, entropy, revealed, revealed.sum(dim=1)


@_denoise_step_op.register_fake
def _(logits, tokens, mask_id, temperature, seed, seed_tensor, offset, noise, count, threshold, scores, strict,
      backend):
    batch, length = tokens.shape
    stat = logits.new_empty((batch, length), dtype=torch.float32)
    return (torch.empty_like(tokens), torch.empty_like(tokens), stat, torch.empty_like(stat),
            torch.empty_like(stat), tokens.new_empty((batch, length), dtype=torch.bool),
            tokens.new_empty((batch,), dtype=torch.int64))


def _check_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...],
                  device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but logits are on {device}")


def denoise_step(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, *, temperature: float = 1.0,
                 seed: int | torch.Tensor = 0, offset: int = 0, noise: torch.Tensor | None = None,
                 count: int | torch.Tensor | None = None, threshold: float | None = None,
                 scores: torch.Tensor | None = None, backend: str = "auto") -> StepResult:
    """One fused denoising step: sample every masked position, choose which to reveal, write them back.

    logits [B, L, V] (fp32/fp16/bf16, last dim contiguous), tokens [B, L] (int64/int32). Positions not
    equal to `mask_id` never change; the mask token is never sampled. T = 0 is argmax; T > 0 samples
    argmax(logits / T + Gumbel). Noise: `noise` [B, L, V] Gumbel values injected (float64 makes the
    Triton kernel bit-exact with the reference), else counter-based from (`seed`, `offset`); `seed` may
    be an int64 device tensor [1] so a captured CUDA graph can be replayed with new seeds.
    Selection (score = `scores` [B, L] if given, else `prob`), always at least one per row with a mask:
      - `count` (int or [B] int64): the k highest scores, ties to the lowest position;
        `count` + random `scores` is MDLM's ancestral rule (k random masked positions);
      - `threshold`: every score >= threshold, else the single best;
      - `scores` alone: every position with score > 0, else the single best (a learned policy).
    backend: "auto" (Triton for CUDA tensors when importable, else torch), "torch", or "triton".
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a [batch, length, vocab] tensor, got {getattr(logits, 'shape', logits)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    batch, length, vocab = logits.shape
    device = logits.device
    if logits.stride(2) != 1:
        raise ValueError("logits must be contiguous in the vocabulary dimension (stride(-1) == 1)")
    if vocab < 2:
        raise ValueError(f"vocab size must be at least 2 (the mask and one token), got {vocab}")
    _check_tensor("tokens", tokens, (batch, length), (torch.int64, torch.int32), device)
    if not 0 <= int(mask_id) < vocab:
        raise ValueError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab})")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if noise is not None:
        _check_tensor("noise", noise, (batch, length, vocab), (torch.float64, torch.float32), device)
        noise = noise.contiguous()
    seed_tensor = None
    if isinstance(seed, torch.Tensor):
        _check_tensor("seed", seed, (1,), (torch.int64,), device)
        seed_tensor, seed = seed, 0
    if scores is not None:
        _check_tensor("scores", scores, (batch, length), (torch.float32, torch.float16, torch.bfloat16,
                                                          torch.float64), device)
    if count is not None and threshold is not None:
        raise ValueError("give either count or threshold, not both")
    if count is None and threshold is None and scores is None:
        raise ValueError("give a selection rule: count, threshold or scores")
    if isinstance(count, int):
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        count = torch.full((batch,), count, dtype=torch.int64, device=device)
    elif count is not None:
        _check_tensor("count", count, (batch,), (torch.int64, torch.int32), device)
        count = count.to(torch.int64)
    strict = count is None and threshold is None
    out = torch.ops.fewstep.denoise_step(logits, tokens, int(mask_id), temperature, int(seed), seed_tensor,
                                         int(offset), noise, count, 0.0 if threshold is None else float(threshold),
                                         scores, strict, backend)
    return StepResult(*out)


def token_stats(logits: torch.Tensor, rows: torch.Tensor, mask_id: int, *, temperature: float = 1.0,
                keys: torch.Tensor, step: int | torch.Tensor, stats_at: str = "sample",
                need_entropy: bool = True, backend: str = "auto") -> StepStats:
    """The statistics a sampler's policies rank by, at positions `rows` [B, L] of logits [B, L, V].

    One streaming pass on CUDA (Triton: Gumbel-argmax with Philox noise keyed by (keys[b], step,
    position, token)); the chunked torch path elsewhere (inverse-CDF with `uniform` [B, L] float64, the
    counter-based draw of (keys[b], step, position), lane LANE_TOKEN). Both draw exactly from softmax(logits / T) to
    float64 accuracy and depend only on a sequence's own key, never on its batch; they are different
    streams, so the two backends agree in distribution, not token for token. `stats_at`: "sample" gives
    statistics of softmax(logits / T), "one" of softmax(logits) (T = 0: always softmax(logits)).
    """
    stats_temperature = temperature if (stats_at == "sample" and temperature > 0) else 1.0
    same_temperature = temperature == 0 or stats_temperature == temperature
    if same_temperature and _use_triton(logits.device, backend) and logits.dtype in _LOGIT_DTYPES:
        # lazy: triton_step imports triton, an optional dependency that only a CUDA path needs
        from fewstep.kernels.triton_step import triton_stats

        return triton_stats(logits, rows, mask_id, temperature, keys, step)
    positions = torch.arange(logits.shape[1], device=logits.device)
    uniform = counter_uniform(keys, step, positions, LANE_TOKEN) if temperature > 0 else None
    return _stats.torch_token_stats(logits, rows, uniform, mask_id, temperature, stats_temperature,
                             need_entropy=need_entropy)
