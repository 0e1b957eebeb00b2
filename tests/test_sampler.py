"""The reference ancestral sampler, with the exact oracle as its denoiser."""

from __future__ import annotations

import pytest
import torch

from fewstep.distill.config import MarkovConfig
from fewstep.distill.markov import MarkovChain, MarkovOracle
from fewstep.samplers.ancestral import ancestral_sample, gumbel_argmax


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain.from_config(MarkovConfig(num_states=12, branching=3, seed=4))


def test_many_steps_match_the_data_few_steps_do_not(chain):
    oracle = MarkovOracle(chain)
    data = chain.sample(192, 32, seed=9)
    data_nll = chain.nll(data).mean().item() / 32
    many = ancestral_sample(oracle, 192, 32, steps=1024, mask_id=12, seed=0)
    few = ancestral_sample(oracle, 192, 32, steps=4, mask_id=12, seed=0)
    many_nll = chain.nll(many.tokens).mean().item() / 32
    few_nll = chain.nll(few.tokens).mean().item() / 32
    # sampling standard error of the mean per-token NLL here is about 0.01 nats
    assert abs(many_nll - data_nll) < 0.05 * data_nll
    assert chain.invalid_rate(many.tokens) < 0.005
    assert chain.invalid_rate(few.tokens) > 0.05
    assert few_nll > 1.3 * data_nll


def test_output_is_complete_seeded_and_counts_nfe(chain):
    oracle = MarkovOracle(chain)
    a = ancestral_sample(oracle, 5, 9, steps=7, mask_id=12, seed=3)
    b = ancestral_sample(oracle, 5, 9, steps=7, mask_id=12, seed=3)
    c = ancestral_sample(oracle, 5, 9, steps=7, mask_id=12, seed=4)
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

    out = ancestral_sample(Counting(chain), 1, 6, steps=200, mask_id=12, seed=0)
    assert out.nfe == len(calls) <= 6
    assert out.tokens_per_forward >= 1.0


def test_batches_and_batch_size(chain):
    out = ancestral_sample(MarkovOracle(chain), 10, 8, steps=4, mask_id=12, seed=0, batch_size=4)
    assert out.tokens.shape == (10, 8) and out.num_batches == 3


def test_steps_below_one_is_refused(chain):
    with pytest.raises(ValueError, match="steps must be at least 1"):
        ancestral_sample(MarkovOracle(chain), 1, 4, steps=0, mask_id=12)


def test_float64_gumbel_frequencies_match_softmax():
    logits = torch.tensor([2.0, 0.5, -1.0, -float("inf"), 0.0])
    generator = torch.Generator().manual_seed(0)
    draws = gumbel_argmax(logits.expand(200_000, -1), generator, temperature=0.7)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    expected = torch.softmax(logits.double() / 0.7, -1)
    assert freq[3] == 0  # zero probability: never drawn
    assert torch.allclose(freq, expected, atol=0.005)
    assert torch.equal(gumbel_argmax(logits, generator, temperature=0.0), torch.tensor(0))
