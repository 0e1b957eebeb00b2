"""Token data for every source: fixed-length sequences, a tokenizer with a mask token, a fingerprint.

`build_data(cfg)` is the one entry point. `markov` and the prompted task `anagram` (`tasks.py`) are
generated here; corpora (`stdlib`, `text`, `jsonl`, `hf`) are read and tokenised in `corpus.py`, with
a given tokenizer (a Hugging Face teacher's own) when there is one.

Prompted data (`anagram`, `jsonl` with `data.prompted` or `data.messages_field`) has one example per
row: the prompt's tokens, then the response's, then EOS up to `seq_len` (as LLaDA's SFT pads; the EOS
fill belongs to the response). `TokenData.train_prompt_len` / `val_prompt_len` hold each row's prompt
length; the loader then yields `(tokens, prompt_len)` batches, and unprompted data plain token batches.
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
from fewstep.distill.tasks import AnagramTask

__all__ = [
    "DataError",
    "TokenData",
    "TokenDataset",
    "MASK_TOKEN",
    "build_data",
    "fingerprint",
    "markov_tokenizer",
    "make_loader",
    "split_batch",
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


def _build_anagram(cfg: DataConfig) -> TokenData:
    task = AnagramTask(cfg.anagram)
    split = {}
    for name, count, seed, val in (("train", cfg.num_train, cfg.seed, False),
                                   ("val", cfg.num_val, cfg.seed + 1_000_003, True)):
        examples = task.examples(count, seed, val=val, val_fraction=cfg.val_fraction)
        if len(examples) < count:
            raise DataError(f"data.source=anagram found {len(examples)} of data.num_{name}={count} examples on the "
                            f"{name} side of the split: too few letter sets (alphabet {cfg.anagram.alphabet}, "
                            f"{cfg.anagram.min_letters}-{cfg.anagram.max_letters} letters) for data.val_fraction="
                            f"{cfg.val_fraction}; raise data.anagram.alphabet or change data.val_fraction")
        split[name] = task.rows(examples, cfg.seq_len)
    (train, train_plen), (val, val_plen) = split["train"], split["val"]
    response_tokens = (cfg.seq_len - val_plen).sum()
    entropy = sum(task.entropy(task.answer_length(int(p))) for p in val_plen)
    stats = {
        "source": "anagram",
        # exact: the NELBO's optimum per response token (log k! nats per prompt over its response positions)
        "data_entropy_per_token": entropy / int(response_tokens),
    }
    description = {"source": "anagram", **task.describe(), "seq_len": cfg.seq_len, "num_train": cfg.num_train,
                   "num_val": cfg.num_val, "seed": cfg.seed, "val_fraction": cfg.val_fraction}
    return TokenData(train=train, val=val, tokenizer=task.tokenizer, mask_id=task.mask_id,
                     fingerprint=fingerprint(description, train, val, train_plen, val_plen), stats=stats, task=task,
                     train_prompt_len=train_plen, val_prompt_len=val_plen)


def build_data(cfg: DataConfig, out_dir: str | Path | None = None, tokenizer: Any = None) -> TokenData:
    """Build the token data for `cfg`; the tokenizer is saved as `out_dir/tokenizer.json`.

    `tokenizer` (a transformers tokenizer with a mask token, e.g. a Hugging Face teacher's) tokenises
    a corpus in place of `data.tokenizer` or a trained one. A slow tokenizer has no tokenizer.json, so
    it is saved with `save_pretrained` to `out_dir/tokenizer/` instead.
    """
    if cfg.source in ("markov", "anagram"):
        if tokenizer is not None:
            raise DataError(f"data.source={cfg.source} has its own vocabulary, so it cannot be tokenised with "
                            "the teacher's tokenizer; distil a Hugging Face teacher on a corpus (data.source=text, "
                            "jsonl, hf or stdlib)")
        data = _build_markov(cfg) if cfg.source == "markov" else _build_anagram(cfg)
    elif cfg.is_prompted:  # jsonl prompt/response pairs or chat messages
        from fewstep.distill.prompted import build_prompted_data

        data = build_prompted_data(cfg, tokenizer=tokenizer)
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
