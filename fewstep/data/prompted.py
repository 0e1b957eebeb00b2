"""Prompt/response pairs from a jsonl file as token data: one example per row, the loss on the response.

`data.prompted=true` reads `data.prompt_field` and `data.response_field` (strings) from each line;
`data.messages_field` reads a list of chat messages (`{"role", "content"}`, the last one the
assistant's answer) and renders it with the tokenizer's chat template: the prompt is the conversation
before the answer with the generation prompt added, the response is what the full rendering adds
after it (the answer and the template's end-of-turn marker).

Each row is `[BOS] prompt response EOS ... EOS` (BOS where the tokenizer has one; chat templates
write their own), exactly `data.seq_len` tokens: the EOS fill is part of the response, as in LLaDA's
SFT, so the model learns where an answer ends. An example that does not fit (its response and one
EOS after the prompt) is refused with its line number, never truncated: a cut answer without its EOS
teaches the model answers that stop nowhere, and dropping examples silently changes the data.
Examples are split into train and validation by a hash of their prompt, so one prompt is never in both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.data.config import DataConfig
from fewstep.data.corpus import (
    _empty,
    _file,
    _vocab_hash,
    encode_texts,
    jsonl_values,
    load_tokenizer,
    train_tokenizer,
    validation_flags,
)
from fewstep.data.tokens import TokenData, fingerprint
from fewstep.errors import DataError

__all__ = ["Record", "build_prompted_data", "read_records", "render_chat"]


@dataclass(frozen=True)
class Record:
    line: int  # line number in the file, for errors
    prompt: str | None  # prompt_field mode
    response: str | None
    messages: tuple[tuple[str, str], ...] | None  # messages_field mode: (role, content) pairs


def _messages(value: Any, where: str, field: str) -> tuple[tuple[str, str], ...]:
    ok = isinstance(value, list) and len(value) >= 2 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise DataError(f"{where}: field {field!r} must be a list of at least two messages, each "
                        '{"role": str, "content": str}')
    if value[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message of {field!r} has role {value[-1]['role']!r}; it must be the "
                        "assistant's answer (role 'assistant'), which is the response the loss counts")
    return tuple((m["role"], m["content"]) for m in value)


def read_records(cfg: DataConfig) -> list[Record]:
    """The examples of a prompted jsonl file in order, until the next one would pass `data.max_bytes`."""
    path = _file(cfg)
    chat = bool(cfg.messages_field)
    wanted = [cfg.messages_field] if chat else [cfg.prompt_field, cfg.response_field]
    setting = ("data.messages_field=..." if chat else
               "data.prompt_field=... / data.response_field=... (or data.text_field with data.prompted=false)")
    records: list[Record] = []
    used = 0
    for number, where, obj in jsonl_values(path, cfg.max_bytes, f"the field(s) {', '.join(map(repr, wanted))}"):
        if not isinstance(obj, dict):
            raise DataError(f"{where} is a JSON {type(obj).__name__}, not an object with the field(s) "
                            f"{', '.join(map(repr, wanted))}")
        for name in wanted:
            if name not in obj:
                raise DataError(f"{where} has no field {name!r} (its fields: {', '.join(map(str, obj))}); set "
                                f"{setting} to the field that holds it")
        if chat:
            record = Record(number, None, None, _messages(obj[cfg.messages_field], where, cfg.messages_field))
            size = sum(len(c.encode("utf-8")) for _, c in record.messages)
        else:
            for name in wanted:
                if not isinstance(obj[name], str):
                    raise DataError(f"{where}: field {name!r} is a {type(obj[name]).__name__}, not a string")
            record = Record(number, obj[cfg.prompt_field], obj[cfg.response_field], None)
            size = len(record.prompt.encode("utf-8")) + len(record.response.encode("utf-8"))
        if cfg.max_bytes and used + size > cfg.max_bytes and records:
            break
        records.append(record)
        used += size
    if not records:
        raise _empty(path)
    return records


def render_chat(tokenizer: Any, messages: tuple[tuple[str, str], ...], where: str) -> tuple[str, str]:
    """(prompt text, response text) of a conversation under the tokenizer's chat template."""
    conversation = [{"role": role, "content": content} for role, content in messages]
    prompt = tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if not full.startswith(prompt) or len(full) == len(prompt):
        raise DataError(f"{where}: the chat template's rendering of the whole conversation does not start with "
                        "its rendering of the prompt (the messages before the answer, with the generation prompt), "
                        "so the answer cannot be cut out of it; use data.prompt_field / data.response_field instead")
    return prompt, full[len(prompt):]


def _no_chat_template(cfg: DataConfig, which: str) -> DataError:
    return DataError(f"data.messages_field={cfg.messages_field} renders chat messages with the tokenizer's chat "
                     f"template, and {which}; give a tokenizer with a chat template (data.tokenizer=DIR holding "
                     "tokenizer.json and a tokenizer_config.json with chat_template) or use data.prompted=true "
                     "with data.prompt_field / data.response_field")


def _check_tokenizer(tokenizer: Any, cfg: DataConfig) -> None:
    if tokenizer.eos_token_id is None:
        raise DataError("prompted data fills each response's tail with EOS, and the tokenizer has no eos_token; "
                        "give a tokenizer with one (data.tokenizer=...)")
    if cfg.messages_field and not getattr(tokenizer, "chat_template", None):
        raise _no_chat_template(cfg, "the given tokenizer has none (data.tokenizer: a chat_template in the "
                                     "tokenizer_config.json beside its tokenizer.json)")


