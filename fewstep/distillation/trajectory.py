"""Trajectory distillation (after dParallel / d3LLM): learn from the teacher's own samples.

The teacher samples its trajectories once (cached on disk as it grows, so an interrupted run picks up
where it stopped). The student then learns the teacher's final tokens under complementary masks
(every token is predicted once per pair), plus a certainty-forcing term: the entropy of the
student's distribution at masked positions it already predicts right, so that it becomes
confident sooner and can reveal more tokens per step.

On prompts with many right answers (any ordering of a set, several phrasings), the teacher's one answer
is an arbitrary choice among them that a few-step student cannot learn to predict, so it mixes them.
With several teacher answers per prompt (`trajectory.references`), each step trains on the one the
student already finds likeliest in a single forward pass from the fully masked response: reference
selection, as Shao et al. (2022, "One Reference Is Not Enough") do it for non-autoregressive translation.
Where the task has an exact checker, `trajectory.verify` keeps only the answers it accepts (rejection
sampling): a student that is its own next teacher would otherwise learn its own mistakes, and reference
selection would prefer exactly the wrong answers it already finds likely.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.core.diffusion import NoiseSchedule, exclude_mask, forward_process, response_mask, sample_t
from fewstep.core.io import atomic_save, load_checkpoint
from fewstep.core.streams import NoiseSource
from fewstep.errors import CheckpointError
from fewstep.evaluation.accuracy import Checker, responses_correct
from fewstep.samplers.presets import sample_with_spec  # samplers build on distill, not the reverse

__all__ = ["ensure_trajectories", "keep_verified", "select_reference", "trajectory_loss"]

SAVE_EVERY_S = 60.0  # how often a growing trajectory cache is written to disk


def ensure_trajectories(teacher: nn.Module, path: Path, num: int, seq_len: int, steps: int, batch_size: int,
                        seed: int, mask_id: int, schedule: str, signature: dict[str, Any],
                        progress: bool = True, prompts: torch.Tensor | None = None,
                        prompt_len: torch.Tensor | None = None, spec: str = "ancestral",
                        temperature: float = 1.0, reuse: str | Path | None = None, references: int = 1
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's final tokens for `num` trajectories, [num, seq_len], generated once and cached, and
    each one's prompt length (None without prompts).

    With `prompts` [N, seq_len] and `prompt_len` [N] (training rows), trajectory i is the teacher's answer
    to prompt i mod N, drawn with the sampler `spec` at `temperature`: the prompt is kept, the response is
    the teacher's. With `references` R > 1, each of those prompts is answered R times (each answer its own
    noise) and the tokens are [num, R, seq_len], the lengths still [num].
    `signature` identifies the teacher and settings; a cache made with another is refused.
    Without a cache at `path`, the one at `reuse` (another run's, same signature) is the start: it is read,
    never written, and only the trajectories it lacks are drawn here.
    """
    if references > 1 and prompts is None:
        raise ValueError("several references per prompt need prompts")
    path = Path(path)
    total = num * references
    tokens = torch.empty(0, seq_len, dtype=torch.long)
    saved_at = time.monotonic()
    if path.exists():
        tokens = _cached(path, signature, "delete it or use another out_dir")
    elif reuse is not None:
        tokens = _cached(Path(reuse), signature, "drop trajectory.reuse or make the settings match")
    # answer i is to prompt (i // references) mod N: with one reference, answer i to prompt i mod N
    lengths = (None if prompt_len is None else
               prompt_len[torch.arange(total) // references % len(prompt_len)].to(torch.long))
    while len(tokens) < total:
        batch = min(batch_size, total - len(tokens))

        if prompts is None:
            out = sample_with_spec(spec, teacher, batch, seq_len, steps, seed=seed * 1_000_003 + len(tokens),
                                   noise_schedule=schedule, temperature=temperature)
        else:
            index = torch.arange(len(tokens), len(tokens) + batch)
            rows = [prompts[i // references % len(prompts), : int(lengths[i])] for i in index.tolist()]
            out = sample_with_spec(spec, teacher, batch, seq_len, steps, seed=seed, noise_schedule=schedule,
                                   temperature=temperature, prompt=rows, sample_ids=index)
        tokens = torch.cat([tokens, out.tokens])
        # rewriting the whole cache after every batch would cost time quadratic in its size: save once a
        # minute and at the end, so an interrupted run loses at most a minute of the teacher's sampling
        if len(tokens) >= total or time.monotonic() - saved_at >= SAVE_EVERY_S:
            payload = {"tokens": tokens, "signature": json.dumps(signature, default=str)}
            atomic_save(path, lambda tmp, payload=payload: torch.save(payload, tmp))
            saved_at = time.monotonic()
        if progress:
            print(f"\rteacher trajectories: {len(tokens)}/{total}", end="", flush=True)
    if progress and total:
        print()
    if references > 1:
        return tokens[:total].view(num, references, seq_len), lengths[::references]
    return tokens[:num], lengths


def _cached(path: Path, signature: dict[str, Any], fix: str) -> torch.Tensor:
    """The tokens of the trajectory cache at `path`, which must have been made with `signature`."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a trajectory cache (a run's trajectories.pt); {fix}")
    cached = load_checkpoint(path)  # weights_only; a damaged file is a CheckpointError that names it
    if not isinstance(cached, dict) or not {"signature", "tokens"} <= cached.keys():
        raise CheckpointError(f"{path} is not a trajectory cache (no signature/tokens); {fix}")
    saved = json.loads(cached["signature"])
    if saved != json.loads(json.dumps(signature, default=str)):
        raise CheckpointError(f"{path} holds trajectories made with other settings ({saved}); {fix}")
    return cached["tokens"]


def keep_verified(tokens: torch.Tensor, prompt_len: torch.Tensor, tokenizer: Any, check: Checker
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """The teacher answers `check` accepts: `tokens` [N, L] (or [N, R, L], R answers per prompt) and their
    prompt lengths [N], with the prompts whose answers are all rejected dropped. With R answers, a rejected one
    is replaced by an accepted answer to the same prompt, so reference selection only ever picks among right
    answers (a repeated answer does not change which is likeliest). Also returns the counts, for the log."""
    rows = tokens.reshape(-1, tokens.shape[-1])
    per_prompt = tokens.shape[1] if tokens.dim() == 3 else 1
    lengths = prompt_len.repeat_interleave(per_prompt)
    accepted = responses_correct(rows, rows, lengths, tokenizer, check=check).bool().view(len(tokens), per_prompt)
    kept = accepted.any(1)
    counts = {"answers": accepted.numel(), "accepted": int(accepted.sum()), "prompts": len(tokens),
              "prompts_kept": int(kept.sum())}
    if tokens.dim() == 2:
        return tokens[kept], prompt_len[kept], counts
    # each rejected answer takes the place of the prompt's first accepted one
    first = accepted.to(torch.int8).argmax(1, keepdim=True).expand_as(accepted)
    source = torch.where(accepted, torch.arange(per_prompt).expand_as(accepted), first)
    chosen = tokens.gather(1, source.unsqueeze(-1).expand_as(tokens))
    return chosen[kept], prompt_len[kept], counts


def select_reference(student: nn.Module, references: torch.Tensor, prompt_len: torch.Tensor, mask_id: int
                     ) -> torch.Tensor:
    """Of each prompt's teacher answers [B, R, seq_len], the one [B, seq_len] that `student` finds likeliest
    in one forward pass from the fully masked response (the prompt is the same in every answer)."""
    batch, _, seq_len = references.shape
    response = response_mask(prompt_len.to(references.device), seq_len)
    masked = torch.where(response, torch.full_like(references[:, 0], mask_id), references[:, 0])
    with torch.no_grad():
        t = torch.ones(batch, device=references.device)
        log_q = F.log_softmax(exclude_mask(student(masked, t).float(), mask_id), dim=-1)  # [B, L, V]
    scores = log_q.unsqueeze(1).expand(-1, references.shape[1], -1, -1).gather(-1, references.unsqueeze(-1))
    scores = (scores.squeeze(-1) * response.unsqueeze(1)).sum(-1)  # [B, R]: log q of each answer, response only
    return references[torch.arange(batch, device=references.device), scores.argmax(-1)]


def trajectory_loss(student: nn.Module, x_hat: torch.Tensor, schedule: NoiseSchedule, mask_id: int,
                    entropy_weight: float, generator: NoiseSource, prompt_len: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy to the teacher's tokens under a mask and its complement, plus certainty forcing; with
    `prompt_len`, both masks cover the response only (the prompt is context, never a target). `x_hat`
    [B, R, seq_len] holds R answers per prompt: each row learns the one `select_reference` picks."""
    if x_hat.dim() == 3:
        x_hat = select_reference(student, x_hat, prompt_len, mask_id)
    t = sample_t(x_hat.shape[0], antithetic=True, generator=generator, device=x_hat.device)
    first = forward_process(x_hat, t, schedule, mask_id, generator=generator, prompt_len=prompt_len)
    masked_first = first == mask_id
    if prompt_len is not None:
        masked_first |= ~response_mask(prompt_len.to(x_hat.device), x_hat.shape[1])  # the prompt stays
    second = torch.where(masked_first, x_hat, torch.full_like(x_hat, mask_id))
    z = torch.cat([first, second])
    target = torch.cat([x_hat, x_hat])
    logits = student(z, torch.cat([t, 1.0 - t]).float())
    masked = z == mask_id
    # SUBS on the masked rows only: the mask token is never a prediction
    logits_m, target_m = exclude_mask(logits[masked].float(), mask_id), target[masked]
    ce = F.cross_entropy(logits_m, target_m)
    log_q = F.log_softmax(logits_m, dim=-1)
    entropy = -(log_q.exp() * torch.where(torch.isfinite(log_q), log_q, 0.0)).sum(-1)
    right = logits_m.argmax(-1) == target_m
    certainty = (entropy * right).sum() / right.sum().clamp_min(1)
    loss = ce + entropy_weight * certainty
    return loss, {"ce": ce.detach(), "certainty_entropy": certainty.detach(),
                  "accuracy": right.float().mean().detach()}
