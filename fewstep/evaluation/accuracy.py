"""Task accuracy of a model answering prompts, against what the answers cost in forward passes.

`evaluate_accuracy` generates a response to each prompt with a `fewstep.samplers.Sampler` (prompts
of one call share a length, so rows are grouped by prompt length), decodes the response up to its
first EOS, checks it (a task's exact `check(prompt_text, response_text)`, or a reference answer
compared after whitespace normalisation) and reports accuracy, tokens per forward pass and response
tokens per second. Only response positions are counted, never the prompt: `tokens_per_forward` is
generated response positions (the EOS fill included: the sampler decides those too) per forward
pass of a sequence, `answer_tokens_per_forward` the tokens before the first EOS per forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fewstep.data.tokens import TokenData
from fewstep.errors import DataError
from fewstep.samplers.presets import sampler_from_spec
from fewstep.samplers.sampler import Sampler

__all__ = ["AccuracyResult", "evaluate_accuracy", "reference_answers", "response_ids", "responses_correct",
           "task_accuracy"]

Checker = Callable[[str, str], bool]


@dataclass
class AccuracyResult:
    accuracy: float
    correct: int
    num_prompts: int
    steps: int  # the step budget
    nfe: float  # forward passes per sequence, averaged over the prompts
    response_tokens: int  # response positions generated, over all prompts (EOS fill included)
    answer_tokens: int  # response tokens before the first EOS, over all prompts
    tokens_per_forward: float  # response_tokens / (forward passes summed over sequences)
    answer_tokens_per_forward: float
    tokens_per_s: float  # response tokens per second of sampling wall time
    seconds: float
    responses: list[list[int]] = field(default_factory=list, repr=False)  # each prompt's response, before EOS

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "responses"}


def response_ids(row: torch.Tensor, prompt_len: int, eos_id: int) -> list[int]:
    """The response's tokens in a generated row: after the prompt, up to (not including) the first EOS."""
    response = row[prompt_len:].tolist()
    return response[: response.index(eos_id)] if eos_id in response else response


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _judge(tokenizer: Any, prompt: torch.Tensor, response: list[int], check: Checker | None,
           answer: str | None) -> bool:
    """Whether `response` (token ids before the first EOS) answers `prompt` (token ids) correctly."""
    text = tokenizer.decode(response, skip_special_tokens=True)
    if check is not None:
        return bool(check(tokenizer.decode(prompt.tolist(), skip_special_tokens=True), text))
    return _normalise(text) == _normalise(answer)


def responses_correct(tokens: torch.Tensor, prompts: torch.Tensor, prompt_len: torch.Tensor, tokenizer: Any,
                      check: Checker | None = None, answers: Sequence[str] | None = None) -> torch.Tensor:
    """1.0 where generated row `tokens[i]` answers prompt `i` (the first `prompt_len[i]` tokens of
    `prompts[i]`) correctly, else 0.0: the per-answer verdict `evaluate_accuracy` counts, as a reward."""
    eos_id = tokenizer.eos_token_id
    verdicts = [
        _judge(tokenizer, prompts[i, : int(prompt_len[i])], response_ids(tokens[i], int(prompt_len[i]), eos_id),
               check, None if answers is None else answers[i])
        for i in range(len(tokens))
    ]
    return torch.tensor(verdicts, dtype=torch.float32)


def reference_answers(data: Any, count: int, split: str = "val") -> list[str]:
    """The first `count` rows' own responses (decoded up to their first EOS) of a split (`val` or `train`):
    the answers of a prompt set without a checker (prompted jsonl)."""
    rows, lengths = (data.val, data.val_prompt_len) if split == "val" else (data.train, data.train_prompt_len)
    eos = data.tokenizer.eos_token_id
    return [data.tokenizer.decode(response_ids(rows[i], int(lengths[i]), eos), skip_special_tokens=True)
            for i in range(count)]


