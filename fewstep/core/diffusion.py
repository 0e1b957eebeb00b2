"""Absorbing-state (mask) diffusion: noise schedules, the forward process, and MDLM's NELBO.

alpha(t) is the probability that a token is still unmasked at time t (alpha(0) = 1, alpha(1) = eps).
The continuous-time NELBO with the SUBS parametrisation (Sahoo et al. 2024) is

    E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{i masked in z_t} -log p_theta(x_i | z_t) ],

which for exact conditionals equals -log p(x) (it averages the chain rule over random orders).
With a prompt (`prompt_len`, one per sequence), the prompt's positions are never masked and never
counted: the same sum over the response's positions is -log p(response | prompt).

For the loglinear schedule (and, as eps -> 0, for any schedule) the integral over t can be taken
in closed form given the number n of masked tokens: the NELBO of a sequence of length L is

    L * E_{n ~ Uniform{1..L}} [ (1 / n) * sum_{i in a uniformly random n-subset} -log p_theta(x_i | rest) ],

the any-order autoregressive objective. `draw_masks(masking="exact_count")` estimates it that way:
it masks exactly n positions with weight L / n instead of each position independently with weight
1 / t, which removes the variance of how many positions a given t happens to mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fewstep.core.streams import BatchNoise, NoiseSource, uniform

__all__ = [
    "NoiseSchedule",
    "LogLinearSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "make_schedule",
    "sample_t",
    "forward_process",
    "nelbo_per_position",
    "masked_cross_entropy",
    "draw_masks",
    "MASKINGS",
    "response_mask",
    "subs_log_probs",
    "exclude_mask",
]


class NoiseSchedule:
    """alpha(t) on [0, 1] and its derivative; `weight(t)` is the NELBO weight -alpha'/(1 - alpha)."""

    name = "base"

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0.0 < eps < 1.0:
            raise ValueError("eps must be in (0, 1)")
        self.eps = eps

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return -self.dalpha(t) / (1.0 - self.alpha(t))

    def reveal_probability(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """P(a token masked at t is unmasked at s < t) = (alpha(s) - alpha(t)) / (1 - alpha(t))."""
        return ((self.alpha(s) - self.alpha(t)) / (1.0 - self.alpha(t))).clamp(0.0, 1.0)


class LogLinearSchedule(NoiseSchedule):
    """alpha(t) = 1 - (1 - eps) t: masked fraction linear in t (MDLM's default); weight = 1/t."""

    name = "loglinear"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -(1.0 - self.eps))


class LinearSchedule(NoiseSchedule):
    """Total noise sigma(t) linear in t: alpha(t) = exp(-t * sigma_max) = eps ** t."""

    name = "linear"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(t * math.log(self.eps))

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        return math.log(self.eps) * self.alpha(t)


class CosineSchedule(NoiseSchedule):
    """alpha(t) = eps + (1 - eps) cos(pi t / 2): few tokens masked early, many late."""

    name = "cosine"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.eps + (1.0 - self.eps) * torch.cos(0.5 * math.pi * t)

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        return -(1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)


_SCHEDULES = {cls.name: cls for cls in (LogLinearSchedule, LinearSchedule, CosineSchedule)}


def make_schedule(name: str, eps: float = 1e-3) -> NoiseSchedule:
    if name not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {', '.join(_SCHEDULES)}")
    return _SCHEDULES[name](eps)


