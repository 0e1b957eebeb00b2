"""Token data for every source: fixed-length sequences, a tokenizer with a mask token, a fingerprint.

`build_data(cfg)` is the one entry point. `markov` is generated here; corpora (`stdlib`, `text`,
`jsonl`, `hf`) are read and tokenised in `corpus.py`, with a given tokenizer (a Hugging Face
teacher's own) when there is one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from fewstep.distill.config import DataConfig

__all__ = [
    "DataError",
    "TokenData",
    "TokenDataset",
    "MASK_TOKEN",
    "build_data",
    "fingerprint",
    "markov_tokenizer",
    "make_loader",
    "tokenizer_fingerprint",
]

MASK_TOKEN = "[MASK]"


class DataError(ValueError):
    """Data that cannot be used as given; the message says what is wrong and how to fix it."""


@dataclass
class TokenData:
    """Everything a run needs from its data source."""

    train: torch.Tensor  # [N, seq_len] int64 token ids
    val: torch.Tensor  # [M, seq_len] int64 token ids
    tokenizer: Any  # transformers.PreTrainedTokenizerFast, with a mask token
    mask_id: int
    fingerprint: str  # hash of the source description and every token; saved with each run
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. bytes_per_token, entropy_rate
    task: Any = None  # an exact scorer where the truth is known (MarkovChain for `markov`)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def describe(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "train_sequences": int(self.train.shape[0]),
            "val_sequences": int(self.val.shape[0]),
            "seq_len": int(self.train.shape[1]),
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            **self.stats,
        }


class TokenDataset(Dataset):
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tokens[index]


def make_loader(tokens: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TokenDataset(tokens),
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


def markov_tokenizer(num_states: int):
    """A word-level tokenizer over state names `s0 … s{S-1}` plus `[MASK]` (id S)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"s{i}": i for i in range(num_states)}
    vocab[MASK_TOKEN] = num_states
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=MASK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, mask_token=MASK_TOKEN)


def _build_markov(cfg: DataConfig) -> TokenData:
    from fewstep.distill.markov import MarkovChain

    chain = MarkovChain.from_config(cfg.markov)
    train = chain.sample(cfg.num_train, cfg.seq_len, seed=cfg.seed)
    val = chain.sample(cfg.num_val, cfg.seq_len, seed=cfg.seed + 1_000_003)
    tokenizer = markov_tokenizer(cfg.markov.num_states)
    stats = {
        "entropy_rate": chain.entropy_rate(),
        "data_entropy_per_token": chain.expected_nll(cfg.seq_len) / cfg.seq_len,
    }
    description = {"source": "markov", "markov": asdict(cfg.markov), "seq_len": cfg.seq_len,
                   "num_train": cfg.num_train, "num_val": cfg.num_val, "seed": cfg.seed}
    return TokenData(
        train=train,
        val=val,
        tokenizer=tokenizer,
        mask_id=cfg.markov.num_states,
        fingerprint=fingerprint(description, train, val),
        stats=stats,
        task=chain,
    )


def build_data(cfg: DataConfig, out_dir: str | Path | None = None, tokenizer: Any = None) -> TokenData:
    """Build the token data for `cfg`; the tokenizer is saved as `out_dir/tokenizer.json`.

    `tokenizer` (a transformers tokenizer with a mask token, e.g. a Hugging Face teacher's) tokenises
    a corpus in place of `data.tokenizer` or a trained one. A slow tokenizer has no tokenizer.json, so
    it is saved with `save_pretrained` to `out_dir/tokenizer/` instead.
    """
    if cfg.source == "markov":
        if tokenizer is not None:
            raise DataError("data.source=markov has its own vocabulary (its states), so it cannot be tokenised with "
                            "the teacher's tokenizer; distil a Hugging Face teacher on a corpus (data.source=text, "
                            "jsonl, hf or stdlib)")
        data = _build_markov(cfg)
    else:
        from fewstep.distill.corpus import build_corpus_data

        data = build_corpus_data(cfg, tokenizer=tokenizer)
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError(
            f"data.source={cfg.source} gave {len(data.train)} training and {len(data.val)} validation "
            f"sequences of length {cfg.seq_len}; provide more text or lower data.seq_len"
        )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        backend = getattr(data.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.save(str(out / "tokenizer.json"))
        else:
            data.tokenizer.save_pretrained(str(out / "tokenizer"))
    return data
