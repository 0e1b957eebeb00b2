"""With the exact markov oracle: every policy is exact at one token per step; the head imitates its oracle."""

from __future__ import annotations

import pytest
import torch

from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle
from fewstep.kernels import select_positions
from fewstep.samplers import LearnedPolicy, Sampler, make_policy, make_step_schedule
from fewstep.samplers.policies import dilation_order
from fewstep.samplers.schedules import curve_counts
from fewstep.schedule.allocation import search_allocation
from fewstep.schedule.config import GRPOConfig
from fewstep.schedule.grpo import ChainReward, grpo_finetune
from fewstep.schedule.imitation import head_accuracy, imitation_data, train_head

L = 32


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain.from_config(MarkovConfig(num_states=12, branching=3, seed=4))


def _nll(chain: MarkovChain, tokens: torch.Tensor) -> float:
    return chain.nll(tokens).mean().item() / tokens.shape[1]


POLICIES = {
    "random": lambda: make_policy("random"),
    "dilated": lambda: make_policy("dilated"),
    "top1": lambda: make_policy("top1"),
    "margin": lambda: make_policy("margin"),
    "entropy": lambda: make_policy("entropy"),
    "threshold": lambda: make_policy("threshold", threshold=0.995, confidence="top1"),
    "eb": lambda: make_policy("eb", gamma=0.005),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_many_steps_match_the_exact_nll(name, chain):
    """One token per step in any order chosen from the predictive distributions is exact sampling."""
    exact = chain.expected_nll(L) / L
    out = Sampler(make_step_schedule("loglinear"), POLICIES[name]()).generate(
        MarkovOracle(chain), 192, L, L, seed=0
    )
    # the standard error of the mean per-token NLL of 192 samples is about 0.01 nats here
    assert abs(_nll(chain, out.tokens) - exact) < 0.05 * exact
    assert chain.invalid_rate(out.tokens) < 0.005


def test_ranking_by_the_sampled_tokens_probability_is_not_exact(chain):
    """LLaDA's and Fast-dLLM's confidence, the probability of the token just drawn, depends on the draw:
    positions whose draw was likely go first, so even one token per step favours likely tokens (a lower
    NLL than the data's, with less entropy). The top-1 probability does not depend on the draw."""
    exact = chain.expected_nll(L) / L
    out = Sampler(make_step_schedule("loglinear"), make_policy("confidence")).generate(
        MarkovOracle(chain), 192, L, L, seed=0
    )
    assert _nll(chain, out.tokens) < 0.9 * exact


def test_few_steps_are_measurably_worse(chain):
    exact = chain.expected_nll(L) / L
    out = Sampler(make_step_schedule("loglinear"), make_policy("confidence")).generate(
        MarkovOracle(chain), 96, L, 4
    )
    assert _nll(chain, out.tokens) > 1.3 * exact and chain.invalid_rate(out.tokens) > 0.05


def test_dilated_order_spreads_every_prefix():
    order = dilation_order(16)
    assert sorted(order.tolist()) == list(range(16))  # a permutation
    first = order.argsort()
    assert first[:4].tolist() == [0, 8, 4, 12]
    for k in (2, 4, 8):  # the first k positions are evenly spaced, 16 / k apart
        assert torch.diff(first[:k].sort().values).tolist() == [16 // k] * (k - 1)
    assert sorted(dilation_order(11).tolist()) == sorted(set(dilation_order(11).tolist()))  # distinct off powers of 2


def test_dilated_order_beats_random_when_neighbours_depend(chain):
    """On a first-order chain, tokens in different gaps are independent given the revealed ones, so a
    dilated order at L/8 tokens per step is nearly exact where the random order is far from it."""
    exact = chain.expected_nll(L) / L
    nll = {}
    for name in ("random", "dilated"):
        out = Sampler(make_step_schedule("loglinear"), make_policy(name)).generate(MarkovOracle(chain), 192, L, 4,
                                                                                   seed=3)
        nll[name] = _nll(chain, out.tokens)
    assert nll["dilated"] < 1.1 * exact < 1.25 * exact < nll["random"]


def test_selection_takes_the_best_eligible_with_random_ties():
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.9], [0.2, 0.2, 0.2, 0.2, 0.2]])
    eligible = torch.tensor([[True, True, False, True, True], [True, True, True, True, False]])
    picked = select_positions(
        scores,
        eligible,
        torch.tensor([2, 2]),
        tiebreak=torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.1], [0.9, 0.1, 0.5, 0.2, 0.0]], dtype=torch.float64),
    )
    assert picked.tolist() == [[False, True, False, False, True], [False, True, False, True, False]]


