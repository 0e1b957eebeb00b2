"""Every schedule and policy survives scheduler_config.json: save -> load -> the same config and the same tokens."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle
from fewstep.samplers import (
    AllocationSchedule,
    LearnedPolicy,
    PolicyHead,
    Sampler,
    make_policy,
    make_step_schedule,
)
from fewstep.samplers.scheduler_config import SCHEDULER_FILE, load_learned, save_scheduler_config
from fewstep.samplers.schedules import SCHEDULE_NAMES

S, L, STEPS = 8, 12, 6
META = {"data_fingerprint": "abc", "vocab_size": S + 1, "mask_id": S, "seq_len": L}


def _schedules():
    yield from ((name, make_step_schedule(name, "cosine" if name == "ancestral" else "loglinear"))
                for name in SCHEDULE_NAMES)
    yield "dream-eps", make_step_schedule("dream").__class__(eps=0.05)
    yield "learned", AllocationSchedule([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])


def _policies():
    torch.manual_seed(0)
    yield from ((name, make_policy(name)) for name in ("random", "dilated", "confidence", "top1", "margin",
                                                          "entropy", "threshold", "eb"))
    yield "confidence-top1", make_policy("confidence", confidence="top1")
    yield "threshold-top1-fallback", make_policy("threshold", threshold=0.7, fallback="margin", confidence="top1")
    yield "eb-gamma", make_policy("eb", gamma=0.4, fallback="entropy")
    yield "learned", LearnedPolicy(PolicyHead(hidden=4), vocab_size=S + 1, threshold=0.6, fallback=make_policy("margin"))


@pytest.fixture(scope="module")
def oracle():
    return MarkovOracle(MarkovChain.from_config(MarkovConfig(num_states=S, branching=3, seed=1)))


@pytest.mark.parametrize("schedule_name,schedule", list(_schedules()))
@pytest.mark.parametrize("policy_name,policy", list(_policies()))
def test_save_load_same_config_and_tokens(tmp_path, oracle, schedule_name, schedule, policy_name, policy):
    save_scheduler_config(tmp_path, META, STEPS, schedule, policy, {"note": "test"}, block_size=None)
    content = json.loads((tmp_path / SCHEDULER_FILE).read_text())
    loaded_schedule, loaded_policy, _ = load_learned(tmp_path, META, STEPS)
    assert loaded_schedule.to_config() == schedule.to_config() == content["schedule"]
    saved_policy = {k: v for k, v in content["policy"].items() if k != "weights"}  # the head's file name
    assert loaded_policy.to_config() == policy.to_config() == saved_policy
    before = Sampler(schedule, policy).generate(oracle, 5, L, STEPS, seed=3).tokens
    after = Sampler(loaded_schedule, loaded_policy).generate(oracle, 5, L, STEPS, seed=3).tokens
    assert torch.equal(before, after)


def test_a_learned_sampler_keeps_the_blocks_it_was_learned_with(tmp_path):
    from fewstep.samplers.presets import sampler_from_spec

    save_scheduler_config(tmp_path, META, STEPS, AllocationSchedule([0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0]),
                          make_policy("confidence"), {}, block_size=4)
    assert sampler_from_spec("learned", STEPS, META, tmp_path).block_size == 4
    assert sampler_from_spec("learned:block=6", STEPS, META, tmp_path).block_size == 6
