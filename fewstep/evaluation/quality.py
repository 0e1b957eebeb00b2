"""Sample quality: exact scores where the truth is known, and the sample entropy that goes beside them.

A quality number is never quoted alone: every report from here carries the unigram entropy of the
samples and the step count, since low-temperature sampling buys low NLL with lost diversity.
"""

from __future__ import annotations

from typing import Any

import torch

from fewstep.core.diffusion import forward_process, make_schedule, nelbo_per_position, sample_t
from fewstep.data.config import data_config
from fewstep.data.markov import MarkovChain
from fewstep.errors import RunError
from fewstep.evaluation.metrics import ENTROPY, EXACT_NLL, INVALID_RATE, TEACHER_NELBO
from fewstep.model.model_dir import load_model_dir
from fewstep.samplers.presets import sample_with_spec

__all__ = ["unigram_entropy", "markov_quality", "task_for", "sample_records", "sequence_records",
           "model_nelbo", "sample_quality"]


def unigram_entropy(tokens: torch.Tensor) -> float:
    """Mean over sequences of the entropy (nats) of each sequence's token histogram (as MDLM/SDTT report)."""
    tokens = tokens.to("cpu", torch.long)
    entropies = []
    for row in tokens:
        counts = torch.bincount(row).double()
        p = counts[counts > 0] / row.numel()
        entropies.append(float(-(p * p.log()).sum()))
    return sum(entropies) / max(len(entropies), 1)


def response_entropy(responses: list[list[int]], pad: int) -> float:
    """`unigram_entropy` of answers of different lengths, each filled to the longest with `pad` (the end
    token, as a generated row holds it); 0 for no answer."""
    responses = [r for r in responses if r]
    if not responses:
        return 0.0
    width = max(len(r) for r in responses)
    return unigram_entropy(torch.tensor([r + [pad] * (width - len(r)) for r in responses]))


def markov_quality(chain: Any, tokens: torch.Tensor) -> dict[str, float]:
    """Exact NLL per token, invalid-transition rate and unigram entropy of `tokens` under `chain`."""
    return {
        EXACT_NLL: float(chain.nll(tokens).mean()) / tokens.shape[1],
        INVALID_RATE: chain.invalid_rate(tokens),
        ENTROPY: unigram_entropy(tokens),
    }


def task_for(data: dict[str, Any] | None) -> Any:
    """The exact scorer for a model's data config (a MarkovChain for `markov`), else None."""
    if not data or data.get("source") != "markov":
        return None

    return MarkovChain.from_config(data_config(data).markov)


def sample_records(model_dir: str, steps: int, num_samples: int, seq_len: int | None = None, seed: int = 0,
                   temperature: float = 1.0, batch_size: int = 64, device: str | None = None,
                   trust_remote_code: bool = False) -> list[dict[str, Any]]:
    """Sample from a model directory; one dict per sequence with text, tokens and exact scores if known.
    `trust_remote_code`: the user's permission for a directory that ships its own modeling code."""

    if steps < 1:
        raise RunError("--steps must be at least 1")
    if num_samples < 1:
        raise RunError("--num-samples must be at least 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model_dir(model_dir, device=device, trust_remote_code=trust_remote_code)
    meta = loaded.meta
    seq_len = seq_len or int(meta.get("seq_len", 64))
    max_len = getattr(loaded.denoiser.backbone.config, "max_position_embeddings", None)
    if max_len is not None and seq_len > max_len:
        raise RunError(f"--seq-len {seq_len} is longer than the model's {max_len} positions")
    output = sample_with_spec("ancestral", loaded.denoiser, num_samples, seq_len, steps, seed=seed,
                              noise_schedule=meta.get("noise_schedule", "loglinear"), temperature=temperature,
                              batch_size=batch_size, device=device)
    return sequence_records(output.tokens, loaded.tokenizer, meta.get("data"), steps=steps, seed=seed)


def sequence_records(tokens: torch.Tensor, tokenizer: Any, data: dict[str, Any] | None,
                     **fields: Any) -> list[dict[str, Any]]:
    """One record per sampled sequence: its text and tokens, then `fields` (steps, seed, ...), then, where
    the data has an exact scorer (markov), the sequence's exact NLL per token and its invalid transitions."""
    chain = task_for(data)
    seq_len = tokens.shape[1]
    records = []
    for row in tokens:
        record: dict[str, Any] = {"text": tokenizer.decode(row.tolist()), "tokens": row.tolist(), **fields}
        if chain is not None:
            record[EXACT_NLL] = float(chain.nll(row.unsqueeze(0))[0]) / seq_len
            record["invalid_transitions"] = int(round(chain.invalid_rate(row.unsqueeze(0)) * (seq_len - 1)))
        records.append(record)
    return records


@torch.no_grad()
def model_nelbo(model: torch.nn.Module, tokens: torch.Tensor, schedule: str = "loglinear", repeats: int = 4,
                seed: int = 0, batch_size: int = 64) -> float:
    """A model's NELBO per token (nats) of `tokens`, averaged over `repeats` draws of t and masks."""

    noise = make_schedule(schedule)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(repeats):
        for chunk in tokens.split(batch_size):
            x0 = chunk.to(device)
            t = sample_t(len(x0), generator=generator, device=device)
            z = forward_process(x0, t, noise, model.mask_id, generator=generator)
            total += float(nelbo_per_position(model(z, t), x0, z, t, noise, model.mask_id).sum())
            count += x0.numel()
    return total / count


def sample_quality(tokens: torch.Tensor, data: Any, reference: torch.nn.Module | None = None,
                   schedule: str = "loglinear") -> dict[str, float]:
    """Exact scores on markov; otherwise the reference model's NELBO of the samples. Entropy always.
    (A prompted task's exact score is its accuracy: `fewstep.evaluation.accuracy`.)"""
    if data.task is not None and hasattr(data.task, "nll"):
        return markov_quality(data.task, tokens)
    out = {ENTROPY: unigram_entropy(tokens)}
    if reference is not None:
        out[TEACHER_NELBO] = model_nelbo(reference, tokens, schedule)
    return out