def test_policy_head_imitates_its_oracle_on_heldout_rollouts(chain):
    """The head's finalise decisions agree with the oracle's labels better than the majority class does."""
    oracle = MarkovOracle(chain)
    train = imitation_data(oracle, 48, 24, rollout_steps=24, seed=0)
    heldout = imitation_data(oracle, 32, 24, rollout_steps=24, seed=1)
    head = train_head(train, hidden=8, updates=300, lr=0.02)
    scores = head_accuracy(head, heldout)
    # recorded on this chain: accuracy 0.846, majority class 0.779, the top-1 > 0.5 rule 0.814
    assert scores["accuracy"] > scores["majority_baseline"] + 0.04
    assert scores["accuracy"] > scores["confidence_rule"]
    policy = LearnedPolicy(head, chain.num_states + 1, threshold=0.995)
    out = Sampler(make_step_schedule("loglinear"), policy).generate(oracle, 192, L, L, seed=0)
    assert abs(_nll(chain, out.tokens) - chain.expected_nll(L) / L) < 0.05 * chain.expected_nll(L) / L


def test_fallback_order_fills_the_count_after_accepted_tokens(chain):
    """Threshold with a random fallback: at few steps it follows the random order (far better on a chain)."""
    oracle = MarkovOracle(chain)
    plain = Sampler(make_step_schedule("loglinear"), make_policy("threshold", confidence="top1")).generate(
        oracle, 192, L, 4, seed=0
    )
    spread = Sampler(make_step_schedule("loglinear"),
                     make_policy("threshold", fallback="random", confidence="top1")).generate(oracle, 192, L, 4, seed=0)
    assert _nll(chain, spread.tokens) < 0.8 * _nll(chain, plain.tokens)


def test_grpo_raises_the_reward_of_a_poor_head(chain):
    """From an imitation head without a fallback, policy gradient raises quality x speed at 8 steps.

    The reference rollouts break the exact ties of a stationary chain (every position equally certain at
    first) to the lowest position, so the imitated order runs left to right and has structure to improve
    on; with random ties the imitation head has none, and 20 iterations do not move its reward."""
    oracle = MarkovOracle(chain)
    head = train_head(imitation_data(oracle, 32, L, rollout_steps=L, seed=0, tiebreak="first"), hidden=8,
                      updates=300, lr=0.02)
    policy = LearnedPolicy(head, chain.num_states + 1, threshold=0.9)
    tuned, history = grpo_finetune(
        oracle,
        head,
        policy,
        make_step_schedule("loglinear"),
        ChainReward(chain, L),
        L,
        8,
        GRPOConfig(iterations=20, prompts=16, group=4, lr=0.01),
    )
    rewards = [h["reward"] for h in history]
    assert sum(rewards[-5:]) > 1.3 * sum(rewards[:5])
    assert sum(p.numel() for p in tuned.parameters()) == sum(p.numel() for p in head.parameters())


def test_allocation_search_improves_its_objective():
    """On a known objective the search moves tokens towards the better steps and never ends worse."""
    target = [16, 8, 4, 2, 1, 1]  # none of the starting curves
    result = search_allocation(
        lambda c: sum(abs(a - b) for a, b in zip(c, target)), 6, 32, iterations=200, seed=0
    )
    assert sum(result.counts) == 32 and min(result.counts) >= 0
    assert result.best_value < result.start_value
    assert result.best_value <= 2


def test_geometric_schedule_doubles_each_step():
    assert curve_counts(make_step_schedule("geometric"), 4, 128) == [16, 16, 32, 64]
    assert curve_counts(make_step_schedule("geometric"), 1, 5) == [5]
    assert sum(curve_counts(make_step_schedule("geometric"), 7, 20)) == 20


def test_dilated_geometric_is_exact_at_few_steps(chain):
    """Dilated order + geometric counts: after the first step every revealed token sits alone in its gap,
    so only the first step's far-apart tokens are drawn jointly: log2(L) steps suffice on a chain."""
    exact = chain.expected_nll(L) / L
    out = Sampler(make_step_schedule("geometric"), make_policy("dilated")).generate(MarkovOracle(chain), 192, L, 3,
                                                                                     seed=5)
    assert abs(_nll(chain, out.tokens) - exact) < 0.05 * exact and chain.invalid_rate(out.tokens) < 0.005
