"""One contract, every sampler: the same loop drives each policy x schedule combination (diffusers-style)."""

from __future__ import annotations

import pytest
import torch

from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle
from fewstep.errors import RunError
from fewstep.samplers import (
    AllocationSchedule,
    LearnedPolicy,
    PolicyHead,
    Sampler,
    make_policy,
    make_step_schedule,
)

S, L = 8, 12  # states (mask id 8), sequence length


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain.from_config(MarkovConfig(num_states=S, branching=3, seed=1))


class Recording(MarkovOracle):
    """The oracle, remembering every input it was called with."""

    def __init__(self, chain: MarkovChain) -> None:
        super().__init__(chain)
        self.inputs: list[torch.Tensor] = []

    def forward(self, z, t=None):
        self.inputs.append(z.clone())
        return super().forward(z, t)


def _head(fallback: str | None = None) -> LearnedPolicy:
    torch.manual_seed(0)
    return LearnedPolicy(
        PolicyHead(hidden=4),
        vocab_size=S + 1,
        threshold=0.6,
        fallback=make_policy(fallback) if fallback else None,
    )


SAMPLERS = {
    "ancestral": lambda: Sampler(make_step_schedule("ancestral"), make_policy("random")),
    "random-loglinear": lambda: Sampler(make_step_schedule("loglinear"), make_policy("random")),
    "dilated-loglinear": lambda: Sampler(make_step_schedule("loglinear"), make_policy("dilated")),
    "dilated-geometric": lambda: Sampler(make_step_schedule("geometric"), make_policy("dilated")),
    "dilated-blocks": lambda: Sampler(make_step_schedule("cosine"), make_policy("dilated"), block_size=5),
    "confidence-loglinear": lambda: Sampler(make_step_schedule("loglinear"), make_policy("confidence")),
    "margin-cosine": lambda: Sampler(make_step_schedule("cosine"), make_policy("margin")),
    "entropy-linear": lambda: Sampler(make_step_schedule("linear"), make_policy("entropy")),
    "threshold": lambda: Sampler(make_step_schedule("loglinear"), make_policy("threshold", threshold=0.7)),
    "eb": lambda: Sampler(make_step_schedule("loglinear"), make_policy("eb", gamma=0.5)),
    "threshold-random-fallback": lambda: Sampler(
        make_step_schedule("cosine"), make_policy("threshold", threshold=0.7, fallback="random")
    ),
    "eb-margin-fallback": lambda: Sampler(
        make_step_schedule("ancestral"), make_policy("eb", gamma=0.5, fallback="margin")
    ),
    "blocks": lambda: Sampler(make_step_schedule("loglinear"), make_policy("confidence"), block_size=5),
    "learned-allocation": lambda: Sampler(
        AllocationSchedule.from_counts([1, 2, 4, 5]), make_policy("confidence")
    ),
    "learned-policy": lambda: Sampler(make_step_schedule("loglinear"), _head()),
    "learned-policy-random-fallback": lambda: Sampler(
        make_step_schedule("loglinear"), _head("random"), block_size=6
    ),
    "greedy": lambda: Sampler(make_step_schedule("loglinear"), make_policy("margin"), temperature=0.0),
}
EARLY_STOP = {
    "ancestral",
    "threshold",
    "eb",
    "learned-policy",
    "margin-cosine",
    "dilated-blocks",
    "entropy-linear",
    "threshold-random-fallback",
    "eb-margin-fallback",
    "learned-policy-random-fallback",
}
STEPS = 4


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_contract(name, chain):
    sampler = SAMPLERS[name]()
    model = Recording(chain)
    prompt = torch.tensor([3, S, S, 5])  # a prefix with two positions to infill
    out = sampler.generate(model, 6, L, STEPS, prompt=prompt, seed=11, batch_size=4)
    tokens = out.tokens
    # shapes, no mask left, prompt kept
    assert tokens.shape == (6, L) and tokens.dtype == torch.long
    assert (tokens != S).all() and (tokens >= 0).all()
    assert (tokens[:, 0] == 3).all() and (tokens[:, 3] == 5).all()
    # an already revealed token never changes, from one forward pass to the next and to the output
    first_batch = [z for z in model.inputs if z.shape[0] == 4]
    for before, after in zip(first_batch, [*first_batch[1:], tokens[:4]]):
        revealed = before != S
        assert torch.equal(after[revealed], before[revealed])
    # NFE: the budget, or fewer for policies and curves that can finish early; never more
    assert out.nfe == len(model.inputs) and out.num_batches == 2
    assert out.nfe_per_sequence <= STEPS
    if name not in EARLY_STOP:
        assert out.nfe_per_sequence == STEPS
    assert out.generated == 6 * (L - 2)  # the infilled and appended positions, never the prompt's
    assert out.tokens_per_forward >= (L - 2) / STEPS
    # reproducible with a seed, different with another
    again = sampler.generate(Recording(chain), 6, L, STEPS, prompt=prompt, seed=11, batch_size=4)
    other = sampler.generate(Recording(chain), 6, L, STEPS, prompt=prompt, seed=12, batch_size=4)
    assert torch.equal(again.tokens, tokens)
    if sampler.temperature > 0:
        assert not torch.equal(other.tokens, tokens)
    # a sequence's result does not depend on the rest of its batch
    alone = sampler.generate(Recording(chain), 6, L, STEPS, prompt=prompt, seed=11, batch_size=1)
    fewer = sampler.generate(Recording(chain), 3, L, STEPS, prompt=prompt, seed=11)
    assert torch.equal(alone.tokens, tokens) and torch.equal(fewer.tokens, tokens[:3])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_bad_input_is_refused_with_a_clear_message(name, chain):
    sampler = SAMPLERS[name]()
    with pytest.raises(RunError, match="steps must be at least 1"):
        sampler.generate(MarkovOracle(chain), 2, L, 0)
    with pytest.raises(RunError, match="longer than seq_len"):
        sampler.generate(MarkovOracle(chain), 2, L, STEPS, prompt=torch.zeros(L + 1, dtype=torch.long))


