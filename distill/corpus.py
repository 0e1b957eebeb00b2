"""Text corpora as token data: `stdlib`, `text`, `jsonl` and `hf` sources.

Documents are split deterministically by a hash of their text (adding or reordering documents moves
no other document between train and validation), tokenised with a given tokenizer or a byte-level
BPE trained here on the training documents only, then packed as `[BOS] doc [EOS] ...` and cut into
rows of exactly `seq_len` tokens.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import torch

from fewstep.distill.config import DataConfig
from fewstep.distill.data import MASK_TOKEN, DataError, TokenData, fingerprint

__all__ = ["load_documents", "split_documents", "train_tokenizer", "load_tokenizer", "pack", "build_corpus_data",
           "SPECIALS"]

SPECIALS = ["[PAD]", "[BOS]", "[EOS]", MASK_TOKEN]
_TEST_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def _capped(documents, max_bytes: int) -> list[str]:
    out, used = [], 0
    for doc in documents:
        if not doc.strip():
            continue
        size = len(doc.encode("utf-8"))
        if max_bytes and used + size > max_bytes:
            if not out:  # a single document larger than the cap: keep its head
                out.append(doc.encode("utf-8")[:max_bytes].decode("utf-8", "ignore"))
            break
        out.append(doc)
        used += size
    return out


def _stdlib_documents(max_bytes: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not (_TEST_DIRS & set(p.relative_to(root).parts[:-1])) and not p.name.startswith("test_"))

    def read():
        for path in files:
            try:
                yield path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue

    return _capped(read(), max_bytes)


def _file(cfg: DataConfig) -> Path:
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; give an existing {cfg.source} file")
    if path.is_dir():
        raise DataError(f"data.path {path} is a directory; give a {cfg.source} file")
    return path


def _text_documents(cfg: DataConfig) -> list[str]:
    text = _file(cfg).read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"data.path {cfg.path} is empty (or only whitespace); give a file with text in it")
    paragraphs = [p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    # blank-line separated paragraphs when the file has them, else one document per line
    documents = paragraphs if len(paragraphs) > 1 else [line for line in text.splitlines() if line.strip()]
    return _capped(documents, cfg.max_bytes)


def _jsonl_documents(cfg: DataConfig) -> list[str]:
    path = _file(cfg)
    documents = []

    def read():
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)[cfg.text_field]
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number} is not valid JSON ({error.msg})") from error
                except (KeyError, TypeError) as error:
                    raise DataError(f"{path}:{number} has no field {cfg.text_field!r}; set data.text_field") from error
                yield str(value)

    documents = _capped(read(), cfg.max_bytes)
    if not documents:
        raise DataError(f"data.path {path} holds no documents in field {cfg.text_field!r}")
    return documents


def _hf_documents(cfg: DataConfig) -> list[str]:
    try:
        import datasets
    except ImportError as error:
        raise DataError("data.source=hf needs the `datasets` package: pip install 'fewstep[hf]'") from error
    try:
        dataset = datasets.load_dataset(cfg.path, cfg.hf_config, split=cfg.hf_split)
    except Exception as error:  # network, missing dataset, bad config: all reported the same way
        raise DataError(f"cannot load Hugging Face dataset {cfg.path!r}: {error}") from error
    if cfg.text_field not in dataset.column_names:
        raise DataError(f"dataset {cfg.path!r} has no field {cfg.text_field!r}; it has {dataset.column_names}")
    return _capped((row[cfg.text_field] for row in dataset), cfg.max_bytes)


def load_documents(cfg: DataConfig) -> list[str]:
    """The documents of a corpus source, capped at `data.max_bytes` (0 = no cap)."""
    readers = {"stdlib": lambda: _stdlib_documents(cfg.max_bytes), "text": lambda: _text_documents(cfg),
               "jsonl": lambda: _jsonl_documents(cfg), "hf": lambda: _hf_documents(cfg)}
    documents = readers[cfg.source]()
    if not documents:
        raise DataError(f"data.source={cfg.source} gave no documents")
    return documents


def split_documents(documents: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Train/validation by a stable hash of each document (at least one of each when possible)."""

    def bucket(doc: str) -> float:
        return int.from_bytes(hashlib.sha1(doc.encode("utf-8")).digest()[:8], "big") / 2**64

    train = [d for d in documents if bucket(d) >= val_fraction]
    val = [d for d in documents if bucket(d) < val_fraction]
    if not val and len(documents) >= 2:
        lowest = min(train, key=bucket)
        train.remove(lowest)
        val.append(lowest)
    return train, val


