"""Token data as every run sees it: fixed-length sequences, a tokenizer with a mask token, a fingerprint.

Prompted data (`anagram`, `jsonl` with `data.prompted` or `data.messages_field`) has one example per
row: the prompt's tokens, then the response's, then EOS up to `seq_len` (as LLaDA's SFT pads; the EOS
fill belongs to the response). `TokenData.train_prompt_len` / `val_prompt_len` hold each row's prompt
length; the loader then yields `(tokens, prompt_len)` batches, and unprompted data plain token batches.
The sources that build it are in `sources.py`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "TokenData",
    "TokenDataset",
    "MASK_TOKEN",
    "fingerprint",
    "make_loader",
    "split_batch",
    "tokenizer_fingerprint",
]

MASK_TOKEN = "[MASK]"


@dataclass
class TokenData:
    """Everything a run needs from its data source."""

    train: torch.Tensor  # [N, seq_len] int64 token ids
    val: torch.Tensor  # [M, seq_len] int64 token ids
    tokenizer: Any  # transformers.PreTrainedTokenizerFast, with a mask token
    mask_id: int
    fingerprint: str  # hash of the source description and every token; saved with each run
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. bytes_per_token, entropy_rate
    task: Any = None  # an exact scorer where the truth is known (MarkovChain for `markov`, AnagramTask ...)
    train_prompt_len: torch.Tensor | None = None  # [N] int64 prompt length of each row; None = unprompted
    val_prompt_len: torch.Tensor | None = None  # [M] int64

    def __post_init__(self) -> None:
        if (self.train_prompt_len is None) != (self.val_prompt_len is None):
            raise ValueError("train_prompt_len and val_prompt_len are given together or not at all")
        for rows, lengths in ((self.train, self.train_prompt_len), (self.val, self.val_prompt_len)):
            if lengths is not None and (lengths.shape != rows.shape[:1] or lengths.dtype != torch.long):
                raise ValueError(f"prompt lengths must be int64 [{rows.shape[0]}], got {lengths.dtype} "
                                 f"{tuple(lengths.shape)}")

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def prompted(self) -> bool:
        return self.train_prompt_len is not None

    def describe(self) -> dict[str, Any]:
        described = {
            "fingerprint": self.fingerprint,
            "train_sequences": int(self.train.shape[0]),
            "val_sequences": int(self.val.shape[0]),
            "seq_len": int(self.train.shape[1]),
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            "prompted": self.prompted,
        }
        if self.prompted:
            response = self.train.shape[1] - self.train_prompt_len
            described.update(prompt_len_min=int(self.train_prompt_len.min()),
                             prompt_len_max=int(self.train_prompt_len.max()),
                             train_response_tokens=int(response.sum()))
        return {**described, **self.stats}


class TokenDataset(Dataset):
    """Rows of tokens; with `prompt_len`, each item is `(row, prompt length)`."""

    def __init__(self, tokens: torch.Tensor, prompt_len: torch.Tensor | None = None) -> None:
        if prompt_len is not None and prompt_len.shape != tokens.shape[:1]:
            raise ValueError(f"prompt_len {tuple(prompt_len.shape)} does not match {tokens.shape[0]} rows")
        self.tokens = tokens
        self.prompt_len = prompt_len

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.prompt_len is None:
            return self.tokens[index]
        return self.tokens[index], self.prompt_len[index]


def split_batch(batch: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(tokens, prompt_len or None)` from a batch of either kind the loaders yield."""
    if isinstance(batch, (tuple, list)):
        tokens, prompt_len = batch
        return tokens, prompt_len
    return batch, None


def make_loader(tokens: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, prompt_len: torch.Tensor | None = None) -> DataLoader:
    """Batches of rows, or of `(rows, prompt_len)` when `prompt_len` is given."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TokenDataset(tokens, prompt_len),
        batch_size=min(batch_size, len(tokens)),
        shuffle=shuffle,
        drop_last=shuffle,
        generator=generator,
        num_workers=num_workers,
    )


def fingerprint(description: dict[str, Any], *tensors: torch.Tensor) -> str:
    """A short stable hash of how the data was made and of the tokens themselves."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
    for tensor in tensors:
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's sorted token -> id map: two tokenizers decode alike only when it matches."""
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


