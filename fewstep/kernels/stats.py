"""The denoising step's statistics in torch: the CPU path, bounded in memory, a few passes over the logits.

For each position asked for, one draw from softmax(logits / T) and the statistics the policies rank
by. The draw is inverse-CDF sampling with one float64 uniform per position (`fewstep.kernels.streams`):
the cumulative sums are taken in float64 over blocks of the vocabulary, then within the chosen block,
so every token's chance is its probability to float64 accuracy (float32 Gumbel noise would truncate
the tail and lower the effective temperature; Zheng et al. 2024) with no [B, L, V] noise tensor.
Rows are processed in chunks through two reused float32 buffers, so beyond the logits the memory is
O(chunk x vocabulary + batch x length); the logits stay in the model's dtype and are never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["StepStats", "block_size", "draw_tokens", "empty_stats", "torch_token_stats"]

_CHUNK_ELEMENTS = 1 << 22  # rows x vocabulary per chunk (16 MB per float32 buffer)


@dataclass
class StepStats:
    """Per-position statistics of one step's predictive distribution, [batch, length] each.

    Positions that were not asked for hold the mask id as tokens, probabilities 1 and entropy 0.
    """

    proposal: torch.Tensor  # the sampled token (T = 0: the argmax)
    argmax: torch.Tensor  # the most likely token
    confidence: torch.Tensor  # probability of the most likely token
    sampled_prob: torch.Tensor  # probability of the sampled token
    margin: torch.Tensor  # top-1 minus top-2 probability
    entropy: torch.Tensor  # nats (0 where not computed)


def empty_stats(batch: int, length: int, mask_id: int, device: torch.device) -> StepStats:
    """Statistics of positions that were not computed (revealed, or outside the block)."""
    tokens = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    ones = torch.ones(batch, length, dtype=torch.float32, device=device)
    return StepStats(tokens, tokens.clone(), ones, ones.clone(), ones.clone(), torch.zeros_like(ones))


def block_size(vocab: int) -> int:
    """The vocabulary block of the two-level search and of the block maxima. The draw's float64 cumulative
    sum runs over one block per row, so a short block keeps it small beside the row's float32 passes (at a
    2,048-token vocabulary 1,024-token blocks made it a third of the step); 128 is still long enough for
    the per-block reductions to vectorise."""
    return min(vocab, 128)


def _block_view(x: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-block max or sum of rows x [n, V], [n, ceil(V / block)] (the last block may be shorter)."""
    n, vocab = x.shape
    size = block_size(vocab)
    full = vocab // size * size
    parts = []
    if full:
        view = x[:, :full].view(n, full // size, size)
        parts.append(view.amax(-1) if reduce == "max" else view.sum(-1))
    if full < vocab:
        tail = x[:, full:]
        parts.append((tail.amax(-1) if reduce == "max" else tail.sum(-1)).unsqueeze(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _block_values(x: torch.Tensor, block: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The values of block `block[i]` of each row i, [n, block size] (past the end: `fill`), and the
    token id of each block's first value, [n]: the token at column j is `first + j`."""
    n, vocab = x.shape
    size = block_size(vocab)
    first = block * size
    if vocab % size == 0:  # whole blocks: one row-gather of contiguous slices
        return x.view(n, vocab // size, size)[torch.arange(n, device=x.device), block], first
    index = first.unsqueeze(1) + torch.arange(size, device=x.device)
    inside = index < vocab
    index = index.clamp_max(vocab - 1)
    return torch.where(inside, x.gather(1, index), torch.full_like(index, fill, dtype=x.dtype)), first


def _unstick(index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`index` [n, 1] into rows of `weights` [n, k], moved to each row's last positive weight where it
    points at a zero one. A guard: were a draw's share of its block to round up to the block's total, the
    search would land past its last token with weight (a zero-probability token, the mask perhaps)."""
    stuck = (weights.gather(1, index) <= 0).squeeze(1).nonzero().squeeze(1)
    if len(stuck):
        positive = (weights[stuck] > 0).to(torch.int64)
        index[stuck] = (positive * torch.arange(1, positive.shape[1] + 1, device=index.device)).argmax(1, keepdim=True)
    return index


def _subs_softmax(x: torch.Tensor, inv_t: float, mask_id: int | None, scratch: torch.Tensor,
                  out: torch.Tensor) -> torch.Tensor:
    """softmax(x / T) over each row of x [n, V] into `out` (float32), the mask token's entry then set to
    0: SUBS's distribution up to its normaliser (the row's sum), which the caller divides by. Torch's fused
    kernel makes one vectorised pass for the maximum and one for exp and its sum per row, where separate
    subtract, exp and sum ops would each stream the rows through memory. Rows where the mask token holds
    most of the mass, whose other weights could underflow, are recomputed without it. `scratch` takes
    x / T (or x cast to float32)."""
    source = x
    if inv_t != 1.0:
        source = torch.mul(x, inv_t, out=scratch)
    elif x.dtype != torch.float32:
        source = scratch.copy_(x)
    torch.ops.aten._softmax.out(source, -1, False, out=out)
    if mask_id is not None:
        heavy = (out[:, mask_id] > 0.5).nonzero().squeeze(1)
        if len(heavy):
            rows = x[heavy].to(torch.float32) * inv_t
            rows[:, mask_id] = -math.inf
            out[heavy] = torch.softmax(rows, dim=-1)
        out[:, mask_id] = 0.0
    return out


def _chunk_stats(x: torch.Tensor, u: torch.Tensor | None, mask_id: int | None, temperature: float,
                 stats_temperature: float, need_entropy: bool, shifted: torch.Tensor,
                 expd: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Statistics of the rows of x [n, V] (read only; `shifted` and `expd` are [n, V] float32 buffers).

    `expd` holds SUBS's softmax(x / T_s) up to its normaliser z, the block sums' total, by which every
    statistic divides (`_subs_softmax`)."""
    n, vocab = x.shape
    if x.dtype == torch.float64:  # e.g. an exact oracle's log-probabilities
        x = x.float()
    size = block_size(vocab)
    block_max = _block_view(x, "max")
    if mask_id is not None:  # SUBS: the mask token is never predicted; drop it from its block's maximum
        lo, hi = mask_id // size * size, min(mask_id // size * size + size, vocab)
        parts = [x[:, a:b].amax(dim=1) for a, b in ((lo, mask_id), (mask_id + 1, hi)) if b > a]
        block_max[:, mask_id // size] = torch.maximum(*parts) if len(parts) == 2 else (
            parts[0] if parts else torch.full_like(block_max[:, 0], -math.inf))
    top_block = block_max.argmax(dim=1)
    m = block_max.gather(1, top_block.unsqueeze(1)).to(torch.float32)  # [n, 1]

    values, first = _block_values(x, top_block, -math.inf)
    values = values.to(torch.float32) - m  # x - m <= 0 over the top block
    if mask_id is not None:
        values[top_block == mask_id // size, mask_id % size] = -math.inf
    best = values.argmax(dim=1, keepdim=True)
    argmax = first + best.squeeze(1)
    second_in_block = values.scatter(1, best, -math.inf).amax(dim=1)
    second_elsewhere = (block_max.scatter(1, top_block.unsqueeze(1), -math.inf).amax(dim=1, keepdim=True) - m)
    top2 = torch.maximum(second_in_block, second_elsewhere.squeeze(1))  # minus m
    inv_s = 1.0 / stats_temperature

    _subs_softmax(x, inv_s, mask_id, shifted, expd)
    peak = expd.gather(1, argmax.unsqueeze(1)).squeeze(1).to(torch.float64)  # the top token's weight
    stats_blocks = _block_view(expd, "sum").to(torch.float64)
    z_stats = stats_blocks.sum(dim=1)
    if temperature == 0:
        proposal = argmax
    else:
        if temperature == stats_temperature:
            draw = expd
        else:  # LLaDA's convention: the statistics at T = 1, the draw at T (its weights need no normaliser)
            draw = _subs_softmax(x, 1.0 / temperature, mask_id, shifted, torch.empty_like(expd))
        # a block by its (float32-summed) weight, then a token within it in float64: a token's chance
        # within its block is exact however small, whatever the block sums' rounding
        block_weights = stats_blocks if draw is expd else _block_view(draw, "sum").to(torch.float64)
        cumulative = block_weights.cumsum(dim=1)
        target = (u * cumulative[:, -1]).unsqueeze(1)
        # the target is below the row's total, so the first block whose cumulative sum passes it has weight
        block = torch.searchsorted(cumulative, target, right=True).clamp_max(cumulative.shape[1] - 1)
        before = torch.where(block > 0, cumulative.gather(1, (block - 1).clamp_min(0)), 0.0)
        share = ((target - before) / block_weights.gather(1, block).clamp_min(1e-300)).clamp(0.0, 1.0)
        weights, first = _block_values(draw, block.squeeze(1), 0.0)
        within = weights.to(torch.float64).cumsum(dim=1)
        pick = _unstick(torch.searchsorted(within, share * within[:, -1:], right=True).clamp_max(within.shape[1] - 1),
                        weights)
        proposal = first + pick.squeeze(1)
    sampled_weight = expd.gather(1, proposal.unsqueeze(1)).squeeze(1).to(torch.float64)
    confidence = peak / z_stats
    sampled_prob = sampled_weight / z_stats
    margin = peak * (1.0 - torch.exp(top2.to(torch.float64) * inv_s)) / z_stats
    if need_entropy:  # H = log(z / peak) - E[(x - m) / T_s]: the same in exp(x - m) units
        torch.sub(x, m, out=shifted)
        if inv_s != 1.0:
            shifted.mul_(inv_s)
        expected = torch.nansum(shifted.mul_(expd), dim=1).to(torch.float64) / z_stats
        entropy = torch.log(z_stats / peak) - expected
    else:
        entropy = torch.zeros(n, dtype=torch.float64, device=x.device)
    return proposal, argmax, confidence, sampled_prob, margin, entropy


def torch_token_stats(logits: torch.Tensor, rows: torch.Tensor, uniform: torch.Tensor | None, mask_id: int | None,
                      temperature: float, stats_temperature: float | None = None,
                      need_entropy: bool = True, chunk_elements: int = _CHUNK_ELEMENTS) -> StepStats:
    """Statistics at the positions `rows` [B, L] (bool) of logits [B, L, V]; `uniform` [B, L] float64
    gives each position's draw (needed when T > 0). The statistics describe softmax(logits / T_s),
    T_s = `stats_temperature` (default: T, or 1 when T = 0). `mask_id` None: no token is excluded."""
    batch, length, vocab = logits.shape
    device = logits.device
    if stats_temperature is None:
        stats_temperature = temperature if temperature > 0 else 1.0
    out = empty_stats(batch, length, -1 if mask_id is None else mask_id, device)
    if temperature > 0 and uniform is None:
        raise ValueError("sampling at temperature > 0 needs a uniform per position")
    flat = logits.flatten(0, 1)  # a view, also of a padded vocabulary's slice: rows may be strided
    flat_u = uniform.reshape(-1) if uniform is not None else None
    # chunks bounded by 16 MB and by an eighth of the logits, but never under 1M elements: small steps
    # (a short vocabulary) run in one chunk, as per-chunk overhead would dominate them
    chunk = max(1, min(chunk_elements, max(vocab, logits.numel() // 8, 1 << 20)) // vocab)
    chunk = min(chunk, batch * length)
    shifted = torch.empty(chunk, vocab, dtype=torch.float32, device=device)
    expd = torch.empty_like(shifted)
    gathered = torch.empty(chunk, vocab, dtype=logits.dtype, device=device)
    wanted = rows.reshape(-1)
    targets = (out.proposal, out.argmax, out.confidence, out.sampled_prob, out.margin, out.entropy)
    flat_targets = [t.view(-1) for t in targets]
    for first in range(0, batch * length, chunk):
        here = wanted[first : first + chunk].nonzero().squeeze(1)
        n = len(here)
        if not n:
            continue
        span = min(chunk, batch * length - first)
        dest = here + first
        if 4 * n >= 3 * span:  # dense: the whole span costs less than gathering its rows first
            k, rows_x = span, flat[first : first + span]
            u = flat_u[first : first + span] if flat_u is not None else None
        else:
            k, rows_x = n, torch.index_select(flat, 0, dest, out=gathered[:n])
            u = flat_u[dest] if flat_u is not None else None
        parts = _chunk_stats(rows_x, u, mask_id, temperature, stats_temperature, need_entropy,
                             shifted[:k], expd[:k])
        if k > n:  # dense: keep the rows asked for (one index for all, not a boolean mask per statistic)
            parts = [part.index_select(0, here) for part in parts]
        for target, part in zip(flat_targets, parts):
            target.index_copy_(0, dest, part.to(target.dtype))
    return out


def draw_tokens(logits: torch.Tensor, uniform: torch.Tensor, temperature: float = 1.0,
                mask_id: int | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens drawn from softmax(logits / T) [..., V] with one float64 uniform per position [...]
    (inverse CDF, the same draw as the sampler's step; T = 0: the argmax), the mask id never drawn.
    Where `rows` is False the result is the mask id (or -1 without one)."""
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, 1, logits.shape[-1])
    wanted = torch.ones(flat.shape[:2], dtype=torch.bool, device=logits.device) if rows is None else rows.reshape(-1, 1)
    stats = torch_token_stats(flat, wanted, uniform.reshape(-1, 1), mask_id, temperature, need_entropy=False)
    return stats.proposal.reshape(shape)