def _rows(records: list[Record], tokenizer: Any, cfg: DataConfig, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [N, seq_len] (prompt, response, EOS fill) and prompt lengths [N]; refuses what does not fit."""
    eos = int(tokenizer.eos_token_id)
    if cfg.messages_field:
        texts = [render_chat(tokenizer, r.messages, f"{path} line {r.line}") for r in records]
        head: list[int] = []  # a chat template writes its own BOS
        specials_as_text = False  # the template's markers are special tokens
    else:
        texts = [(r.prompt, r.response) for r in records]
        head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        specials_as_text = True  # "[MASK]" in a prompt is text, never the mask
    prompts = encode_texts([p for p, _ in texts], tokenizer, specials_as_text)
    responses = encode_texts([r for _, r in texts], tokenizer, specials_as_text)
    rows = torch.full((len(records), cfg.seq_len), eos, dtype=torch.long)
    prompt_len = torch.empty(len(records), dtype=torch.long)
    for i, (record, prompt, response) in enumerate(zip(records, prompts, responses)):
        where = f"{path} line {record.line}"
        prompt = head + prompt
        if tokenizer.mask_token_id in prompt + response:
            raise DataError(f"{where}: the rendered example holds the mask token {tokenizer.mask_token!r}, which "
                            "masked diffusion reserves; remove it from the messages")
        if len(prompt) >= cfg.seq_len:
            raise DataError(f"{where}: the prompt is {len(prompt)} tokens, and data.seq_len={cfg.seq_len} leaves no "
                            "room for a response; raise data.seq_len or shorten the prompt")
        if len(prompt) + len(response) + 1 > cfg.seq_len:
            raise DataError(f"{where}: prompt ({len(prompt)} tokens) + response ({len(response)}) + one EOS is "
                            f"{len(prompt) + len(response) + 1} tokens, more than data.seq_len={cfg.seq_len}; "
                            "responses are never truncated (a cut answer has no EOS to end it): raise "
                            "data.seq_len, or shorten or drop the line")
        rows[i, : len(prompt) + len(response)] = torch.tensor(prompt + response, dtype=torch.long)
        prompt_len[i] = len(prompt)
    return rows, prompt_len


def _split(records: list[Record], val_fraction: float) -> tuple[list[Record], list[Record]]:
    """By a hash of each prompt (the messages before the answer): one prompt is never on both sides."""
    keys = [r.prompt if r.messages is None else json.dumps(r.messages[:-1]) for r in records]
    is_val = validation_flags(keys, val_fraction)
    return [r for r, v in zip(records, is_val) if not v], [r for r, v in zip(records, is_val) if v]


def _iter_training_text(records: list[Record]) -> Iterator[str]:
    for r in records:
        if r.messages is None:
            yield r.prompt
            yield r.response
        else:
            yield from (content for _, content in r.messages)


def build_prompted_data(cfg: DataConfig, tokenizer: Any = None) -> TokenData:
    """Token data for `data.source=jsonl` with `data.prompted` or `data.messages_field`."""
    if tokenizer is not None and tokenizer.mask_token_id is None:
        raise DataError("the given tokenizer has no mask token; set its mask_token (a Hugging Face teacher's "
                        "tokenizer gets one from teacher.mask_id)")
    given = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if cfg.messages_field and given is None:  # refused before reading the data
        raise _no_chat_template(cfg, "the tokenizer fewstep trains when none is given (data.tokenizer unset) "
                                     "has none")
    records = read_records(cfg)
    path = _file(cfg)
    train_records, val_records = _split(records, cfg.val_fraction)
    if not train_records or not val_records:
        raise DataError(f"{path} gave {len(records)} example(s), too few distinct prompts for a training and a "
                        "validation split; give more examples")
    tokenizer = given if given is not None else train_tokenizer(list(_iter_training_text(train_records)),
                                                                cfg.vocab_size)
    _check_tokenizer(tokenizer, cfg)
    train, train_plen = _rows(train_records, tokenizer, cfg, path)
    val, val_plen = _rows(val_records, tokenizer, cfg, path)
    description = {
        "source": "jsonl", "prompted": True, "path": str(path.expanduser().resolve()),
        "prompt_field": cfg.prompt_field, "response_field": cfg.response_field,
        "messages_field": cfg.messages_field, "chat_template": getattr(tokenizer, "chat_template", None)
        if cfg.messages_field else None, "seq_len": cfg.seq_len, "vocab_size": cfg.vocab_size,
        "max_bytes": cfg.max_bytes, "val_fraction": cfg.val_fraction, "tokenizer_vocab_hash": _vocab_hash(tokenizer),
    }
    stats = {
        "source": "jsonl",
        "num_examples": len(records),
        "num_train_examples": len(train_records),
        "num_val_examples": len(val_records),
        "val_response_tokens": int((cfg.seq_len - val_plen).sum()),
    }
    return TokenData(train=train, val=val, tokenizer=tokenizer, mask_id=int(tokenizer.mask_token_id),
                     fingerprint=fingerprint(description, train, val, train_plen, val_plen), stats=stats, task=None,
                     train_prompt_len=train_plen, val_prompt_len=val_plen)
