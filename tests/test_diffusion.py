"""Noise schedules, the forward process, and the NELBO (tight for exact conditionals)."""

from __future__ import annotations

import math

import pytest
import torch

from fewstep.core.diffusion import (
    draw_masks,
    forward_process,
    make_schedule,
    masked_cross_entropy,
    nelbo_per_position,
    sample_t,
    subs_log_probs,
)
from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle

SCHEDULES = ["loglinear", "linear", "cosine"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_ends_derivative_and_weight(name):
    schedule = make_schedule(name, eps=1e-3)
    ends = schedule.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(ends, torch.tensor([1.0, 1e-3], dtype=torch.float64), atol=1e-12)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    numeric = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
    assert torch.allclose(schedule.dalpha(t), numeric, rtol=1e-5)
    assert (schedule.weight(t) > 0).all()
    p = schedule.reveal_probability(t[1:], t[:-1])
    assert ((p > 0) & (p <= 1)).all()


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="loglinear, linear, cosine"):
        make_schedule("sqrt")


def test_antithetic_times_are_evenly_spaced():
    t = sample_t(8, antithetic=True, t_min=0.0, generator=torch.Generator().manual_seed(0))
    gaps = torch.sort(t).values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6)
    assert ((t >= 0) & (t <= 1)).all()


def test_forward_process_masks_one_minus_alpha():
    schedule = make_schedule("loglinear")
    x0 = torch.zeros(4000, 50, dtype=torch.long)
    t = torch.full((4000,), 0.3)
    z = forward_process(x0, t, schedule, mask_id=9, generator=torch.Generator().manual_seed(0))
    assert set(z.unique().tolist()) == {0, 9}
    assert abs((z == 9).double().mean().item() - (1 - schedule.alpha(torch.tensor(0.3)).item())) < 0.005


def test_subs_copies_revealed_tokens_and_never_predicts_mask():
    logits = torch.randn(2, 4, 6)
    z = torch.tensor([[5, 1, 5, 2], [5, 5, 5, 5]])
    logp = subs_log_probs(logits, z, mask_id=5)
    assert torch.isinf(logp[..., 5]).all()
    assert logp[0, 1, 1] == 0 and logp[0, 3, 2] == 0
    assert torch.allclose(logp[1].exp().sum(-1), torch.ones(4))


@pytest.mark.parametrize("name", SCHEDULES)
def test_nelbo_with_oracle_equals_exact_nll(name):
    """For exact conditionals the masked-diffusion bound is tight: E[NELBO(x)] = -log p(x)."""
    chain = MarkovChain.from_config(MarkovConfig(num_states=10, branching=3, seed=7))
    oracle = MarkovOracle(chain)
    schedule = make_schedule(name)
    x = chain.sample(256, 24, seed=1)
    generator = torch.Generator().manual_seed(2)
    estimates = []
    for _ in range(16):
        t = sample_t(x.shape[0], antithetic=True, t_min=1e-4, generator=generator)
        z = forward_process(x, t, schedule, chain.num_states, generator=generator)
        estimates.append(nelbo_per_position(oracle(z), x, z, t, schedule, chain.num_states).sum(1))
    per_sequence = torch.stack(estimates).mean(0)  # [256] NELBO of each sequence
    exact = chain.nll(x, smoothing=0.0)
    diff = per_sequence - exact
    stderr = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * stderr + 1e-3 * exact.mean(), (diff.mean(), stderr)
    # and the estimate is not trivially close: a wrong model gives a clearly larger bound
    uniform = torch.zeros(x.shape[0], 24, chain.num_states + 1, dtype=torch.float64)
    t = sample_t(x.shape[0], generator=generator)
    z = forward_process(x, t, schedule, chain.num_states, generator=generator)
    worse = nelbo_per_position(uniform, x, z, t, schedule, chain.num_states).sum(1).mean()
    assert worse > exact.mean() * 1.3


def _oracle_estimates(masking: str, draws: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """[draws, 256] per-sequence NELBO estimates of the markov oracle, and the exact NLL [256]."""
    chain = MarkovChain.from_config(MarkovConfig(num_states=10, branching=3, seed=7))
    oracle, schedule = MarkovOracle(chain), make_schedule("loglinear", eps=1e-4)
    x = chain.sample(256, 24, seed=1)
    generator = torch.Generator().manual_seed(2)
    estimates = []
    for _ in range(draws):
        z, t, weight = draw_masks(x, schedule, chain.num_states, masking, generator=generator)
        estimates.append(weight.unsqueeze(-1) * masked_cross_entropy(oracle(z), x, z, chain.num_states))
    return torch.stack(estimates).sum(-1), chain.nll(x, smoothing=0.0)


def test_exact_count_masking_is_the_same_tight_bound_with_less_variance():
    """n ~ Uniform{1..L} masked exactly with weight L/n estimates the same NELBO as MDLM's 1/t: for exact
    conditionals both average to -log p(x); the count's estimate of each sequence varies less."""
    counted, exact = _oracle_estimates("exact_count")
    diff = counted.mean(0) - exact
    stderr = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * stderr + 1e-3 * exact.mean(), (diff.mean(), stderr)
    independent, _ = _oracle_estimates("independent")
    assert abs(independent.mean(0) - exact).mean() < 0.2 * exact.mean()
    # the spread over draws of one sequence's estimate, averaged over sequences
    assert counted.var(0).mean() < 0.8 * independent.var(0).mean(), (counted.var(0).mean(), independent.var(0).mean())


def test_exact_count_masks_n_response_positions_spread_over_1_to_L():
    batch, seq_len, mask_id = 64, 12, 99
    x0 = torch.randint(0, 50, (batch, seq_len))
    prompt_len = torch.randint(0, 6, (batch,))
    z, t, weight = draw_masks(x0, make_schedule("loglinear"), mask_id, "exact_count",
                              generator=torch.Generator().manual_seed(0), prompt_len=prompt_len)
    in_prompt = torch.arange(seq_len) < prompt_len[:, None]
    assert torch.equal(z[in_prompt], x0[in_prompt])  # the prompt is never masked
    n = (z == mask_id).sum(-1)
    length = seq_len - prompt_len
    assert ((n >= 1) & (n <= length)).all()
    assert torch.allclose(weight, length.double() / n.double())
    assert torch.allclose(t, (n.double() / length).float())
    # antithetic: the batch's counts are evenly spread, so every count 1..L appears for L = 12
    unprompted, _, _ = draw_masks(x0, make_schedule("loglinear"), mask_id, "exact_count",
                                  generator=torch.Generator().manual_seed(1))
    assert set((unprompted == mask_id).sum(-1).tolist()) == set(range(1, seq_len + 1))
    with pytest.raises(ValueError, match="independent, exact_count"):
        draw_masks(x0, make_schedule("loglinear"), mask_id, "bernoulli")
