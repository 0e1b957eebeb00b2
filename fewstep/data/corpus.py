"""Text corpora as token data: the `stdlib`, `text`, `jsonl` and `hf` sources.

Documents are split by a hash of their text (adding or reordering documents moves no other
document between train and validation), tokenised with a given tokenizer (`data.tokenizer`, or a
tokenizer object such as a Hugging Face teacher's: its mask id is its `mask_token_id`, however the
token is spelled) or with a byte-level BPE trained here on the training documents only, packed as
`[BOS] doc [EOS] [BOS] doc [EOS] ...` and cut into rows of exactly `seq_len` tokens (the tail is
dropped). `data.max_bytes` keeps whole documents in order and stops before the first one that would
pass the cap (only a first document larger than the whole cap is cut), so a document's split never
depends on the cap.

What counts as a document:
- `stdlib`: one `*.py` file of the interpreter's standard library (no tests, no installed packages).
- `text`: a paragraph when the file has blank-line separated paragraphs, else a line.
- `jsonl`: the `data.text_field` string of each line's JSON object.
- `hf`: the `data.text_field` string of each row of a Hugging Face dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from fewstep.data.config import DataConfig
from fewstep.data.tokens import MASK_TOKEN, TokenData, fingerprint, tokenizer_fingerprint
from fewstep.errors import DataError

__all__ = [
    "SPECIALS",
    "build_corpus_data",
    "jsonl_values",
    "load_documents",
    "load_tokenizer",
    "pack",
    "split_documents",
    "stdlib_files",
    "token_stream",
    "train_tokenizer",
    "encode_texts",
    "validation_flags",
]

SPECIALS = ("[PAD]", "[BOS]", "[EOS]", MASK_TOKEN)  # ids 0..3 of a trained tokenizer, in this order
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
JSONL_SLACK = 1 << 20  # bytes a jsonl line may hold beyond data.max_bytes: other fields, JSON escapes
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t\f\v]*\n)+")  # one or more blank (or whitespace-only) lines


# ------------------------------------------------------------------------------------------ reading
def _capped(documents: Iterable[str], max_bytes: int) -> list[str]:
    """Non-blank documents in order until the next one would pass `max_bytes` (0 = no cap)."""
    out: list[str] = []
    used = 0
    for doc in documents:
        if not doc.strip():
            continue
        size = len(doc.encode("utf-8"))
        if max_bytes and used + size > max_bytes:
            if not out:  # a first document larger than the whole cap: keep its head
                out.append(doc.encode("utf-8")[:max_bytes].decode("utf-8", "ignore"))
            break
        out.append(doc)
        used += size
    return out


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The standard library's `*.py` files sorted by relative path, without tests or installed packages."""
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for directory, subdirs, names in os.walk(base):
        subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS]  # prune: never walk into site-packages
        found.extend(Path(directory, n) for n in names if n.endswith(".py") and not n.startswith("test_"))
    return sorted(found, key=lambda p: p.relative_to(base).parts)


def _stdlib_documents(max_bytes: int) -> list[str]:
    def read() -> Iterator[str]:
        for path in stdlib_files():
            try:
                yield path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few stdlib files are deliberately not UTF-8

    return _capped(read(), max_bytes)


def _file(cfg: DataConfig) -> Path:
    """`data.path`, which must name a regular file: a FIFO would block and a device never end."""
    path = Path(str(cfg.path)).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as error:
        raise DataError(f"data.path {path} does not exist; give an existing {cfg.source} file as "
                        "data.path=...") from error
    except OSError as error:
        raise DataError(f"data.path {path} cannot be read ({error.strerror})") from error
    if stat.S_ISDIR(mode):
        raise DataError(f"data.path {path} is a directory; give a {cfg.source} file inside it as data.path=...")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise DataError(f"data.path {path} is {kind}, not a regular file; only regular files are read as data: "
                        "save the data to a file and give that as data.path=...")
    return path


def _open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading without blocking, and only if it is still a regular file once open."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in after the check: no hang
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"data.path {path} is not a regular file; only regular files are read as data")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _empty(path: Path) -> DataError:
    return DataError(f"data.path {path} is empty (or only whitespace); give a file with text in it")


