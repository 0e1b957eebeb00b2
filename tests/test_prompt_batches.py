"""Prompts of different lengths in one call: each gets the answer it gets alone (LLaDA #78 and #101 report
that batching changes results there), its blocks anchored at its own prompt's end."""

from __future__ import annotations

import pytest
import torch

from fewstep.data.config import MarkovConfig
from fewstep.data.markov import MarkovChain, MarkovOracle
from fewstep.errors import RunError
from fewstep.samplers import Sampler, make_policy, make_step_schedule
from fewstep.samplers.presets import sampler_from_spec
from fewstep.samplers.sampler import anchor_groups, prepare_prompt

S, L = 8, 16  # states (the mask id is 8), sequence length


@pytest.fixture(scope="module")
def oracle() -> MarkovOracle:
    return MarkovOracle(MarkovChain.from_config(MarkovConfig(num_states=S, branching=3, seed=2)))


def _prompts(oracle: MarkovOracle) -> list[list[int]]:
    rows = oracle.chain.sample(5, L, seed=4)
    return [rows[i, :n].tolist() for i, n in enumerate((3, 7, 3, 1, 11))]


SPECS = ["llada:block=4", "fast-dllm:block=4", "dream", "ancestral", "dilated/geometric"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mixed_length_prompts_get_the_answers_they_get_alone(oracle, spec, temperature):
    prompts = _prompts(oracle)
    sampler = sampler_from_spec(spec, 8, {"noise_schedule": "loglinear"}, None, temperature)
    together = sampler.generate(oracle, len(prompts), L, 8, prompt=prompts, seed=3, batch_size=2,
                                sample_ids=[0] * len(prompts))
    for i, prompt in enumerate(prompts):
        alone = sampler.generate(oracle, 1, L, 8, prompt=prompt, seed=3)
        assert torch.equal(together.tokens[i], alone.tokens[0]), (spec, i)
        assert together.tokens[i, : len(prompt)].tolist() == prompt
    assert (together.tokens != S).all()
    assert together.generated == sum(L - len(p) for p in prompts)


def test_blocks_start_at_each_prompts_own_end(oracle):
    """With blocks of 4 and one step per block, the first step fills exactly the 4 positions after each
    row's prompt, whatever the other rows' prompt lengths."""
    prompts = _prompts(oracle)
    seen: list[tuple[list[int], int]] = []
    sampler = Sampler(make_step_schedule("even"), make_policy("confidence"), block_size=4)
    sampler.generate(oracle, len(prompts), L, 8, prompt=prompts, seed=0,
                     on_step=lambda step: seen.append((step.rows.tolist(), step.start)))
    first_start = {}
    for rows, start in seen:
        for row in rows:
            first_start.setdefault(row, start)
    assert first_start == {i: len(p) for i, p in enumerate(prompts)}


def test_sample_ids_decide_the_noise_not_the_batch(oracle):
    sampler = sampler_from_spec("ancestral", 8, {"noise_schedule": "loglinear"}, None, 1.0)
    full = sampler.generate(oracle, 6, L, 8, seed=9).tokens
    part = sampler.generate(oracle, 2, L, 8, seed=9, sample_ids=[4, 1]).tokens
    assert torch.equal(part, full[[4, 1]])
    with pytest.raises(RunError, match="one index per sample"):
        sampler.generate(oracle, 2, L, 8, seed=9, sample_ids=[0])


def test_prompt_checks_name_the_prompt():
    with pytest.raises(RunError, match="prompt 1 has 20 tokens, longer than seq_len=16"):
        prepare_prompt([[1, 2], list(range(20))], 2, L, S, S + 1)
    with pytest.raises(RunError, match="one sequence or one per sample"):
        prepare_prompt([[1], [2], [3]], 2, L, S, S + 1)
    with pytest.raises(RunError, match="outside the model's vocabulary"):
        prepare_prompt([[1], [12]], 2, L, S, S + 1)
    start = prepare_prompt([[1, 2, 3], [4]], 2, L, S, S + 1)
    assert [(a, g.tolist()) for a, g in anchor_groups(start, S)] == [(1, [1]), (3, [0])]


def test_pipeline_answers_a_prompt_the_same_in_any_batch(tiny_teacher):
    from fewstep import load

    pipeline = load(tiny_teacher / "model")
    prompts = ["s1 s2 s3", "s4", "s0 s5 s6 s7 s2 s1"]
    together = pipeline.generate(prompts=prompts, steps=8, seed=2, num_samples=2)
    assert together["prompts"] == [p for p in prompts for _ in range(2)]
    for i, prompt in enumerate(prompts):
        alone = pipeline.generate(prompts=[prompt], steps=8, seed=2, num_samples=2)
        assert alone["responses"] == together["responses"][2 * i : 2 * i + 2]
        assert alone["texts"] == together["texts"][2 * i : 2 * i + 2]
    lengths = [len(r) for r in together["responses"]]
    seq_len = pipeline.meta["seq_len"]  # the answers fill the model's length (markov has no end token)
    assert lengths == [seq_len - n for n in (3, 3, 1, 1, 6, 6)]


def test_generate_prompts_round_trip(tiny_teacher, tmp_path):
    import json

    from conftest import run_cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "s1 s2"}\n\n{"prompt": "s3", "id": 7}\n')
    out = tmp_path / "answers.jsonl"
    result = run_cli("generate", str(tiny_teacher / "model"), "--prompts", str(prompts), "--steps", "8",
                     "--seed", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["s1 s2", "s3"]
    single = run_cli("generate", str(tiny_teacher / "model"), "--prompt", "s3", "--steps", "8", "--seed", "4")
    assert single.returncode == 0, single.stderr
    assert json.loads(single.stdout)["text"] == records[1]["text"]
    assert all(r["text"] and "s" in r["text"] for r in records)
    again = run_cli("generate", str(tiny_teacher / "model"), "--prompts", str(prompts), "--out", str(out))
    assert again.returncode != 0 and "already exists" in again.stderr and len(records) == 2
    prompts.write_text('{"prompt": "s1"}\n{"question": "s2"}\n')
    bad = run_cli("generate", str(tiny_teacher / "model"), "--prompts", str(prompts))
    assert bad.returncode != 0 and "line 2 has no string field 'prompt'" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error:")
    too_long = run_cli("generate", str(tiny_teacher / "model"), "--prompt", " ".join(["s1"] * 70))
    assert too_long.returncode != 0 and "longer than seq_len=16" in too_long.stderr
    chat = run_cli("generate", str(tiny_teacher / "model"), "--prompt", "s1", "--chat")
    assert chat.returncode != 0 and "no chat template" in chat.stderr