def sample_t(batch: int, antithetic: bool = True, t_min: float = 1e-3, generator: NoiseSource = None,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """Diffusion times in [t_min, 1]; antithetic = one uniform offset, evenly spaced over the batch.

    The evenly spaced (low-discrepancy) draw keeps E[t] exact and cuts the loss variance. With a
    `BatchNoise` the spacing runs over the global batch, shared by every process.
    """
    if isinstance(generator, BatchNoise):
        u = generator.antithetic() if antithetic else generator.rand((batch,))
    else:
        noise_device = generator.device if generator is not None else "cpu"
        u = torch.rand(1 if antithetic else batch, generator=generator, device=noise_device, dtype=torch.float64)
        if antithetic:
            u = (u + torch.arange(batch, dtype=torch.float64, device=noise_device) / batch) % 1.0
    return (t_min + (1.0 - t_min) * u).to(device=device, dtype=torch.float32)


def response_mask(prompt_len: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[batch, seq_len] True at each sequence's response positions (at and after its prompt length)."""
    positions = torch.arange(seq_len, device=prompt_len.device)
    return positions.unsqueeze(0) >= prompt_len.unsqueeze(-1)


def forward_process(x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, mask_id: int,
                    generator: NoiseSource = None, prompt_len: torch.Tensor | None = None) -> torch.Tensor:
    """z_t: each token independently replaced by the mask with probability 1 - alpha(t); with
    `prompt_len` [batch], a sequence's first `prompt_len` tokens are never masked (the same draws)."""
    keep = schedule.alpha(t.to(torch.float64)).unsqueeze(-1)
    u = uniform(x0.shape, generator, x0.device)
    masked = u >= keep.to(x0.device)
    if prompt_len is not None:
        masked &= response_mask(prompt_len.to(x0.device), x0.shape[1])
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


def exclude_mask(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Logits with the mask token at -inf (out of place): the model never predicts the mask."""
    is_mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    is_mask[mask_id] = True
    return logits.masked_fill(is_mask, -math.inf)


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parametrisation: log-softmax with the mask excluded; revealed tokens are copied through."""
    log_probs = F.log_softmax(exclude_mask(logits, mask_id), dim=-1)
    revealed = z != mask_id
    copy = torch.full_like(log_probs, -math.inf)
    copy.scatter_(-1, z.unsqueeze(-1), 0.0)
    return torch.where(revealed.unsqueeze(-1), copy, log_probs)


def masked_cross_entropy(logits: torch.Tensor, x0: torch.Tensor, z: torch.Tensor, mask_id: int,
                         prompt_len: torch.Tensor | None = None) -> torch.Tensor:
    """-log p_theta(x0_i | z) at the masked positions of `z`, 0 elsewhere (and on the prompt's positions
    when `prompt_len` is given, whatever `z` holds there); [batch, seq_len], at least float32."""
    logits = exclude_mask(logits if logits.dtype == torch.float64 else logits.float(), mask_id)
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
    counted = z == mask_id
    if prompt_len is not None:
        counted &= response_mask(prompt_len.to(z.device), z.shape[1])
    return torch.where(counted, ce, torch.zeros_like(ce))


def nelbo_per_position(logits: torch.Tensor, x0: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
                       schedule: NoiseSchedule, mask_id: int, prompt_len: torch.Tensor | None = None) -> torch.Tensor:
    """The NELBO integrand per position, [batch, seq_len]: weight(t) * CE on masked positions, 0 elsewhere
    (and 0 on the prompt's positions when `prompt_len` is given, whatever `z` holds there).

    Its sum over positions, averaged over t, is the NELBO of each sequence (of its response) in nats.
    """
    ce = masked_cross_entropy(logits, x0, z, mask_id, prompt_len)
    return schedule.weight(t.to(torch.float64)).to(ce.dtype).unsqueeze(-1) * ce


MASKINGS = ("independent", "exact_count")


def draw_masks(x0: torch.Tensor, schedule: NoiseSchedule, mask_id: int, masking: str = "independent",
               antithetic: bool = True, generator: NoiseSource = None, prompt_len: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One draw of the NELBO's noise for a batch: (z, t, weight), weight [batch] float64, so that
    `weight[:, None] * masked_cross_entropy(model(z, t), x0, z, mask_id)` summed over positions is an
    unbiased estimate of each sequence's NELBO (of its response, with `prompt_len`).

    "independent" (MDLM): t from `sample_t`, each position masked with probability 1 - alpha(t), weight
    -alpha'(t) / (1 - alpha(t)). "exact_count": n ~ Uniform{1..L} (L = the response's length; evenly
    spaced over the batch when `antithetic`), exactly n positions masked, uniformly at random, weight
    L / n, and t = n / L (the loglinear time with that masked fraction, for time-conditioned models).
    """
    if masking == "independent":
        t = sample_t(x0.shape[0], antithetic, generator=generator, device=x0.device)
        z = forward_process(x0, t, schedule, mask_id, generator=generator, prompt_len=prompt_len)
        return z, t, schedule.weight(t.to(torch.float64))
    if masking != "exact_count":
        raise ValueError(f"unknown masking {masking!r}; choose one of {', '.join(MASKINGS)}")
    batch, seq_len = x0.shape
    u = sample_t(batch, antithetic, t_min=0.0, generator=generator, device=x0.device).to(torch.float64)
    if prompt_len is None:
        length = torch.full((batch,), seq_len, device=x0.device, dtype=torch.long)
        response = torch.ones_like(x0, dtype=torch.bool)
    else:
        length = seq_len - prompt_len.to(x0.device).long()
        response = response_mask(prompt_len.to(x0.device), seq_len)
    span = length.clamp_min(1).to(torch.float64)  # an empty response: nothing can be masked, weight 1
    n = torch.minimum((u * length).floor() + 1, span)  # u in [0, 1): n in 1..L
    keys = uniform(x0.shape, generator, x0.device).masked_fill(~response, 2.0)  # the prompt ranks last
    rank = keys.argsort(dim=-1).argsort(dim=-1)
    masked = (rank < n.unsqueeze(-1)) & response
    z = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return z, (n / span).to(torch.float32), span / n