def _text_documents(cfg: DataConfig) -> list[str]:
    path = _file(cfg)
    with _open_regular(path) as handle:
        raw = handle.read(cfg.max_bytes + 1) if cfg.max_bytes else handle.read()
    if cfg.max_bytes and len(raw) > cfg.max_bytes:  # cut at the last line break within the cap
        cut = raw.rfind(b"\n", 0, cfg.max_bytes + 1)
        if cut <= 0:  # one long line: cut at the cap, backing off to a character boundary
            cut = cfg.max_bytes
            while cut > 0 and raw[cut] & 0xC0 == 0x80:
                cut -= 1
        raw = raw[:cut]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"data.path {path} is not UTF-8 text (bad byte at offset {error.start}); "
                        "convert it, e.g. iconv -t utf-8") from error
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise _empty(path)
    paragraphs = [p.lstrip("\n").rstrip() for p in _PARAGRAPH_BREAK.split(text)]
    paragraphs = [p for p in paragraphs if p.strip()]
    if len(paragraphs) > 1:
        return _capped(paragraphs, cfg.max_bytes)
    return _capped(text.splitlines(), cfg.max_bytes)


def _jsonl_lines(path: Path, max_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, each read bounded: with a cap, no line past
    `max_bytes + JSONL_SLACK` bytes is ever held in memory (0 = no cap, lines read whole)."""
    limit = max_bytes + JSONL_SLACK if max_bytes else -1
    with _open_regular(path) as handle:
        number = 0
        while line := handle.readline(limit):
            number += 1
            if limit > 0 and len(line) == limit and not line.endswith(b"\n") and handle.read(1) not in (b"", b"\n"):
                raise DataError(f"{path} line {number} is longer than {limit} bytes, more than data.max_bytes="
                                f"{max_bytes} can use; raise data.max_bytes (0 = no cap) or split the line")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path} line {number} is not UTF-8 (bad byte at column {error.start + 1}); "
                                "convert the file, e.g. iconv -t utf-8") from error
            if text.strip():
                yield number, text


def jsonl_values(path: Path, max_bytes: int, expected: str) -> Iterator[tuple[int, str, Any]]:
    """(line number, "PATH line N", parsed JSON value) of each non-blank line; a line that is not JSON is
    one DataError saying each line must be one JSON object with `expected` (e.g. "a 'text' field")."""
    for number, line in _jsonl_lines(path, max_bytes):
        where = f"{path} line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where} is not valid JSON ({error.msg}); each line must be one JSON object with "
                            f"{expected}") from error
        yield number, where, value


def _jsonl_documents(cfg: DataConfig) -> list[str]:
    path, field = _file(cfg), cfg.text_field

    def read() -> Iterator[str]:
        seen = False
        for _, where, obj in jsonl_values(path, cfg.max_bytes, f"a {field!r} field"):
            seen = True
            if not isinstance(obj, dict) or field not in obj:
                keys = f" (its fields: {', '.join(map(str, obj))})" if isinstance(obj, dict) else ""
                raise DataError(f"{where} has no field {field!r}{keys}; set data.text_field=... to the "
                                "field that holds the text")
            if not isinstance(obj[field], str):
                raise DataError(f"{where}: field {field!r} is a {type(obj[field]).__name__}, not a string")
            yield obj[field]
        if not seen:
            raise _empty(path)

    return _capped(read(), cfg.max_bytes)


def _hf_documents(cfg: DataConfig) -> list[str]:
    try:
        import datasets
    except ImportError as error:
        raise DataError("data.source=hf needs the Hugging Face `datasets` package, which is not installed: "
                        "pip install 'fewstep[hf]'") from error
    # datasets < 4 can run a dataset's loading script (2.18-2.19 by default): never without the user's say
    no_scripts = {"trust_remote_code": False} if int(datasets.__version__.split(".")[0]) < 4 else {}
    try:
        dataset = datasets.load_dataset(cfg.path, cfg.hf_config, split=cfg.hf_split, **no_scripts)
    except Exception as error:  # network, unknown dataset, bad config name: all reported the same way
        raise DataError(f"cannot load Hugging Face dataset {cfg.path!r} (config {cfg.hf_config!r}, split "
                        f"{cfg.hf_split!r}): {error}") from error
    if cfg.text_field not in dataset.column_names:
        raise DataError(f"dataset {cfg.path!r} has no field {cfg.text_field!r}; its fields are "
                        f"{dataset.column_names}: set data.text_field=...")
    return _capped((t for t in (row[cfg.text_field] for row in dataset) if isinstance(t, str)), cfg.max_bytes)


def load_documents(cfg: DataConfig) -> list[str]:
    """The non-blank documents of a corpus source in order, capped at `data.max_bytes` (0 = no cap)."""
    if cfg.source == "stdlib":
        documents = _stdlib_documents(cfg.max_bytes)
    elif cfg.source == "text":
        documents = _text_documents(cfg)
    elif cfg.source == "jsonl":
        documents = _jsonl_documents(cfg)
    elif cfg.source == "hf":
        documents = _hf_documents(cfg)
    else:
        raise DataError(f"data.source={cfg.source} is not a corpus source (stdlib, text, jsonl, hf)")
    if not documents:
        raise DataError(f"data.source={cfg.source} left no documents (every one was empty); check data.path "
                        "and data.text_field")
    return documents


# ---------------------------------------------------------------------------------------- splitting
def _bucket(doc: str) -> float:
    """A stable position in [0, 1) from the document's text alone."""
    return int.from_bytes(hashlib.sha1(doc.encode("utf-8")).digest()[:8], "big") / 2**64


def split_documents(documents: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Train/validation by a hash of each document's text; both non-empty when there are >= 2 distinct ones."""
    is_val = validation_flags(documents, val_fraction)
    train = [d for d, v in zip(documents, is_val) if not v]
    val = [d for d, v in zip(documents, is_val) if v]
    return train, val


def validation_flags(keys: list[str], val_fraction: float) -> list[bool]:
    """Whether each key's item is held out, by a hash of the key; both sides non-empty with >= 2 distinct keys."""
    buckets = [_bucket(k) for k in keys]
    is_val = [b < val_fraction for b in buckets]
    if len(set(buckets)) >= 2:  # move every copy of the nearest document across, so copies never straddle
        if not any(is_val):
            lowest = min(buckets)
            is_val = [b == lowest for b in buckets]
        elif all(is_val):
            highest = max(buckets)
            is_val = [b != highest for b in buckets]
    return is_val


# ---------------------------------------------------------------------------------------- tokenizer
def _wrap(core, **specials):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False, **specials)


def train_tokenizer(documents: list[str], vocab_size: int):
    """A byte-level BPE trained on `documents` (deterministic), with [PAD] [BOS] [EOS] [MASK] as ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    smallest = 256 + len(SPECIALS)
    if vocab_size < smallest:
        raise DataError(f"data.vocab_size={vocab_size} is below the {smallest} that the 256 byte symbols and "
                        f"{len(SPECIALS)} special tokens need; use data.vocab_size={smallest} or more")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(documents, trainer=trainer)
    return _wrap(core, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", mask_token=MASK_TOKEN)


def load_tokenizer(path: str | Path):
    """A `tokenizer.json` (or a directory holding one) as a fast tokenizer; it must have `[MASK]`."""
    from transformers import PreTrainedTokenizerFast

    given = Path(path).expanduser()
    file = given / "tokenizer.json" if given.is_dir() else given
    if not file.is_file():  # is_file() is False for a FIFO or a device too: never opened
        if file.exists():
            where = f"{file} is not a regular file"
        else:
            where = f"{given} has no tokenizer.json" if given.is_dir() else f"{given} does not exist"
        raise DataError(f"data.tokenizer {where}; give a tokenizer.json file or a directory holding one, or "
                        "leave data.tokenizer unset to train one")
    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(file), clean_up_tokenization_spaces=False)
    except Exception as error:  # the tokenizers library raises its own exception type
        raise DataError(f"data.tokenizer {file} is not a tokenizer.json that `tokenizers` can read: {error}") from error
    vocab = tokenizer.get_vocab()
    if MASK_TOKEN not in vocab:
        raise DataError(f"data.tokenizer {file} has no {MASK_TOKEN} token, which masked diffusion needs: add it, "
                        f"e.g. tok.add_special_tokens(['{MASK_TOKEN}']) with the `tokenizers` library, and save "
                        "the tokenizer again")
    specials = {"pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]", "mask_token": MASK_TOKEN}
    tokenizer.add_special_tokens({k: v for k, v in specials.items() if v in vocab})  # already in vocab: no new ids
    template = _chat_template(file.parent / "tokenizer_config.json") if given.is_dir() else None
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def _chat_template(config: Path) -> str | None:
    """The `chat_template` string of a tokenizer_config.json beside a tokenizer.json, if it has one."""
    if not config.is_file():
        return None
    try:
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise DataError(f"{config} is not a JSON object that can be read ({error}); fix or remove it") from error
    return template if isinstance(template, str) else None


def _vocab_hash(tokenizer) -> str:
    return tokenizer_fingerprint(tokenizer)[:16]  # part of the data fingerprint: keep it 16 characters


# ------------------------------------------------------------------------------------------ packing
def encode_texts(texts: list[str], tokenizer, specials_as_text: bool = True) -> list[list[int]]:
    """Each text's token ids (no added specials, no truncation or padding), in one batch.

    `specials_as_text`: text that spells a special token ("[MASK]" in a docstring) is tokenised as text,
    so the data never holds a mask id; off for text whose special tokens are meant (a chat template's).
    """
    from tokenizers import Tokenizer

    if getattr(tokenizer, "backend_tokenizer", None) is None:  # a slow (Python) tokenizer, e.g. Dream's
        # split_special_tokens keeps most spelled-out special tokens as text; a word-level vocabulary can
        # still map the mask token's spelling to its id, so any mask id left is dropped
        mask = tokenizer.mask_token_id
        encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=specials_as_text)["input_ids"]
        return [[i for i in ids if i != mask] if specials_as_text else list(ids) for ids in encoded]
    # a private copy: no truncation or padding a saved tokenizer may carry
    core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    core.no_truncation()
    core.no_padding()
    core.encode_special_tokens = specials_as_text
    return [encoding.ids for encoding in core.encode_batch(texts, add_special_tokens=False)]


def token_stream(documents: list[str], tokenizer) -> torch.Tensor:
    """All documents as one int64 stream `[BOS] doc [EOS] ...`, tokenised in one batch."""
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in encode_texts(documents, tokenizer):
        stream += head
        stream += ids
        stream += tail
    return torch.tensor(stream, dtype=torch.long)


def pack(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping rows of exactly `seq_len` tokens from a 1-D stream; the tail is dropped."""
    rows = stream.numel() // seq_len
    return stream[: rows * seq_len].reshape(rows, seq_len).clone()


# -------------------------------------------------------------------------------------- entry point
def build_corpus_data(cfg: DataConfig, tokenizer: Any = None) -> TokenData:
    """Token data for a corpus source (`data.build_data` calls this for stdlib, text, jsonl and hf).

    `tokenizer`, when given, is used as it is (data.tokenizer is then ignored); it must have a mask token.
    """
    if tokenizer is not None:
        if tokenizer.mask_token_id is None:
            raise DataError("the given tokenizer has no mask token; set its mask_token (a Hugging Face teacher's "
                            "tokenizer gets one from teacher.mask_id)")
        given = tokenizer
    else:  # a bad tokenizer fails before any reading
        given = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    documents = load_documents(cfg)
    train_docs, val_docs = split_documents(documents, cfg.val_fraction)
    if not train_docs or not val_docs:
        raise DataError(f"data.source={cfg.source} gave {len(documents)} document(s), {len(set(documents))} "
                        "distinct: too few for a training and a validation split; give more (different) text")
    tokenizer = given if given is not None else train_tokenizer(train_docs, cfg.vocab_size)
    train_stream, val_stream = token_stream(train_docs, tokenizer), token_stream(val_docs, tokenizer)
    train, val = pack(train_stream, cfg.seq_len), pack(val_stream, cfg.seq_len)
    if len(train) == 0 or len(val) == 0:
        fits = min(len(train_stream), len(val_stream))
        hint = f"a smaller data.seq_len (at most {fits})" if fits >= 2 else "a smaller data.seq_len"
        raise DataError(
            f"too little text for one training and one validation sequence of data.seq_len={cfg.seq_len}: the "
            f"training split has {len(train_stream)} tokens and the validation split {len(val_stream)} tokens "
            f"({len(train_docs)} + {len(val_docs)} documents); give more text, a larger data.val_fraction, or {hint}"
        )
    val_bytes = sum(len(d.encode("utf-8")) for d in val_docs)
    if cfg.source == "stdlib":
        path = str(Path(sysconfig.get_paths()["stdlib"]).resolve())
    elif cfg.source == "hf":
        path = cfg.path
    else:
        path = str(Path(str(cfg.path)).expanduser().resolve())
    description = {
        "source": cfg.source, "path": path, "text_field": cfg.text_field, "seq_len": cfg.seq_len,
        "vocab_size": cfg.vocab_size, "max_bytes": cfg.max_bytes, "val_fraction": cfg.val_fraction,
        "tokenizer_vocab_hash": _vocab_hash(tokenizer),
    }
    if cfg.source == "hf":
        description.update(hf_config=cfg.hf_config, hf_split=cfg.hf_split)
    stats = {
        "source": cfg.source,
        "num_documents": len(documents),
        "num_train_documents": len(train_docs),
        "num_val_documents": len(val_docs),
        "corpus_bytes": sum(len(d.encode("utf-8")) for d in documents),
        "train_tokens": len(train_stream),
        "val_tokens": len(val_stream),
        "bytes_per_token": val_bytes / len(val_stream),  # validation bytes per token, specials included
    }
    return TokenData(train=train, val=val, tokenizer=tokenizer, mask_id=int(tokenizer.mask_token_id),
                     fingerprint=fingerprint(description, train, val), stats=stats, task=None)
