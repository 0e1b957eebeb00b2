"""Divergences: zero for equal distributions, positive otherwise, equal to hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fewstep.distillation.losses import DIVERGENCES, divergence

P = [0.5, 0.3, 0.2]
Q = [0.2, 0.2, 0.6]


def _as_inputs(p, q):
    """Teacher log-probs and student logits over [3 tokens + the mask], mask excluded (-inf)."""
    log_p = torch.tensor([[*map(math.log, p), -math.inf]], dtype=torch.float64)
    logits = torch.tensor([[*map(math.log, q), -math.inf]], dtype=torch.float64) + 1.7  # logits: any shift
    return log_p, logits


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_zero_for_equal_positive_otherwise(name):
    log_p, logits = _as_inputs(P, P)
    assert abs(divergence(name, log_p, logits, torch.float64).item()) < 1e-12
    log_p, logits = _as_inputs(P, Q)
    assert divergence(name, log_p, logits, torch.float64).item() > 1e-3


def test_hand_computed_values():
    log_p, logits = _as_inputs(P, Q)
    kl_pq = sum(p * math.log(p / q) for p, q in zip(P, Q))
    kl_qp = sum(q * math.log(q / p) for p, q in zip(P, Q))
    expected = {"kl_fwd": kl_pq, "kl_bwd": kl_qp, "jeffreys": kl_pq + kl_qp,
                "tvd": 0.5 * sum(abs(p - q) for p, q in zip(P, Q))}
    lp, lq = [math.log(p) for p in P], [math.log(q) for q in Q]
    cp = [v - sum(lp) / 3 for v in lp]
    cq = [v - sum(lq) / 3 for v in lq]
    expected["mse"] = sum((a - b) ** 2 for a, b in zip(cp, cq)) / 3
    for name, value in expected.items():
        assert divergence(name, log_p, logits, torch.float64).item() == pytest.approx(value, rel=1e-9), name
    assert expected["tvd"] == pytest.approx(0.4)  # tvd works on probabilities: 1/2 (0.3 + 0.1 + 0.4)


def test_mean_over_rows_float32_and_gradients():
    torch.manual_seed(0)
    log_p = torch.log_softmax(torch.randn(6, 9), -1)
    logits = torch.randn(6, 9, requires_grad=True)
    for name in DIVERGENCES:
        value = divergence(name, log_p, logits)
        rows = torch.stack([divergence(name, log_p[i: i + 1], logits[i: i + 1]) for i in range(6)])
        assert torch.allclose(value, rows.mean(), atol=1e-6)
        value.backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


def test_zero_probability_teacher_tokens_and_a_nan_student():
    log_p = torch.tensor([[0.0, -math.inf, -math.inf]])  # a one-hot teacher (e.g. the exact oracle)
    logits = torch.tensor([[2.0, 0.0, -math.inf]], requires_grad=True)
    value = divergence("kl_bwd", log_p, logits)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all() and value > 1
    nan = torch.tensor([[math.nan, 0.0, -math.inf]])
    assert torch.isnan(divergence("kl_fwd", log_p, nan))  # a broken student is never hidden


def test_unknown_divergence_and_shape_errors():
    with pytest.raises(ValueError, match="kl_bwd"):
        divergence("kl", torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="differ"):
        divergence("tvd", torch.zeros(1, 3), torch.zeros(1, 4))


def test_the_config_knows_every_divergence_by_name():
    from fewstep.distillation.config import DIVERGENCE_NAMES
    from fewstep.distillation.losses import DIVERGENCES

    assert tuple(DIVERGENCES) == DIVERGENCE_NAMES
