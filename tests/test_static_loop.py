"""The sampler's static loop (no host synchronisation, CUDA-graph capturable) gives the dynamic loop's tokens."""

from __future__ import annotations

import pytest
import torch
from test_samplers_contract import SAMPLERS, STEPS, Recording

from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain
from fewstep.errors import RunError
from fewstep.samplers import Sampler, make_policy, make_step_schedule
from fewstep.samplers.presets import build_sampler

S, L = 8, 12


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain.from_config(MarkovConfig(num_states=S, branching=3, seed=1))


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"learned-allocation"}))
def test_static_loop_gives_the_dynamic_loops_tokens(name, chain):
    prompt = torch.tensor([3, S, S, 5])
    dynamic = SAMPLERS[name]().generate(Recording(chain), 6, L, STEPS, prompt=prompt, seed=11, batch_size=4)
    model = Recording(chain)
    static = SAMPLERS[name]().generate(model, 6, L, STEPS, prompt=prompt, seed=11, batch_size=4, static=True)
    assert torch.equal(static.tokens, dynamic.tokens)
    assert static.nfe_per_sequence == STEPS and len(model.inputs) == 2 * STEPS  # every step a forward, 2 batches


@pytest.mark.parametrize("preset", ["llada", "dream", "fast-dllm"])
def test_static_loop_keeps_the_presets(preset, chain):
    sampler = build_sampler(preset, steps=8, block_size=4, temperature=0.0)
    prompt = torch.tensor([3, 1])
    dynamic = sampler.generate(Recording(chain), 3, L, 8, prompt=prompt, seed=2)
    static = sampler.generate(Recording(chain), 3, L, 8, prompt=prompt, seed=2, static=True)
    assert torch.equal(static.tokens, dynamic.tokens)


def test_cuda_graph_needs_cuda_and_a_hook_needs_the_dynamic_loop(chain):
    sampler = Sampler(make_step_schedule("loglinear"), make_policy("confidence"))
    if not torch.cuda.is_available():
        with pytest.raises(RunError, match="needs a CUDA device"):
            sampler.generate(Recording(chain), 2, L, 4, cuda_graph=True)
    with pytest.raises(RunError, match="dynamic loop"):
        sampler.generate(Recording(chain), 2, L, 4, static=True, on_step=lambda record: None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", ["ancestral", "llada", "fast-dllm", "dream", "eb", "dilated/geometric"])
def test_cuda_graph_replays_the_eager_loop_with_no_host_sync(spec):
    from fewstep.samplers.presets import sampler_from_spec
    from fewstep.samplers.static_loop import count_host_syncs

    class Model(torch.nn.Module):
        time_conditioning = False
        mask_id, vocab_size = 511, 512

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(512, 64)
            self.out = torch.nn.Linear(64, 512)

        def forward(self, z, t=None):
            h = self.embed(z)
            return self.out(h + h.mean(dim=1, keepdim=True))

    model = Model().cuda()
    sampler = sampler_from_spec(spec, 8)
    eager = sampler.generate(model, 4, 128, 8, seed=3, device="cuda", static=True)
    graphed = sampler.generate(model, 4, 128, 8, seed=3, device="cuda", cuda_graph=True)
    again = sampler.generate(model, 4, 128, 8, seed=4, device="cuda", cuda_graph=True)  # replayed, new seed
    assert torch.equal(eager.tokens, graphed.tokens) and not torch.equal(graphed.tokens, again.tokens)
    run = next(iter(sampler._static_runs.values()))
    assert count_host_syncs(lambda: run.graph.replay()) == 0
