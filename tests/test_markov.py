"""The markov task's exact scorers and its oracle, checked against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain.from_config(MarkovConfig(num_states=6, branching=3, seed=3))


def test_chain_is_sparse_stochastic_and_stationary(chain):
    T = chain.transition
    assert torch.allclose(T.sum(1), torch.ones(6, dtype=torch.float64))
    assert ((T > 0).sum(1) == 3).all()
    assert torch.allclose(chain.initial @ T, chain.initial, atol=1e-12)
    assert chain.initial.min() > 0  # irreducible: every state is visited


def test_same_seed_same_chain_other_seed_other_chain():
    a = MarkovChain.from_config(MarkovConfig(num_states=8, seed=1))
    b = MarkovChain.from_config(MarkovConfig(num_states=8, seed=1))
    c = MarkovChain.from_config(MarkovConfig(num_states=8, seed=2))
    assert torch.equal(a.transition, b.transition)
    assert not torch.equal(a.transition, c.transition)


def test_nll_and_invalid_rate_by_hand(chain):
    x = chain.sample(3, 7, seed=0)
    expected = []
    for row in x.tolist():
        logp = math.log(chain.initial[row[0]])
        logp += sum(math.log(chain.transition[a, b]) for a, b in zip(row, row[1:]))
        expected.append(-logp)
    assert torch.allclose(chain.nll(x, smoothing=0.0), torch.tensor(expected, dtype=torch.float64))
    assert chain.invalid_rate(x) == 0.0
    zero = (chain.transition[0] == 0).nonzero()[0, 0].item()
    bad = torch.tensor([[0, zero, zero]])
    assert chain.invalid_rate(bad[:, :2]) == 1.0
    assert math.isfinite(chain.nll(bad)[0].item())  # smoothed: finite but large
    assert chain.nll(bad)[0] > chain.nll(torch.tensor([[0, 1, 2]]))[0]


def test_entropy_rate_matches_long_samples(chain):
    x = chain.sample(400, 200, seed=5)
    empirical = chain.nll(x, smoothing=0.0).mean().item() / 200
    assert abs(empirical - chain.expected_nll(200) / 200) < 0.02
    assert chain.expected_nll(1) > 0 and chain.entropy_rate() > 0


def test_scoring_a_mask_token_is_refused(chain):
    with pytest.raises(ValueError, match="mask"):
        chain.nll(torch.tensor([[0, 6]]))


def test_posterior_equals_brute_force_enumeration(chain):
    """Forward-backward against summing the joint over every completion of the masked positions."""
    mask = chain.num_states
    x = chain.sample(1, 6, seed=11)[0]
    z = x.clone()
    z[[1, 2, 4]] = mask
    masked = [1, 2, 4]
    weights = torch.zeros(len(masked), chain.num_states, dtype=torch.float64)
    for fill in itertools.product(range(chain.num_states), repeat=len(masked)):
        seq = z.clone()
        seq[masked] = torch.tensor(fill)
        p = math.exp(-chain.nll(seq.unsqueeze(0), smoothing=0.0).item())
        for j, value in enumerate(fill):
            weights[j, value] += p
    exact = weights / weights.sum(1, keepdim=True)
    posterior = chain.posterior(z.unsqueeze(0), mask)[0]
    assert torch.allclose(posterior[masked], exact, atol=1e-9)
    revealed = [0, 3, 5]
    assert torch.equal(posterior[revealed].argmax(1), x[revealed])
    assert torch.allclose(posterior[revealed].max(1).values, torch.ones(3, dtype=torch.float64))


def test_oracle_follows_the_denoiser_contract(chain):
    oracle = MarkovOracle(chain)
    z = torch.full((2, 5), chain.num_states)
    z[0, 2] = 1
    logits = oracle(z)
    assert logits.shape == (2, 5, chain.num_states + 1)
    assert torch.isinf(logits[..., chain.num_states]).all()
    probs = logits.softmax(-1)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    assert probs[0, 2, 1] == 1.0  # revealed token copied through
    # an all-masked sequence: each position's marginal is the stationary distribution
    assert torch.allclose(probs[1, :, : chain.num_states], chain.initial.expand(5, -1), atol=1e-9)
