"""SDTT targets: k = 1 is the teacher's own prediction; with the exact oracle, rollouts average out."""

from __future__ import annotations

import pytest
import torch

from fewstep.core.diffusion import forward_process, make_schedule, subs_log_probs
from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle
from fewstep.distillation.targets import ancestral_reveal, sdtt_target, student_times


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain.from_config(MarkovConfig(num_states=6, branching=3, seed=2))


def test_k1_target_is_the_teachers_one_step_prediction(chain):
    oracle = MarkovOracle(chain)
    schedule = make_schedule("loglinear")
    x = chain.sample(8, 12, seed=0)
    t = torch.full((8,), 0.6, dtype=torch.float64)
    z = forward_process(x, t, schedule, chain.num_states, generator=torch.Generator().manual_seed(1))
    target = sdtt_target(oracle, z, t, dt=0.1, k=1, mask_id=6, reveal=ancestral_reveal(schedule),
                         generator=torch.Generator().manual_seed(2))
    expected = subs_log_probs(oracle(z).float(), z, 6)  # targets are float32: no float64 [B, L, V] copy
    assert target.dtype == torch.float32 and torch.equal(target, expected)


def test_revealed_tokens_keep_the_distribution_they_were_drawn_from(chain):
    """A token revealed at step 0 keeps p_0; one revealed at the last step or never holds p_last."""
    oracle = MarkovOracle(chain)
    z = torch.full((1, 5), 6)

    def reveal(masked, step, t, s, generator):
        chosen = torch.zeros_like(masked)
        chosen[:, 2] = step == 0
        return masked & chosen

    target = sdtt_target(oracle, z, torch.tensor([1.0]), 0.1, 2, 6, reveal, torch.Generator().manual_seed(0))
    first = subs_log_probs(oracle(z).float(), z, 6)
    assert torch.equal(target[0, 2], first[0, 2])
    assert not torch.allclose(target[0, 1], first[0, 1])  # position 1 now sees its revealed neighbour


def test_rollout_average_is_the_exact_conditional(chain):
    """Law of total probability: a first step reveals one token x_a ~ p(x_a | z); averaged over x_a, the
    target at another masked position b, p(x_b | z, x_a), equals the exact conditional p(x_b | z)."""
    oracle = MarkovOracle(chain)
    mask = chain.num_states
    z0 = chain.sample(1, 7, seed=5)
    z0[0, [1, 2, 3, 5]] = mask
    rollouts = 6000
    z = z0.expand(rollouts, -1).clone()

    def reveal_position_2_first(masked, step, t, s, generator):
        chosen = torch.zeros_like(masked)
        chosen[:, 2] = True
        return masked & chosen

    target = sdtt_target(oracle, z, torch.ones(rollouts), 0.1, 2, mask, reveal_position_2_first,
                         torch.Generator().manual_seed(3))
    exact = chain.posterior(z0, mask)[0]
    for b in (1, 3):
        average = target[:, b, :mask].exp().mean(0)
        spread = target[:, b, :mask].exp().std(0) / rollouts**0.5
        assert torch.all((average - exact[b]).abs() <= 5 * spread + 1e-9), (b, average, exact[b])
        # and the rollouts really differ: the target depends on the value drawn at position 2
        assert target[:, b].exp().std(0).max() > 0.05


def test_student_times_lie_on_the_grid():
    t = student_times(1000, 8, generator=torch.Generator().manual_seed(0))
    assert set((t * 8).round().int().tolist()) == set(range(1, 9))
