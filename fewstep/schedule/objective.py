"""The quality objective a learned schedule is optimised for, measured on samples.

On `markov`: the exact NLL per token of the samples under the true chain (invalid transitions are
charged heavily by its smoothing). Elsewhere: the model's own NELBO per token of its samples, a
bound on their negative log-likelihood under the many-step model the sampler approximates, which
penalises the incoherence of revealing dependent tokens together. Either way a penalty on the drop
of unigram entropy below the held-out data's keeps the search from buying quality with lost
diversity.

On a prompted model (`PromptSet`) the objective is task accuracy instead: 1 - the share of right answers
(a task's exact checker, or the rows' own answers), with the forward passes it took.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fewstep.data.tokens import TokenData
from fewstep.errors import ConfigError
from fewstep.evaluation.accuracy import (
    AccuracyResult,
    Checker,
    evaluate_accuracy,
    reference_answers,
    responses_correct,
)
from fewstep.evaluation.metrics import ENTROPY, EXACT_NLL, TEACHER_NELBO
from fewstep.evaluation.quality import markov_quality, model_nelbo, unigram_entropy
from fewstep.samplers.sampler import Sampler

__all__ = ["PromptSet", "SampleObjective"]


@dataclass
class PromptSet:
    """Prompts and how to judge their answers: row i's first `prompt_len[i]` tokens are prompt i."""

    prompts: torch.Tensor  # [N, width]
    prompt_len: torch.Tensor  # [N] int64
    tokenizer: Any
    check: Checker | None = None  # a task's exact checker on decoded text, or
    answers: list[str] | None = None  # one reference answer per prompt

    @classmethod
    def of(cls, data: TokenData, split: str = "train") -> PromptSet | None:
        """A split's prompts of prompted data (None for unconditional data), judged by the task's checker or
        else by the rows' own answers."""
        if not data.prompted:
            return None
        rows, lengths = (data.train, data.train_prompt_len) if split == "train" else (data.val, data.val_prompt_len)
        check = getattr(data.task, "check", None)
        answers = None if check is not None else reference_answers(data, len(rows), split)
        return cls(rows, lengths, data.tokenizer, check, answers)

    def __len__(self) -> int:
        return len(self.prompts)

    def window(self, start: int, count: int, what: str) -> PromptSet:
        """Prompts start .. start + count - 1; `what` names them in the error when there are too few."""
        if start + count > len(self):
            raise ConfigError(f"{what} needs prompts {start}..{start + count - 1}, but the set has {len(self)}; "
                              "lower the sample counts or raise data.num_val / data.num_train")
        return PromptSet(self.prompts[start:start + count], self.prompt_len[start:start + count], self.tokenizer,
                         self.check, None if self.answers is None else self.answers[start:start + count])

    def cycle(self, start: int, count: int) -> PromptSet:
        """`count` prompts from `start`, wrapping around the set."""
        index = (torch.arange(count) + start) % len(self)
        return PromptSet(self.prompts[index], self.prompt_len[index], self.tokenizer, self.check,
                         None if self.answers is None else [self.answers[i] for i in index.tolist()])

    def prompt_list(self) -> list[torch.Tensor]:
        """Each prompt's tokens, as the sampler's `prompt=` takes prompts of different lengths."""
        return [row[: int(n)] for row, n in zip(self.prompts, self.prompt_len)]

    def correct(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N] float: 1 where generated row i answers prompt i correctly."""
        return responses_correct(tokens, self.prompts, self.prompt_len, self.tokenizer, self.check, self.answers)

    def accuracy(self, model: torch.nn.Module, sampler: Sampler, steps: int, seq_len: int, seed: int,
                 batch_size: int) -> AccuracyResult:
        return evaluate_accuracy(model, sampler, self.prompts, self.prompt_len, steps, self.tokenizer,
                                 check=self.check, answers=self.answers, seq_len=seq_len, seed=seed,
                                 batch_size=batch_size)


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
