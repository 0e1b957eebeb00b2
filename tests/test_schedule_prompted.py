"""Learned schedules on prompts (issue 16, item 6): `fewstep schedule` on a prompted model learns from its
training prompts, for task accuracy; GRPO's reward is accuracy x speed; `learned:threshold=T` sweeps
the head like Fast-dLLM's threshold."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_overrides
from test_prompted import SMALL_TASK, anagram_data

from fewstep.core.config import load_config
from fewstep.data.anagram import AnagramOracle
from fewstep.errors import ConfigError
from fewstep.samplers.policy_head import LearnedPolicy, PolicyHead
from fewstep.samplers.presets import sampler_from_spec
from fewstep.schedule.config import ScheduleRunConfig
from fewstep.schedule.grpo import AccuracyReward, deployed_reward
from fewstep.schedule.objective import PromptSet
from fewstep.schedule.run import PromptWindows, learn_schedule
from fewstep.teacher.config import TeacherRunConfig


def _cfg(**overrides) -> ScheduleRunConfig:
    items = {"model": "in-process", "steps": 12, "what": "policy", "policy.schedule": "cap", "temperature": 0,
             "policy.rollouts": 24, "policy.heldout_rollouts": 16, "policy.updates": 200,
             "allocation.num_samples": 16, "allocation.heldout_samples": 16, "progress": "false", **overrides}
    return load_config(ScheduleRunConfig, None, [f"{k}={v}" for k, v in items.items()])


def test_the_accuracy_reward_is_one_for_a_right_answer_and_zero_for_a_wrong_one():
    data = anagram_data(num_val=8)
    prompts = PromptSet.of(data, "val")
    right = data.val.clone()  # the data's own answers are right
    wrong = right.clone()
    for i, n in enumerate(prompts.prompt_len.tolist()):
        wrong[i, n + 1] = wrong[i, n]  # the first letter twice: never a valid answer
    prompt, judge = AccuracyReward(prompts).batch(8, 0)
    assert [len(p) for p in prompt] == prompts.prompt_len.tolist()
    assert judge(right).tolist() == [1.0] * 8 and judge(wrong).tolist() == [0.0] * 8
    # taken in turn: the batch after the set's end wraps around to its start
    again, _ = AccuracyReward(prompts).batch(3, 7)
    assert torch.equal(again[1], prompt[0]) and torch.equal(again[0], prompt[7])


def test_the_windows_of_training_prompts_are_disjoint_and_too_few_is_one_clear_error():
    prompts = PromptSet.of(anagram_data(num_train=100))
    windows = PromptWindows(prompts, _cfg())
    spans = [windows.windows[name] for name in ("imitation", "imitation_heldout", "search", "heldout", "rest")]
    assert [start for start, _ in spans] == [0, 24, 40, 56, 72] and spans[-1][1] == 28
    assert torch.equal(windows["search"].prompts, prompts.prompts[40:56])
    with pytest.raises(ConfigError, match="raise data.num_train"):
        PromptWindows(prompts, _cfg(**{"policy.rollouts": 90}))


def test_a_head_learned_on_the_oracles_prompts_answers_right_in_fewer_passes_than_positions():
    """On the exact denoiser the head learns when a proposal is final from answers to training prompts: the
    EOS fill and the last letter left are, two letters that share a marginal are not. It keeps every
    answer right and needs fewer forward passes than response positions (one per step would be exact)."""
    data = anagram_data(num_train=300, num_val=48)
    oracle = AnagramOracle(data.task)
    cfg = _cfg(**{"policy.grpo.iterations": 2, "policy.grpo.prompts": 8})
    schedule, policy, report = learn_schedule(oracle, cfg, 12, data.vocab_size, prompts=PromptSet.of(data))
    assert report["objective"] == "accuracy" and schedule.name == "cap" and isinstance(policy, LearnedPolicy)
    assert report["policy"]["grpo"]["heldout_reward"]["imitation"] > 0
    held = report["policy"]["heldout"]
    assert held["accuracy"] > held["majority_baseline"]
    val = PromptSet.of(data, "val")
    from fewstep.samplers.sampler import Sampler

    result = val.accuracy(oracle, Sampler(schedule, policy, temperature=0.0), 12, 12, seed=0, batch_size=64)
    positions = float((12 - val.prompt_len).double().mean())
    assert result.accuracy == 1.0 and result.nfe < positions
    # the same reward the GRPO stage scores: accuracy x budget / NFE
    reward = deployed_reward(oracle, schedule, policy, AccuracyReward(val), 12, 12, 48, seed=0, temperature=0.0)
    assert reward == pytest.approx(float(torch.mean(12 / torch.tensor(_nfe_per_prompt(oracle, schedule, policy, val)))),
                                   rel=1e-6)


def _nfe_per_prompt(model, schedule, policy, prompts: PromptSet) -> list[float]:
    from fewstep.samplers.sampler import Sampler

    used = torch.zeros(len(prompts))

    def hook(step):
        used[step.rows.cpu()] += step.ctx.eligible.any(1).float().cpu()

    Sampler(schedule, policy, temperature=0.0).generate(model, len(prompts), 12, 12, prompt=prompts.prompt_list(),
                                                        on_step=hook)
    return used.tolist()


def test_cap_goes_with_a_policy_only_run():
    data = anagram_data()
    with pytest.raises(ConfigError, match="what=policy"):
        learn_schedule(AnagramOracle(data.task), _cfg(what="both"), 12, data.vocab_size, prompts=PromptSet.of(data))
    with pytest.raises(ConfigError, match="policy.schedule"):
        _cfg(**{"policy.schedule": "even"})


def test_fewstep_schedule_on_a_prompted_teacher_and_the_threshold_sweep_of_its_head(tmp_path):
    """The command users run: `fewstep schedule` on a prompted teacher's model directory learns on the
    teacher's own training prompts and writes a head that `learned` loads; `learned:threshold=T`
    replaces the threshold it was learned with."""
    from fewstep.schedule.run import run_schedule_config
    from fewstep.teacher.run import train_teacher

    teacher = tmp_path / "teacher"
    train_teacher(load_config(TeacherRunConfig, None, tiny_overrides(teacher, *SMALL_TASK, "trainer.max_steps=2",
                                                                     "trainer.val_every=2")))
    model_dir = teacher / "model"
    report = run_schedule_config(_cfg(model=str(model_dir), steps=8, **{
        "policy.rollouts": 16, "policy.heldout_rollouts": 8, "policy.hidden": 0}))  # a tiny model: a tiny head
    assert report["objective"] == "accuracy"
    saved = json.loads((model_dir / "scheduler_config.json").read_text())
    assert saved["schedule"]["name"] == "cap" and saved["policy"]["name"] == "learned"
    meta = json.loads((model_dir / "fewstep.json").read_text())
    learned = sampler_from_spec("learned", 8, meta, model_dir=model_dir, temperature=0.0)
    swept = sampler_from_spec("learned:threshold=0.6", 8, meta, model_dir=model_dir, temperature=0.0)
    assert learned.policy.threshold == 0.9 and swept.policy.threshold == 0.6
    assert swept.policy.head is learned.policy.head or torch.equal(
        next(swept.policy.head.parameters()), next(learned.policy.head.parameters()))
    assert sampler_from_spec("fast-dllm", 8, meta).policy.threshold == 0.9  # the heuristic's default is kept


def test_a_learned_policy_refuses_a_threshold_outside_the_open_interval():
    from fewstep.errors import RunError

    with pytest.raises(RunError, match=r"\(0, 1\)"):
        LearnedPolicy(PolicyHead(0), 16).with_threshold(1.0)


def test_an_allocation_searched_on_prompts_is_scored_by_accuracy_on_its_own_windows():
    data = anagram_data(num_train=300)
    cfg = _cfg(what="allocation", steps=4, **{"allocation.iterations": 3, "allocation.policy": "confidence",
                                               "policy.schedule": "loglinear"})
    schedule, _, report = learn_schedule(AnagramOracle(data.task), cfg, 12, data.vocab_size,
                                         prompts=PromptSet.of(data))
    allocation = report["allocation"]
    assert allocation["objective"] == "accuracy"
    # the counts cover the longest response, and the held-out value is 1 - its accuracy
    assert sum(allocation["counts"]) == 12 - int(data.train_prompt_len.min())
    held = allocation["heldout"]["learned"]
    assert held["value"] == pytest.approx(1.0 - held["accuracy"]) and 0.0 <= held["accuracy"] <= 1.0
