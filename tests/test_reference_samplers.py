"""The presets named after a method give that method's tokens and forward passes at temperature 0.

Each reference below is this project's own transcription of the public code's logic (read, not
copied), kept small so that it can be checked by eye against its source:

- LLaDA, `generate.py` (ML-GSAI/LLaDA): `generate` with `remasking="low_confidence"` and
  `get_num_transfer_tokens`. Blocks of `block_length` start where the prompt ends; the step budget is
  split evenly over the blocks; within a block a step reveals `base (+1 for the first remainder
  steps)` tokens, the masked positions of the block ranked by the softmax probability of the argmax.
- Fast-dLLM, `llada/generate.py` (NVlabs/Fast-dLLM): `generate` with a `threshold` and
  `get_transfer_index`: per step, the best-ranked masked token of the block and every other one whose
  probability reaches the threshold; a block runs until it has no mask left.
- Dream, `generation_utils.py` (Dream-org/Dream-v0-Base-7B, `_sample`, `sample_tokens`) with
  `alg="entropy"`, `alg_temp=0`: the whole generation at once; at step i of n, with t, s consecutive
  points of linspace(1, 1e-3, n + 1), the int(M * (1 - s / t)) masked tokens of lowest entropy are
  revealed (all remaining at the last step); a forward pass every step.

fewstep skips the forward pass of a step that reveals nothing (the tokens are the same), so its
forward count is the reference's less those empty steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewstep.samplers.presets import build_sampler

MASK = 49
VOCAB = 50


class TinyDenoiser(nn.Module):
    """Logits that depend on every input token and position (random weights), the mask at -inf."""

    time_conditioning = False

    def __init__(self, seed: int = 0, width: int = 16, length: int = 64, scale: float = 2.0) -> None:
        super().__init__()
        self.scale = scale
        torch.manual_seed(seed)
        self.mask_id, self.vocab_size = MASK, VOCAB
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.randn(length, width))
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(2 * width, VOCAB)

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(z) + self.position[: z.shape[1]]
        context = torch.tanh(self.mix(h)).mean(dim=1, keepdim=True).expand_as(h)
        logits = self.scale * self.out(torch.cat([h, context], dim=-1))
        logits[..., MASK] = -float("inf")
        return logits


def llada_reference(model, prompt, steps, gen_length, block_length):
    """LLaDA's generate at temperature 0 with low-confidence remasking; returns (tokens, forward passes)."""
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length), MASK, dtype=torch.long)
    x[:, :plen] = prompt
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    nfe = 0
    for b in range(num_blocks):
        lo, hi = plen + b * block_length, plen + (b + 1) * block_length
        masked_in_block = (x[:, lo:hi] == MASK).sum(dim=1)
        counts = [[int(m) // per_block + (i < int(m) % per_block) for i in range(per_block)] for m in masked_in_block]
        for i in range(per_block):
            logits = model(x)
            nfe += 1
            x0 = logits.argmax(dim=-1)
            p = torch.softmax(logits.double(), dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            p[:, hi:] = -float("inf")
            confidence = torch.where(x == MASK, p, torch.tensor(-float("inf"), dtype=p.dtype))
            for row in range(batch):
                chosen = torch.topk(confidence[row], k=counts[row][i]).indices
                x[row, chosen] = x0[row, chosen]
    return x, nfe


def fast_dllm_reference(model, prompt, gen_length, block_length, threshold):
    """Fast-dLLM's generate with a threshold at temperature 0; returns (tokens, forward passes)."""
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length), MASK, dtype=torch.long)
    x[:, :plen] = prompt
    nfe = 0
    for b in range(gen_length // block_length):
        lo, hi = plen + b * block_length, plen + (b + 1) * block_length
        while True:
            logits = model(x)
            nfe += 1
            masked = x == MASK
            masked[:, hi:] = False
            x0 = logits.argmax(dim=-1)
            p = torch.softmax(logits.double(), dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            confidence = torch.where(masked, p, torch.tensor(-float("inf"), dtype=p.dtype))
            for row in range(batch):
                k = int(masked[row].sum())
                if k == 0:
                    continue
                ranked = torch.topk(confidence[row], k=k).indices
                keep = [ranked[0]] + [j for j in ranked[1:] if confidence[row, j] >= threshold]
                for j in keep:
                    x[row, j] = x0[row, j]
            if not bool((x[:, lo:hi] == MASK).any()):
                break
    return x, nfe


def dream_reference(model, prompt, steps, gen_length, eps=1e-3):
    """Dream's _sample with alg="entropy", alg_temp=0, temperature 0; returns (tokens, passes, empty steps)."""
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length), MASK, dtype=torch.long)
    x[:, :plen] = prompt
    timesteps = torch.linspace(1, eps, steps + 1)
    nfe, empty = 0, 0
    for i in range(steps):
        masked = x == MASK
        logits = model(x)
        nfe += 1
        probs = torch.softmax(logits, dim=-1)
        x0 = probs.argmax(dim=-1)
        confidence = (probs * torch.log(probs + 1e-10)).sum(dim=-1)  # minus the entropy
        t, s = timesteps[i], timesteps[i + 1]
        mean_masked = masked.sum() / batch
        n = int(mean_masked * (1 - s / t)) if i < steps - 1 else int(mean_masked)
        if n == 0:
            empty += 1
            continue
        ranked = torch.where(masked, confidence, torch.tensor(-float("inf")))
        chosen = torch.topk(ranked, n, dim=-1).indices
        rows = torch.arange(batch).unsqueeze(1).expand_as(chosen)
        x[rows, chosen] = x0[rows, chosen]
    return x, nfe, empty


def _sample(preset, model, prompt, steps, seq_len, block=None, **kwargs):
    sampler = build_sampler(preset, steps=steps, block_size=block, temperature=0.0, **kwargs)
    return sampler.generate(model, prompt.shape[0], seq_len, steps, prompt=prompt, seed=0)


PROMPT = torch.tensor([[1, 4, 2, 30, 7], [3, 3, 0, 12, 40]])


@pytest.mark.parametrize("steps,block", [(8, 8), (12, 8), (20, 8), (64, 8), (6, 16), (10, 32)])
@pytest.mark.parametrize("prompted", [True, False])
def test_llada_preset_is_llada(steps, block, prompted):
    model = TinyDenoiser(seed=steps + block)
    prompt = PROMPT if prompted else PROMPT[:, :0]
    gen = 32
    expected, nfe = llada_reference(model, prompt, steps, gen, block)
    out = _sample("llada", model, prompt, steps, prompt.shape[1] + gen, block)
    assert torch.equal(out.tokens, expected)
    num_blocks, per_block = gen // block, steps // (gen // block)
    empty = num_blocks * max(0, per_block - block)  # steps whose count is zero (more steps than tokens)
    assert out.nfe == nfe - empty


@pytest.mark.parametrize("threshold,block", [(0.9, 8), (0.5, 8), (0.7, 16), (0.99, 4)])
@pytest.mark.parametrize("prompted", [True, False])
def test_fast_dllm_preset_is_fast_dllm(threshold, block, prompted):
    model = TinyDenoiser(seed=int(threshold * 100) + block, scale=8.0)  # confident enough to pass thresholds
    prompt = PROMPT if prompted else PROMPT[:, :0]
    gen = 32
    expected, nfe = fast_dllm_reference(model, prompt, gen, block, threshold)
    # with a budget of one step per token the cap never binds: the reference's tokens and passes exactly
    out = _sample("fast-dllm", model, prompt, gen, prompt.shape[1] + gen, block, threshold=threshold)
    assert torch.equal(out.tokens, expected)
    assert out.nfe == nfe
    assert threshold > 0.9 or nfe < gen  # below 0.99 several tokens pass the threshold in some steps
    # a tighter budget is a cap: never more passes than it allows, every token still revealed
    capped = _sample("fast-dllm", model, prompt, 2 * (gen // block), prompt.shape[1] + gen, block,
                     threshold=threshold)
    assert capped.nfe <= 2 * (gen // block) and not bool((capped.tokens == MASK).any())


@pytest.mark.parametrize("steps", [3, 8, 13, 32, 80])
@pytest.mark.parametrize("prompted", [True, False])
def test_dream_preset_is_dream(steps, prompted):
    model = TinyDenoiser(seed=steps)
    prompt = PROMPT if prompted else PROMPT[:, :0]
    gen = 32
    expected, nfe, empty = dream_reference(model, prompt, steps, gen)
    out = _sample("dream", model, prompt, steps, prompt.shape[1] + gen)
    assert torch.equal(out.tokens, expected)
    assert out.nfe == nfe - empty


def test_confidence_follows_the_reference_at_temperature_one():
    """LLaDA ranks by the sampled token's probability under softmax(logits); Dream's statistics are at
    the sampling temperature; `top1` is the other definition, selectable."""
    llada = build_sampler("llada", steps=4, temperature=0.7)
    assert llada.stats_at == "one" and llada.policy.by == "confidence"
    dream = build_sampler("dream", steps=4, temperature=0.7)
    assert dream.stats_at == "sample"
    other = build_sampler("llada", steps=4, confidence="top1")
    assert other.policy.by == "top1" and other.policy.to_config() == {"name": "confidence", "confidence": "top1"}


def test_schedule_counts_are_the_references_counts():
    """LLaDA's get_num_transfer_tokens and Dream's int(M * (1 - s / t)), step by step."""
    from fewstep.samplers.schedules import DreamSchedule, EvenSchedule

    for masked, steps in [(8, 3), (32, 5), (7, 16), (128, 128)]:
        even, dream = EvenSchedule(), DreamSchedule()
        initial = torch.tensor([masked])
        remaining, got = masked, []
        for i in range(steps):
            eligible = torch.arange(masked).unsqueeze(0) < remaining
            got.append(int(even.counts(i, steps, initial, eligible, torch.zeros(1, masked))))
            remaining -= got[-1]
        assert got == [masked // steps + (i < masked % steps) for i in range(steps)]
        t = torch.linspace(1, 1e-3, steps + 1)
        remaining, got, expected = masked, [], []
        for i in range(steps):
            eligible = torch.arange(masked).unsqueeze(0) < remaining
            got.append(int(dream.counts(i, steps, initial, eligible, torch.zeros(1, masked))))
            expected.append(int(torch.tensor(float(remaining)) * (1 - t[i + 1] / t[i])) if i < steps - 1 else remaining)
            remaining -= got[-1]
        assert got == expected
