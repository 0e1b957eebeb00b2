"""The quality objective a learned schedule is optimised for, measured on samples.

On `markov`: the exact NLL per token of the samples under the true chain (invalid transitions are
charged heavily by its smoothing). Elsewhere: the model's own NELBO per token of its samples, a
bound on their negative log-likelihood under the many-step model the sampler approximates, which
penalises the incoherence of revealing dependent tokens together. Either way a penalty on the drop
of unigram entropy below the held-out data's keeps the search from buying quality with lost
diversity.
"""

from __future__ import annotations

from typing import Any

import torch

from fewstep.evaluation.metrics import ENTROPY, EXACT_NLL, TEACHER_NELBO
from fewstep.evaluation.quality import markov_quality, model_nelbo, unigram_entropy

__all__ = ["SampleObjective"]


class SampleObjective:
    """Lower is better: the quality loss of `tokens` plus `entropy_weight` x its entropy deficit."""

    def __init__(
        self,
        chain: Any = None,
        model: torch.nn.Module | None = None,
        reference_entropy: float | None = None,
        entropy_weight: float = 1.0,
        noise_schedule: str = "loglinear",
    ) -> None:
        if chain is None and model is None:
            raise ValueError("the objective needs an exact scorer (chain) or a model")
        self.chain = chain
        self.model = model
        self.reference_entropy = reference_entropy
        self.entropy_weight = entropy_weight
        self.noise_schedule = noise_schedule
        # the scored model's own NELBO is the quantity every table calls teacher_nelbo
        self.name = EXACT_NLL if chain is not None else TEACHER_NELBO

    def metrics(self, tokens: torch.Tensor) -> dict[str, float]:
        """The quality numbers of `tokens` (entropy always among them)."""
        if self.chain is not None:
            return markov_quality(self.chain, tokens)
        return {
            TEACHER_NELBO: model_nelbo(self.model, tokens, self.noise_schedule, repeats=2),
            ENTROPY: unigram_entropy(tokens),
        }

    def value(self, metrics: dict[str, float]) -> float:
        deficit = (
            0.0 if self.reference_entropy is None else max(0.0, self.reference_entropy - metrics[ENTROPY])
        )
        return metrics[self.name] + self.entropy_weight * deficit
