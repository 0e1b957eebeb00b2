"""The autoregressive baseline decodes with its context: the KV-cached decoder against a full-context forward.

transformers renamed the cache keyword (`past_key_values` in 4.x, `cache` in 5.x); a 4.x forward takes
**kwargs, so the wrong name is swallowed and every token is decoded without context. These tests hold on
the installed release; the range the project declares (pyproject) was checked on its oldest and newest
ends with the same tests (BENCHMARKS.md, "autoregressive baseline").
"""

from __future__ import annotations

import torch

from fewstep.evaluation.autoregressive import Evaluator, _gpt2, ar_sample, decode_step
from fewstep.evaluation.config import EvaluatorModelConfig
from fewstep.kernels.stats import draw_tokens

VOCAB, LENGTH, START = 24, 20, 23


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = _gpt2(EvaluatorModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                  VOCAB, LENGTH, START).eval()
    with torch.no_grad():  # peaked, context-dependent predictions: a decoder without context shows
        for p in model.parameters():
            p.mul_(8.0)
    return model


@torch.no_grad()
def test_decode_step_gives_the_full_context_logits_at_every_position():
    model = _model()
    tokens = torch.randint(0, START, (3, LENGTH))
    full = model(input_ids=tokens).logits
    cache, steps = None, []
    for i in range(LENGTH):
        logits, cache = decode_step(model, tokens[:, i : i + 1], cache)
        steps.append(logits)
    incremental = torch.stack(steps, dim=1)
    assert (full[:, 1:] - full[:, :1]).abs().max() > 1.0  # the context matters for this model
    torch.testing.assert_close(incremental, full, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_ar_sample_draws_each_token_from_its_full_context():
    model = _model()
    evaluator = Evaluator(model, START, {})
    tokens, _ = ar_sample(evaluator, num_samples=6, seq_len=LENGTH - 1, seed=5, exclude=START)
    generator = torch.Generator().manual_seed(5)
    prefixed = torch.cat([torch.full((6, 1), START), tokens], dim=1)
    full = model(input_ids=prefixed[:, :-1]).logits
    expected = torch.stack(
        [draw_tokens(full[:, i], torch.rand(6, generator=generator, dtype=torch.float64), mask_id=START)
         for i in range(LENGTH - 1)], dim=1)
    assert torch.equal(tokens, expected)
    assert not (tokens == START).any()


def test_the_evaluator_stops_at_its_time_budget_and_validates_the_step_it_reached(tmp_path):
    """`trainer.max_minutes` bounds the AR model's training as it bounds the teacher's (the same-budget
    comparison of issue 18); stopped between validations, the last step is validated, so val_nll is real."""
    import math

    from fewstep.core.config import load_config
    from fewstep.evaluation.autoregressive import train_evaluator
    from fewstep.evaluation.config import EvaluatorRunConfig

    overrides = ["data.source=markov", "data.seq_len=16", "data.num_train=256", "data.num_val=64",
                 "data.markov.num_states=8", "data.markov.branching=3", "model.hidden_size=32", "model.num_layers=2",
                 "model.num_heads=2", "model.intermediate_size=64", "trainer.batch_size=16", "trainer.val_batches=2",
                 "trainer.progress=false", "logger.wandb.mode=disabled", f"out_dir={tmp_path / 'ar'}",
                 "trainer.max_steps=100000", "trainer.val_every=100000", "trainer.max_minutes=0.01"]
    summary = train_evaluator(load_config(EvaluatorRunConfig, None, overrides))
    assert 0 < summary["steps"] < 100000
    assert math.isfinite(summary["val_nll"])