def evaluate_accuracy(model: nn.Module, sampler: Sampler, prompts: torch.Tensor, prompt_len: torch.Tensor,
                      steps: int, tokenizer: Any, check: Checker | None = None,
                      answers: Sequence[str] | None = None, seq_len: int | None = None, seed: int = 0,
                      batch_size: int | None = None, device: str | torch.device | None = None) -> AccuracyResult:
    """Accuracy of `model` answering each prompt with `sampler` in `steps` steps.

    `prompts` [N, >= max prompt length]: rows whose first `prompt_len[i]` tokens are prompt `i` (data
    rows: whatever follows the prompt is ignored); responses fill positions up to `seq_len` (default
    the rows' width). Give `check` (a task's exact checker on decoded text) or `answers` (one reference
    per prompt, compared after whitespace normalisation).
    """
    if (check is None) == (answers is None):
        raise DataError("give exactly one of check (a task's checker) or answers (one reference per prompt)")
    if answers is not None and len(answers) != len(prompts):
        raise DataError(f"{len(answers)} answers for {len(prompts)} prompts; give one answer per prompt")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise DataError("the tokenizer has no eos_token, so a response has no end to decode up to")
    seq_len = seq_len or prompts.shape[1]
    prompt_len = prompt_len.to(torch.long).cpu()
    if len(prompt_len) != len(prompts) or bool((prompt_len >= seq_len).any()) or bool((prompt_len < 1).any()):
        raise DataError(f"prompt lengths must be one per prompt, each in [1, seq_len={seq_len}); got "
                        f"{len(prompt_len)} in [{int(prompt_len.min())}, {int(prompt_len.max())}]")
    correct = answer_tokens = response_tokens = 0
    responses: list[list[int]] = [[] for _ in range(len(prompts))]
    forward_sequences = 0.0  # forward passes summed over sequences
    seconds = 0.0
    for length in torch.unique(prompt_len).tolist():  # the sampler takes one prompt length per call
        rows = (prompt_len == length).nonzero().squeeze(1)
        group = prompts[rows, :length]
        out = sampler.generate(model, len(rows), seq_len, steps, prompt=group, seed=seed + length,
                               batch_size=batch_size, device=device)
        seconds += out.wall_time
        forward_sequences += out.nfe_per_sequence * len(rows)
        response_tokens += (seq_len - length) * len(rows)
        for index, generated in zip(rows.tolist(), out.tokens):
            ids = response_ids(generated, length, eos_id)
            responses[index] = ids
            answer_tokens += len(ids)
            correct += _judge(tokenizer, prompts[index, :length], ids, check,
                              None if answers is None else answers[index])
    total = len(prompts)
    return AccuracyResult(
        accuracy=correct / total,
        correct=correct,
        num_prompts=total,
        steps=steps,
        nfe=forward_sequences / total,
        response_tokens=response_tokens,
        answer_tokens=answer_tokens,
        tokens_per_forward=response_tokens / max(forward_sequences, 1e-9),
        answer_tokens_per_forward=answer_tokens / max(forward_sequences, 1e-9),
        tokens_per_s=response_tokens / max(seconds, 1e-9),
        seconds=seconds,
        responses=responses,
    )


def task_accuracy(model: nn.Module, data: TokenData, spec: str = "llada", steps: int = 64, temperature: float = 0.0,
                  num_prompts: int | None = None, seed: int = 0, meta: dict[str, Any] | None = None,
                  batch_size: int | None = None, device: str | torch.device | None = None) -> AccuracyResult:
    """Accuracy on the validation prompts of a task with a checker (`data.task.check`), with a sampler spec."""
    checker = getattr(data.task, "check", None)
    if data.val_prompt_len is None or checker is None:
        raise DataError("task accuracy needs prompted data whose task has a checker (e.g. data.source=anagram); "
                        "for other prompt sets call evaluate_accuracy with answers=")
    count = len(data.val) if num_prompts is None else min(num_prompts, len(data.val))
    sampler = sampler_from_spec(spec, steps, meta, temperature=temperature)
    return evaluate_accuracy(model, sampler, data.val[:count], data.val_prompt_len[:count], steps, data.tokenizer,
                             check=checker, seed=seed, batch_size=batch_size, device=device)