def _wrap(core):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   mask_token=MASK_TOKEN)


def train_tokenizer(documents: list[str], vocab_size: int):
    """A byte-level BPE trained on `documents` (deterministic), with [PAD] [BOS] [EOS] [MASK] first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(documents, trainer=trainer)
    return _wrap(core)


def load_tokenizer(path: str | Path):
    """A `tokenizer.json` (or a directory holding one) that has the mask token."""
    from tokenizers import Tokenizer

    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"data.tokenizer {path} has no tokenizer.json")
    core = Tokenizer.from_file(str(file))
    if core.token_to_id(MASK_TOKEN) is None:
        raise DataError(f"the tokenizer {file} has no {MASK_TOKEN} token; masked diffusion needs one: add it as a "
                        "special token (tokenizer.add_special_tokens(['[MASK]'])) and save the tokenizer again")
    from transformers import PreTrainedTokenizerFast

    specials = {name: token for name, token in (("pad_token", "[PAD]"), ("bos_token", "[BOS]"),
                                                ("eos_token", "[EOS]")) if core.token_to_id(token) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=core, mask_token=MASK_TOKEN, **specials)


def pack(documents: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """`[BOS] doc [EOS]` for every document, concatenated and cut into rows of `seq_len` (tail dropped)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(documents, add_special_tokens=False):
        stream.extend(([bos] if bos is not None else []) + encoding.ids + ([eos] if eos is not None else []))
    rows = len(stream) // seq_len
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def build_corpus_data(cfg: DataConfig) -> TokenData:
    """Token data for a corpus source (the `data.build_data` entry point calls this)."""
    documents = load_documents(cfg)
    train_docs, val_docs = split_documents(documents, cfg.val_fraction)
    if not train_docs or not val_docs:
        raise DataError(f"{len(documents)} document(s) cannot be split into training and validation; give more text")
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else train_tokenizer(train_docs, cfg.vocab_size)
    train, val = pack(train_docs, tokenizer, cfg.seq_len), pack(val_docs, tokenizer, cfg.seq_len)
    if len(train) == 0 or len(val) == 0:
        total = len(train) * cfg.seq_len + len(val) * cfg.seq_len
        raise DataError(f"too little text: {len(train)} training and {len(val)} validation rows of data.seq_len="
                        f"{cfg.seq_len} (about {total} tokens packed); give more text or a smaller data.seq_len")
    val_bytes = sum(len(d.encode("utf-8")) for d in val_docs)
    val_tokens = sum(len(e.ids) + 2 for e in tokenizer.backend_tokenizer.encode_batch(val_docs,
                                                                                     add_special_tokens=False))
    vocab_hash = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]
    description = {"source": cfg.source, "path": str(Path(cfg.path).resolve()) if cfg.path else None,
                   "text_field": cfg.text_field, "seq_len": cfg.seq_len, "vocab_size": cfg.vocab_size,
                   "max_bytes": cfg.max_bytes, "val_fraction": cfg.val_fraction, "tokenizer": vocab_hash}
    stats = {"source": cfg.source, "num_documents": len(documents), "num_train_documents": len(train_docs),
             "num_val_documents": len(val_docs), "corpus_bytes": sum(len(d.encode("utf-8")) for d in documents),
             "bytes_per_token": val_bytes / max(val_tokens, 1)}
    return TokenData(train=train, val=val, tokenizer=tokenizer, mask_id=tokenizer.mask_token_id,
                     fingerprint=fingerprint(description, train, val), stats=stats)
