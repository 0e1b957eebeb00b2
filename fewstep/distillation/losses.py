"""Divergences between the teacher's target and the student's prediction, by name.

Each takes the target as log-probabilities and the student's logits, both [N, V] (one row per
masked position), and returns the mean over rows. Computed in float32 or float64.

- `kl_fwd`:   KL(teacher || student), mode-covering
- `kl_bwd`:   KL(student || teacher), mode-seeking; SDTT's best
- `jeffreys`: kl_fwd + kl_bwd
- `tvd`:      total variation, 1/2 sum |p - q|, on probabilities
- `mse`:      mean squared error between mean-centred logits (log-probabilities)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["DIVERGENCES", "divergence", "LOG_FLOOR"]

# A zero-probability teacher token would make the reverse KL infinite; it is charged at this
# log-probability instead (e^-30 ~ 1e-13, far below anything a softmax student assigns on purpose).
LOG_FLOOR = -30.0


def _prepare(target_logp: torch.Tensor, student_logits: torch.Tensor, dtype: torch.dtype):
    """Log-probabilities on the student's support (every id but the mask), teacher floored at LOG_FLOOR."""
    support = ~torch.isneginf(student_logits)  # NaN stays in, so a broken student shows as a NaN loss
    log_q = F.log_softmax(student_logits.to(dtype).masked_fill(~support, -torch.inf), dim=-1)
    log_p = target_logp.to(dtype).clamp_min(LOG_FLOOR).masked_fill(~support, -torch.inf)
    log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    # zeros off the support: -inf - -inf there would put NaN into the backward pass of torch.where
    zero = torch.zeros((), dtype=dtype, device=log_q.device)
    return torch.where(support, log_p, zero), torch.where(support, log_q, zero), support


def kl_fwd(log_p: torch.Tensor, log_q: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    return torch.where(support, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def kl_bwd(log_p: torch.Tensor, log_q: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    return torch.where(support, log_q.exp() * (log_q - log_p), 0.0).sum(-1)


def jeffreys(log_p: torch.Tensor, log_q: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    return kl_fwd(log_p, log_q, support) + kl_bwd(log_p, log_q, support)


def tvd(log_p: torch.Tensor, log_q: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.where(support, log_p.exp() - log_q.exp(), 0.0).abs().sum(-1)


def mse(log_p: torch.Tensor, log_q: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    count = support.sum(-1, keepdim=True)
    centred_p = log_p - log_p.sum(-1, keepdim=True) / count
    centred_q = log_q - log_q.sum(-1, keepdim=True) / count
    return torch.where(support, centred_p - centred_q, 0.0).pow(2).sum(-1) / count.squeeze(-1)


DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "kl_fwd": kl_fwd, "kl_bwd": kl_bwd, "jeffreys": jeffreys, "tvd": tvd, "mse": mse,
}  # the config checks names against its DIVERGENCE_NAMES, and a test that they are these


def divergence(name: str, target_logp: torch.Tensor, student_logits: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean divergence `name` over rows; rows are the masked positions only."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}")
    if target_logp.shape != student_logits.shape:
        raise ValueError(f"target {tuple(target_logp.shape)} and student {tuple(student_logits.shape)} differ")
    if target_logp.shape[0] == 0:
        return student_logits.sum() * 0.0
    return DIVERGENCES[name](*_prepare(target_logp, student_logits, dtype)).mean()
