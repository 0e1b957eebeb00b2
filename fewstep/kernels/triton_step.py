"""The fused denoising step in Triton: a streaming pass over each masked row, then per-sequence selection.

Two launches, no host synchronisation, static grid (so a CUDA graph can capture it):

1. `_row_kernel`, grid (rows, splits): one streaming pass over a slice of a masked row's logits keeps a
   running max / sum-exp / entropy accumulator, the top-2 values and the Gumbel-argmax. Rows whose
   token is already revealed read nothing. When rows are too few to fill the GPU the vocabulary is split
   across `splits` programs and their partial states are merged in step 2.
2. `_select_kernel`, grid (batch,): merges the partial states of a sequence's positions, finishes the
   statistics, chooses the positions to reveal (top-k by radix select, or threshold with a fallback)
   and writes the new tokens.

Arithmetic is float32, or float64 when float64 noise is injected (the bit-exact test mode). Seed-mode
Gumbel noise is built from two 32-bit Philox outputs as a 64-bit-precision uniform and the log1p form
of -log(u), so its tail reaches float64 sampling's (and beyond) instead of stopping near 16.6.
This module imports triton at the top: import it lazily (`fewstep.kernels.step` does).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from fewstep.kernels.stats import StepStats

__all__ = ["num_splits", "triton_stats", "triton_step"]

_N_PART = 7  # m, z, a, t1, t2, best_key, best_s
_RULE_COUNT = 0
_RULE_THRESHOLD = 1


@triton.jit
def _gumbel_from_bits(hi, lo):
    """Gumbel noise from a 64-bit uniform u = (hi * 2^32 + lo + 1/2) / 2^64, accurate at both tails."""
    upper = (hi >> 31) == 1
    h = tl.where(upper, ~hi, hi)
    lo_ = tl.where(upper, ~lo, lo)
    # v = min(u, 1 - u) in (0, 1/2], with full relative precision even near 0.
    v = h.to(tl.float32) * 2.3283064365386963e-10 + (lo_.to(tl.float32) + 0.5) * 5.421010862427522e-20
    y = 1.0 - v
    # log1p(-v) by Goldberg's trick: log(y) * (-v) / (y - 1), exact-enough for small v.
    log1p_neg = tl.where(y == 1.0, -v, tl.log(y) * v / tl.where(y == 1.0, 1.0, 1.0 - y))
    exp_draw = tl.where(upper, -log1p_neg, -tl.log(v))  # E = -log(u) ~ Exp(1)
    return -tl.log(exp_draw)


@triton.jit
def _row_kernel(logits_ptr, tokens_ptr, noise_ptr, seed_ptr, seed_val, inv_t_ptr, inv_t_val, part_ptr,
                part_tok_ptr, L, V, mask_id, offset, stride_lb, stride_ll, stride_nrow, chunk,
                SAMPLE: tl.constexpr, NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, KEYED: tl.constexpr,
                FP64: tl.constexpr, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    split = tl.program_id(1)
    tok = tl.load(tokens_ptr + row)
    if tok == mask_id:
        dt = tl.float64 if FP64 else tl.float32
        b = row // L
        pos = row - b * L
        row_ptr = logits_ptr + b.to(tl.int64) * stride_lb + pos.to(tl.int64) * stride_ll
        if FP64:
            inv_t = tl.load(inv_t_ptr)  # a float64 scalar argument would arrive rounded to float32
        else:
            inv_t = inv_t_val
        if KEYED:  # one key per sequence: its noise never depends on its batch
            seed = tl.load(seed_ptr + b)
        elif SEED_FROM_PTR:
            seed = tl.load(seed_ptr)
        else:
            seed = seed_val
        start = split * chunk
        end = tl.minimum(start + chunk, V)
        neg_inf = -float("inf")
        lane = tl.arange(0, BLOCK)
        # Per-lane streaming state; lanes are reduced once, after the loop.
        m = tl.full((BLOCK,), neg_inf, dt)  # running max of s = logit / T
        z = tl.zeros((BLOCK,), dt)  # sum exp(s - m)
        a = tl.zeros((BLOCK,), dt)  # sum exp(s - m) * (s - m), for the entropy
        t1 = tl.full((BLOCK,), neg_inf, dt)  # top-2 values of s
        t2 = tl.full((BLOCK,), neg_inf, dt)
        best_key = tl.full((BLOCK,), neg_inf, dt)  # Gumbel-argmax: key, index, s at the index
        best_tok = start + lane
        best_s = tl.full((BLOCK,), neg_inf, dt)
        t1_tok = start + lane  # the index of each lane's top-1 value
        for off in range(start, end, BLOCK):
            idx = off + lane
            valid = idx < end
            x = tl.load(row_ptr + idx, mask=valid, other=neg_inf).to(dt)
            s = x * inv_t if SAMPLE else x
            s = tl.where(valid & (idx != mask_id), s, neg_inf)
            if SAMPLE:
                if NOISE == 1:
                    g = tl.load(noise_ptr + row.to(tl.int64) * stride_nrow + idx, mask=valid, other=0.0).to(dt)
                else:
                    zero = tl.zeros_like(idx)
                    if KEYED:
                        hi, lo, _, _ = tl.philox(seed, idx, zero + pos, zero + offset, zero)
                    else:
                        hi, lo, _, _ = tl.philox(seed, idx, zero + row, zero + offset, zero)
                    g = _gumbel_from_bits(hi, lo).to(dt)
                key = tl.where(s == neg_inf, neg_inf, s + g)
            else:
                key = s
            better = key > best_key  # strict: a lane keeps its first (lowest) index on ties
            best_key = tl.where(better, key, best_key)
            best_tok = tl.where(better, idx, best_tok)
            best_s = tl.where(better, s, best_s)
            t2 = tl.maximum(t2, tl.minimum(t1, s))
            t1_tok = tl.where(s > t1, idx, t1_tok)
            t1 = tl.maximum(t1, s)
            # Online softmax with one exp per element: exp(-|s - m|) rescales whichever side is smaller.
            finite = s > neg_inf
            grow = s > m
            d = tl.where(finite, tl.where(grow, m - s, s - m), 0.0)
            d = tl.where(m == neg_inf, 0.0, d)
            t = tl.where(finite & (m > neg_inf), tl.exp(d), tl.where(finite, 1.0, 0.0))
            z_new = tl.where(grow, z * t + 1.0, z + t)
            a = tl.where(grow, t * (a + z * d), a + t * d)
            z = tl.where(finite, z_new, z)
            m = tl.where(grow, s, m)
        # Reduce the lanes.
        big_m = tl.max(m, axis=0)
        live = z > 0
        gap = tl.where(live, m - big_m, 0.0)
        scale = tl.where(live, tl.exp(gap), 0.0)
        z_all = tl.sum(z * scale, axis=0)
        a_all = tl.sum(scale * (a + z * gap), axis=0)
        top1 = tl.max(t1, axis=0)
        first = tl.min(tl.where(t1 == top1, lane, BLOCK), axis=0)
        top2 = tl.maximum(tl.max(t2, axis=0), tl.max(tl.where(lane == first, neg_inf, t1), axis=0))
        arg_tok = tl.min(tl.where(t1 == top1, t1_tok, 2147483647), axis=0)
        kmax = tl.max(best_key, axis=0)
        win_tok = tl.min(tl.where(best_key == kmax, best_tok, 2147483647), axis=0)
        win_s = tl.max(tl.where(best_tok == win_tok, best_s, neg_inf), axis=0)
        base = (row.to(tl.int64) * SPLITS + split) * 7
        tl.store(part_ptr + base + 0, big_m)
        tl.store(part_ptr + base + 1, z_all)
        tl.store(part_ptr + base + 2, a_all)
        tl.store(part_ptr + base + 3, top1)
        tl.store(part_ptr + base + 4, top2)
        tl.store(part_ptr + base + 5, kmax)
        tl.store(part_ptr + base + 6, win_s)
        tl.store(part_tok_ptr + (row.to(tl.int64) * SPLITS + split) * 2, win_tok)
        tl.store(part_tok_ptr + (row.to(tl.int64) * SPLITS + split) * 2 + 1, arg_tok)


@triton.jit
def _select_kernel(tokens_ptr, part_ptr, part_tok_ptr, count_ptr, scores_ptr,
                   out_tokens_ptr, out_sampled_ptr, out_prob_ptr, out_margin_ptr, out_entropy_ptr,
                   out_revealed_ptr, out_num_ptr, out_top1_ptr, out_argmax_ptr, L, mask_id, threshold,
                   RULE: tl.constexpr, STRICT: tl.constexpr, HAS_SCORES: tl.constexpr, FP64: tl.constexpr,
                   SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr, BLOCK_L: tl.constexpr):
    b = tl.program_id(0)
    dt = tl.float64 if FP64 else tl.float32
    neg_inf = -float("inf")
    pos = tl.arange(0, BLOCK_L)
    in_row = pos < L
    rows = b.to(tl.int64) * L + pos
    tok = tl.load(tokens_ptr + rows, mask=in_row, other=0)
    masked = in_row & (tok == mask_id)

    # Merge the vocabulary splits of every masked position.
    sp = tl.arange(0, SPLITS_P2)
    pmask = masked[:, None] & (sp[None, :] < SPLITS)
    base = (rows[:, None] * SPLITS + sp[None, :]) * 7
    pm = tl.load(part_ptr + base + 0, mask=pmask, other=neg_inf).to(dt)
    pz = tl.load(part_ptr + base + 1, mask=pmask, other=0.0).to(dt)
    pa = tl.load(part_ptr + base + 2, mask=pmask, other=0.0).to(dt)
    pt1 = tl.load(part_ptr + base + 3, mask=pmask, other=neg_inf).to(dt)
    pt2 = tl.load(part_ptr + base + 4, mask=pmask, other=neg_inf).to(dt)
    pkey = tl.load(part_ptr + base + 5, mask=pmask, other=neg_inf).to(dt)
    ps = tl.load(part_ptr + base + 6, mask=pmask, other=neg_inf).to(dt)
    ptok = tl.load(part_tok_ptr + (rows[:, None] * SPLITS + sp[None, :]) * 2, mask=pmask, other=0)
    parg = tl.load(part_tok_ptr + (rows[:, None] * SPLITS + sp[None, :]) * 2 + 1, mask=pmask, other=2147483647)
    live = pz > 0
    big_m = tl.max(tl.where(live, pm, neg_inf), axis=1)
    big_m = tl.where(big_m == neg_inf, 0.0, big_m)
    gap = tl.where(live, pm - big_m[:, None], 0.0)
    scale = tl.where(live, tl.exp(gap), 0.0)
    z = tl.sum(pz * scale, axis=1)
    a = tl.sum(scale * (pa + pz * gap), axis=1)
    top1 = tl.max(pt1, axis=1)
    first1 = tl.min(tl.where(pt1 == top1[:, None], sp[None, :], SPLITS_P2), axis=1)
    top2 = tl.maximum(tl.max(pt2, axis=1), tl.max(tl.where(sp[None, :] == first1[:, None], neg_inf, pt1), axis=1))
    argmax = tl.min(tl.where(pt1 == top1[:, None], parg, 2147483647), axis=1)
    kmax = tl.max(pkey, axis=1)
    win = tl.min(tl.where(pkey == kmax[:, None], sp[None, :], SPLITS_P2), axis=1)
    pick = sp[None, :] == win[:, None]
    sampled = tl.sum(tl.where(pick, ptok, 0), axis=1)
    s_tok = tl.max(tl.where(pick, ps, neg_inf), axis=1)
    z_safe = tl.where(z > 0, z, 1.0)
    prob = tl.where(masked, tl.exp(s_tok - big_m) / z_safe, 1.0).to(tl.float32)
    margin = tl.where(masked, (tl.exp(top1 - big_m) - tl.exp(top2 - big_m)) / z_safe, 1.0).to(tl.float32)
    entropy = tl.where(masked, tl.log(z_safe) - a / z_safe, 0.0).to(tl.float32)
    top1_prob = tl.where(masked, tl.exp(top1 - big_m) / z_safe, 1.0).to(tl.float32)
    argmax = tl.where(masked, argmax.to(tok.dtype), tok)
    sampled = tl.where(masked, sampled.to(tok.dtype), tok)

    # Selection scores: float32, -0.0 folded into +0.0 so that ranks match torch's comparisons.
    if HAS_SCORES:
        score = tl.load(scores_ptr + rows, mask=in_row, other=0.0).to(tl.float32)
    else:
        score = prob
    score = tl.where(score == 0.0, 0.0, score)
    n_elig = tl.sum(masked.to(tl.int32), axis=0)
    if RULE == 0:
        k = tl.load(count_ptr + b).to(tl.int32)
        k = tl.minimum(tl.maximum(k, 1), n_elig)
        # Order-preserving integer key in [0, 2^32), then radix select of the k-th largest.
        bits = score.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64) + 2147483648
        key = tl.where(masked, key, -1)
        kth = tl.zeros((), tl.int64)
        for i in range(32):
            cand = kth | (tl.full((), 1, tl.int64) << (31 - i))
            enough = tl.sum((key >= cand).to(tl.int32), axis=0) >= k
            kth = tl.where(enough, cand, kth)
        above = key > kth
        need = k - tl.sum(above.to(tl.int32), axis=0)
        tied = key == kth
        chosen = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=0) <= need))
    else:
        if STRICT:
            chosen = masked & (score > threshold)
        else:
            chosen = masked & (score >= threshold)
        best = tl.max(tl.where(masked, score, neg_inf), axis=0)
        first = tl.min(tl.where(masked & (score == best), pos, BLOCK_L), axis=0)
        none = tl.sum(chosen.to(tl.int32), axis=0) == 0
        chosen = chosen | (none & (pos == first))
    chosen = chosen & masked
    tl.store(out_tokens_ptr + rows, tl.where(chosen, sampled, tok), mask=in_row)
    tl.store(out_sampled_ptr + rows, sampled, mask=in_row)
    tl.store(out_prob_ptr + rows, prob, mask=in_row)
    tl.store(out_margin_ptr + rows, margin, mask=in_row)
    tl.store(out_entropy_ptr + rows, entropy, mask=in_row)
    tl.store(out_revealed_ptr + rows, chosen, mask=in_row)
    tl.store(out_num_ptr + b, tl.sum(chosen.to(tl.int64), axis=0))
    tl.store(out_top1_ptr + rows, top1_prob, mask=in_row)
    tl.store(out_argmax_ptr + rows, argmax, mask=in_row)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: small, so that tests exercise the vocabulary split


def num_splits(rows: int, vocab: int, device: torch.device, block: int) -> int:
    """How many programs share one row's vocabulary: enough to give ~4 programs per SM, at least 4 blocks each."""
    target = 4 * _multiprocessors(device)
    if rows >= target:
        return 1
    by_occupancy = triton.next_power_of_2(math.ceil(target / rows))
    by_length = max(1, vocab // (4 * block))
    return max(1, min(by_occupancy, triton.next_power_of_2(by_length) // 2 or 1, 64))


def triton_step(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int, temperature: float,
                seed: int | torch.Tensor, offset: int, noise: torch.Tensor | None, count: torch.Tensor | None,
                threshold: float | None, scores: torch.Tensor | None, strict: bool,
                splits: int | None = None, block: int | None = None,
                keys: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Launch the two kernels; inputs are validated by `fewstep.kernels.step`. The reference's seven outputs
    plus the top-1 probability and the argmax. `keys` [B] int64: seed-mode noise keyed per sequence
    (by (keys[b], offset, position, token)) instead of by (seed, offset, row, token)."""
    batch, length, vocab = logits.shape
    rows = batch * length
    device = logits.device
    fp64 = noise is not None and noise.dtype == torch.float64
    dt = torch.float64 if fp64 else torch.float32
    sample = temperature > 0
    if block is None:
        block = min(2048 if logits.element_size() == 2 else 1024, triton.next_power_of_2(vocab))
        if fp64:
            block = min(block, 512)
    if splits is None:
        splits = num_splits(rows, vocab, device, block)
    chunk = triton.cdiv(triton.cdiv(vocab, splits), block) * block
    tokens_c = tokens.contiguous()
    inv_t_val = 1.0 / temperature if sample else 1.0
    inv_t = torch.full((1,), inv_t_val, dtype=dt, device=device) if fp64 else None
    seed_from_ptr = isinstance(seed, torch.Tensor) or keys is not None
    if keys is not None:
        seed = keys.to(torch.int64).contiguous()
    part = torch.empty((rows, splits, _N_PART), dtype=dt, device=device)
    part_tok = torch.empty((rows, splits, 2), dtype=torch.int32, device=device)
    noise_mode = 0 if not sample else (1 if noise is not None else 2)
    noise_arg = noise if noise is not None else part
    stride_nrow = vocab if noise is not None else 0
    _row_kernel[(rows, splits)](
        logits, tokens_c, noise_arg, seed if seed_from_ptr else part_tok, 0 if seed_from_ptr else seed,
        inv_t if fp64 else part, inv_t_val, part, part_tok,
        length, vocab, mask_id, offset, logits.stride(0), logits.stride(1), stride_nrow, chunk,
        SAMPLE=sample, NOISE=noise_mode, SEED_FROM_PTR=seed_from_ptr, KEYED=keys is not None, FP64=fp64,
        SPLITS=splits, BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )
    out_tokens = torch.empty_like(tokens_c)
    out_sampled = torch.empty_like(tokens_c)
    out_prob = torch.empty((batch, length), dtype=torch.float32, device=device)
    out_margin = torch.empty_like(out_prob)
    out_entropy = torch.empty_like(out_prob)
    out_revealed = torch.empty((batch, length), dtype=torch.bool, device=device)
    out_num = torch.empty((batch,), dtype=torch.int64, device=device)
    out_top1 = torch.empty_like(out_prob)
    out_argmax = torch.empty_like(tokens_c)
    rule = _RULE_COUNT if count is not None else _RULE_THRESHOLD
    block_l = triton.next_power_of_2(length)
    _select_kernel[(batch,)](
        tokens_c, part, part_tok, count if count is not None else out_num,
        scores.contiguous() if scores is not None else out_prob,
        out_tokens, out_sampled, out_prob, out_margin, out_entropy, out_revealed, out_num, out_top1, out_argmax,
        length, mask_id, float(threshold) if threshold is not None else 0.0,
        RULE=rule, STRICT=strict, HAS_SCORES=scores is not None, FP64=fp64,
        SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits), BLOCK_L=block_l,
        num_warps=4 if block_l * splits <= 4096 else 8,
    )
    return (out_tokens, out_sampled, out_prob, out_margin, out_entropy, out_revealed, out_num, out_top1,
            out_argmax)


def triton_stats(logits: torch.Tensor, rows: torch.Tensor, mask_id: int, temperature: float,
                 keys: torch.Tensor, step: int) -> StepStats:
    """The sampler's statistics at `rows` [B, L] from the Triton kernels (statistics at T; T = 0: at 1).

    Rows not asked for are handed to the kernel as already revealed, so it reads nothing of them."""
    vocab = logits.shape[-1]
    tokens = torch.where(rows, mask_id, (mask_id + 1) % vocab).to(torch.int64)
    count = torch.zeros(rows.shape[0], dtype=torch.int64, device=logits.device)
    out = triton_step(logits, tokens, mask_id, temperature, 0, int(step), None, count, None, None, False,
                      keys=keys)
    _, sampled, prob, margin, entropy, _, _, top1, argmax = out
    empty = torch.full_like(tokens, mask_id)
    return StepStats(proposal=torch.where(rows, sampled, empty), argmax=torch.where(rows, argmax, empty),
                     confidence=top1, sampled_prob=prob, margin=margin, entropy=entropy)
