"""MDLM's ancestral sampler (the `ancestral` preset of `Sampler`) with the exact oracle as its denoiser,
checked against MDLM's own formulation (tests/reference_samplers.py), and the step's token draw."""

from __future__ import annotations

import math

import pytest
import torch
from reference_samplers import ancestral_sample, gumbel_argmax

from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle
from fewstep.errors import RunError
from fewstep.kernels.stats import draw_tokens
from fewstep.samplers.presets import sample_with_spec


def ancestral(model, num, seq_len, steps, seed=0, batch_size=None):
    return sample_with_spec("ancestral", model, num, seq_len, steps, seed=seed, batch_size=batch_size)


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain.from_config(MarkovConfig(num_states=12, branching=3, seed=4))


def test_many_steps_match_the_data_few_steps_do_not(chain):
    oracle = MarkovOracle(chain)
    data = chain.sample(192, 32, seed=9)
    data_nll = chain.nll(data).mean().item() / 32
    many = ancestral(oracle, 192, 32, steps=1024)
    few = ancestral(oracle, 192, 32, steps=4)
    many_nll = chain.nll(many.tokens).mean().item() / 32
    few_nll = chain.nll(few.tokens).mean().item() / 32
    # sampling standard error of the mean per-token NLL here is about 0.01 nats
    assert abs(many_nll - data_nll) < 0.05 * data_nll
    assert chain.invalid_rate(many.tokens) < 0.005
    assert chain.invalid_rate(few.tokens) > 0.05
    assert few_nll > 1.3 * data_nll
    # MDLM's own formulation (a per-token reveal draw, float64 Gumbel) gives the same distribution
    reference = ancestral_sample(oracle, 192, 32, steps=4, mask_id=12, seed=1)
    reference_nll = chain.nll(reference.tokens).mean().item() / 32
    assert abs(reference_nll - few_nll) < 0.06 * few_nll

def test_output_is_complete_seeded_and_counts_nfe(chain):
    oracle = MarkovOracle(chain)
    a = ancestral(oracle, 5, 9, steps=7, seed=3)
    b = ancestral(oracle, 5, 9, steps=7, seed=3)
    c = ancestral(oracle, 5, 9, steps=7, seed=4)
    assert a.tokens.shape == (5, 9)
    assert (a.tokens != 12).all()
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert 1 <= a.nfe <= 7


def test_unchanged_input_reuses_the_last_output(chain):
    """With many more steps than tokens, most steps reveal nothing and cost no forward pass."""
    calls = []

    class Counting(MarkovOracle):
        def forward(self, z, t=None):
            calls.append(1)
            return super().forward(z, t)

    out = ancestral(Counting(chain), 1, 6, steps=200)
    assert out.nfe == len(calls) <= 6
    assert out.tokens_per_forward >= 1.0


def test_batches_and_batch_size(chain):
    out = ancestral(MarkovOracle(chain), 10, 8, steps=4, batch_size=4)
    assert out.tokens.shape == (10, 8) and out.num_batches == 3
    # a sequence's tokens do not depend on its batch
    assert torch.equal(out.tokens, ancestral(MarkovOracle(chain), 10, 8, steps=4, batch_size=3).tokens)


def test_steps_below_one_is_refused(chain):
    with pytest.raises(RunError, match="steps must be at least 1"):
        ancestral(MarkovOracle(chain), 1, 4, steps=0)


def test_the_step_draw_matches_softmax_and_its_tail():
    """The sampler's draw (inverse CDF, one float64 uniform per position): frequencies are the softmax,
    a zero-probability token is never drawn, the mask is excluded, and the tail is float64-accurate:
    a token of probability 1e-9 is drawn where float32 Gumbel noise (max 16.6) could never reach it."""
    logits = torch.tensor([2.0, 0.5, -1.0, -float("inf"), 0.0])
    u = torch.rand(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    draws = draw_tokens(logits.expand(200_000, -1), u, temperature=0.7)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    expected = torch.softmax(logits.double() / 0.7, -1)
    assert freq[3] == 0
    assert torch.allclose(freq, expected, atol=0.005)
    assert torch.equal(draw_tokens(logits, torch.tensor(0.5, dtype=torch.float64), temperature=0.0), torch.tensor(0))
    masked = draw_tokens(logits.expand(1000, -1), u[:1000], temperature=1.0, mask_id=0)
    assert (masked != 0).all()
    tail = torch.tensor([0.0, -math.log(1e9) - 20.0 + 20.0])  # p(token 1) ~ 1e-9
    u_tail = torch.tensor([1 - 5e-10, 0.5], dtype=torch.float64)
    assert draw_tokens(tail.expand(2, -1), u_tail).tolist() == [1, 0]
    # a random vocabulary of 5,000 (several blocks of the two-level search): frequencies by chi-square
    wide = torch.randn(5000, generator=torch.Generator().manual_seed(1)) * 2
    probs = torch.softmax(wide.double(), -1)
    draws = draw_tokens(wide.expand(100_000, -1), u[:100_000])
    top = probs.topk(20).indices
    freq = torch.bincount(draws, minlength=5000).double()[top] / 100_000
    assert torch.allclose(freq, probs[top], atol=4 * (probs[top] / 100_000).sqrt().max().item() + 1e-4)


def test_the_draw_never_lands_past_the_last_token_with_weight():
    """A uniform next to 1 rounds the draw's target up to the row's total, where the cumulative sums no
    longer rise: over trailing zero-probability tokens and a whole zero-probability block (300 tokens,
    blocks of 128, tokens 200-299 at -inf) the draw must be the last token with weight, not one past."""
    logits = torch.zeros(300)
    logits[200:] = -float("inf")
    top = torch.tensor([1 - 2.0**-53, 1 - 2.0**-52, 1 - 1e-12, 0.0], dtype=torch.float64)
    draws = draw_tokens(logits.expand(4, -1), top)
    assert draws.tolist()[:3] == [199, 199, 199] and draws[3] == 0
    u = torch.rand(30_000, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(draw_tokens(logits.expand(30_000, -1), u), minlength=300).double()
    assert freq[200:].sum() == 0 and freq[:200].min() > 0


def test_float64_gumbel_frequencies_match_softmax():
    logits = torch.tensor([2.0, 0.5, -1.0, -float("inf"), 0.0])
    generator = torch.Generator().manual_seed(0)
    draws = gumbel_argmax(logits.expand(200_000, -1), generator, temperature=0.7)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    expected = torch.softmax(logits.double() / 0.7, -1)
    assert freq[3] == 0  # zero probability: never drawn
    assert torch.allclose(freq, expected, atol=0.005)
    assert torch.equal(gumbel_argmax(logits, generator, temperature=0.0), torch.tensor(0))