def test_a_learned_allocation_refuses_another_budget(chain):
    sampler = SAMPLERS["learned-allocation"]()
    with pytest.raises(RunError, match="budget of 4 steps, not 5"):
        sampler.generate(MarkovOracle(chain), 2, L, 5)


def test_a_spec_samples_like_the_sampler_it_names(chain):
    from fewstep.samplers.presets import parse_spec, sample_with_spec, sampler_from_spec, spec_is_learned

    oracle = MarkovOracle(chain)
    # `ancestral` is the Sampler with MDLM's parts: a random order and MDLM's counts under the noise schedule
    out = sample_with_spec("ancestral", oracle, 5, L, STEPS, seed=3, noise_schedule="cosine", batch_size=2)
    reference = Sampler(make_step_schedule("ancestral", "cosine"), make_policy("random")).generate(
        oracle, 5, L, STEPS, seed=3)
    assert torch.equal(out.tokens, reference.tokens) and out.nfe_per_sequence == reference.nfe_per_sequence
    # any other spec is the Sampler it names; the parts are what the spec says
    assert parse_spec("eb+random/geometric") == {
        "sampler": "ancestral", "policy": "eb", "fallback": "random", "schedule": "geometric", "options": {}
    }
    assert parse_spec("fast-dllm:threshold=0.8,block=4")["options"] == {"threshold": 0.8, "block": 4}
    assert sampler_from_spec("fast-dllm:threshold=0.8,block=4", STEPS).block_size == 4
    with pytest.raises(RunError, match="sampler spec option"):
        parse_spec("llada:blocks=4")
    out = sample_with_spec("eb+random/geometric", oracle, 5, L, STEPS, seed=3)
    same = sampler_from_spec("eb+random/geometric", STEPS).generate(oracle, 5, L, STEPS, seed=3)
    assert torch.equal(out.tokens, same.tokens) and out.nfe_per_sequence <= STEPS
    assert not torch.equal(out.tokens, sample_with_spec("dilated/geometric", oracle, 5, L, STEPS, seed=3).tokens)
    # learned parts are read from a model directory: named as such, refused without one
    assert spec_is_learned("learned") and spec_is_learned("dilated/learned") and spec_is_learned("learned/cosine")
    assert not spec_is_learned("dilated/geometric") and not spec_is_learned("ancestral")
    with pytest.raises(RunError, match="read from a model directory"):
        sample_with_spec("learned", oracle, 2, L, STEPS)
    with pytest.raises(RunError, match="unknown policy 'bogus'"):
        sample_with_spec("bogus/geometric", oracle, 2, L, STEPS)


def test_steps_that_reveal_nothing_cost_no_forward_pass(chain):
    from fewstep.samplers.policies import DilatedPolicy

    class EveryStep(DilatedPolicy):  # the same order, but the sampler must treat every step as a possible reveal
        adaptive = True

    results = {}
    for name, policy in (("skip", make_policy("dilated")), ("every", EveryStep())):
        model = Recording(chain)
        model.time_conditioning = True  # no reuse of the last forward: every step that runs is a forward
        results[name] = (Sampler(make_step_schedule("geometric"), policy).generate(model, 6, L, 8, seed=5), model)
    (skip, skip_model), (every, every_model) = results["skip"], results["every"]
    assert torch.equal(skip.tokens, every.tokens)  # the same tokens...
    assert every.nfe_per_sequence == 8 and skip.nfe_per_sequence < 8  # ...without the empty steps' forwards
    distinct = [z for i, z in enumerate(every_model.inputs) if i == 0 or not torch.equal(z, every_model.inputs[i - 1])]
    assert skip.nfe_per_sequence == len(distinct) == len(skip_model.inputs)


def test_the_package_exports_every_schedule_and_each_name_resolves():
    import fewstep.samplers as samplers
    from fewstep.samplers import names, policies, presets, schedules

    assert set(schedules.__all__) <= set(samplers.__all__)
    assert all(getattr(samplers, name) is not None for name in samplers.__all__)
    assert samplers.PRESETS is presets.PRESETS is names.PRESETS and policies.POLICY_NAMES is names.POLICY_NAMES
    with pytest.raises(AttributeError):
        samplers.NoSuchSampler  # noqa: B018
