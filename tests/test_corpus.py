"""Corpus sources: text, jsonl, stdlib and hf; hash-based split; tokenizer training and loading; errors."""

from __future__ import annotations

import builtins

import pytest
import torch

from fewstep.distill.config import DataConfig
from fewstep.distill.corpus import build_corpus_data, load_documents, split_documents
from fewstep.distill.data import DataError

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jumbo crates".split()


def corpus(n: int = 120, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(torch.randint(6, 20, (1,), generator=g)),),
                                                     generator=g).tolist()) for _ in range(n)]


def cfg(path, **kw) -> DataConfig:
    base = {"source": "text", "path": str(path), "seq_len": 16, "vocab_size": 300, "val_fraction": 0.1}
    return DataConfig(**{**base, **kw})


def test_text_paragraphs_or_lines(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("one doc\nsecond doc\nthird\n")
    assert load_documents(cfg(lines)) == ["one doc", "second doc", "third"]
    paragraphs = tmp_path / "paras.txt"
    paragraphs.write_text("first line\nstill first\n\nsecond paragraph\n")
    assert load_documents(cfg(paragraphs)) == ["first line\nstill first", "second paragraph\n"]


def test_jsonl_field_and_bad_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a b c"}\n{"text": "d e"}\n')
    assert load_documents(cfg(path, source="jsonl")) == ["a b c", "d e"]
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2 has no field 'text'"):
        load_documents(cfg(path, source="jsonl"))
    path.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(DataError, match="d.jsonl:2 is not valid JSON"):
        load_documents(cfg(path, source="jsonl"))


def test_split_is_by_hash_and_order_free():
    docs = corpus(200)
    train, val = split_documents(docs, 0.1)
    assert val and train and set(train).isdisjoint(val) and len(train) + len(val) == 200
    train_r, val_r = split_documents(list(reversed(docs)) + ["a brand new document"], 0.1)
    assert set(val) <= set(val_r) and set(train) <= set(train_r)  # nothing moved between splits


def test_build_packs_rows_that_decode_to_the_text(tmp_path):
    path = tmp_path / "c.txt"
    docs = corpus()
    path.write_text("\n".join(docs))
    data = build_corpus_data(cfg(path))
    assert data.train.dtype == torch.long and data.train.shape[1] == 16 and len(data.val) > 0
    assert int(data.train.max()) < len(data.tokenizer) and data.mask_id == data.tokenizer.mask_token_id
    assert not (data.train == data.mask_id).any()
    text = data.tokenizer.decode(data.train[3].tolist())
    for special in ("[BOS]", "[EOS]"):
        text = text.replace(special, " ")
    assert text.strip() and all(word in WORDS for word in text.split())
    again = build_corpus_data(cfg(path))
    assert torch.equal(again.train, data.train) and again.fingerprint == data.fingerprint
    assert data.stats["bytes_per_token"] > 1 and data.stats["num_documents"] == len(docs)
    encoded = data.tokenizer.backend_tokenizer.encode(docs[0]).ids
    assert data.tokenizer.decode(encoded) == docs[0]  # byte-level BPE round-trips


def test_given_tokenizer_and_one_without_mask(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(corpus()))
    first = build_corpus_data(cfg(path))
    first.tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    reused = build_corpus_data(cfg(path, tokenizer=str(tmp_path)))
    assert torch.equal(reused.train, first.train)
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "plain.json"))
    with pytest.raises(DataError, match=r"no \[MASK\] token"):
        build_corpus_data(cfg(path, tokenizer=str(tmp_path / "plain.json")))
    with pytest.raises(DataError, match="has no tokenizer.json"):
        build_corpus_data(cfg(path, tokenizer=str(tmp_path / "nowhere")))


def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_corpus_data(cfg(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="is a directory"):
        build_corpus_data(cfg(tmp_path))
    (tmp_path / "blank.txt").write_text("  \n\n \n")
    with pytest.raises(DataError, match="empty"):
        build_corpus_data(cfg(tmp_path / "blank.txt"))
    (tmp_path / "short.txt").write_text("\n".join(corpus(12)))
    with pytest.raises(DataError, match="smaller data.seq_len"):
        build_corpus_data(cfg(tmp_path / "short.txt", seq_len=512))


def test_stdlib_source_has_code_and_no_tests():
    data = build_corpus_data(DataConfig(source="stdlib", seq_len=64, vocab_size=400, max_bytes=300_000))
    assert data.stats["corpus_bytes"] <= 300_000 and len(data.train) > 100
    text = data.tokenizer.decode(data.train[:50].flatten().tolist())
    assert "def " in text and "import " in text


def test_hf_without_datasets_says_how_to_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=r"pip install 'fewstep\[hf\]'"):
        load_documents(DataConfig(source="hf", path="some/dataset"))
