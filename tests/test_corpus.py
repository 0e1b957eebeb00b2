"""Corpus sources (text, jsonl, stdlib, hf), the hash split, tokenizer training and loading, packing, errors."""

from __future__ import annotations

import hashlib
import sys

import pytest
import torch

from fewstep.data.config import DataConfig
from fewstep.data.corpus import SPECIALS, build_corpus_data, load_documents, split_documents, stdlib_files
from fewstep.errors import DataError

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jumbo crates".split()


def corpus(n: int = 120, seed: int = 0) -> list[str]:
    """`n` random sentences over WORDS, 6-19 words each."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        length = int(torch.randint(6, 20, (1,), generator=g))
        docs.append(" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (length,), generator=g).tolist()))
    return docs


def cfg(path, **kw) -> DataConfig:
    base = {"source": "text", "path": str(path), "seq_len": 16, "vocab_size": 300, "val_fraction": 0.1}
    return DataConfig(**{**base, **kw})


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(corpus()) + "\n")
    return path


# ------------------------------------------------------------------------------------------ reading
def test_text_is_paragraphs_when_there_are_blank_lines_else_lines(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("one doc\n  second doc\nthird\n")
    assert load_documents(cfg(lines)) == ["one doc", "  second doc", "third"]
    paragraphs = tmp_path / "paras.txt"
    paragraphs.write_text("\nfirst line\n    still first\n\n  \n\ndef second():\n    pass\n \nthird\n")
    assert load_documents(cfg(paragraphs)) == ["first line\n    still first", "def second():\n    pass", "third"]
    one = tmp_path / "one.txt"  # a single paragraph followed by blank lines is not "paragraphs"
    one.write_text("a\nb\n\n\n")
    assert load_documents(cfg(one)) == ["a", "b"]


def test_max_bytes_caps_every_reader(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line number {i}\n" for i in range(100)))
    docs = load_documents(cfg(path, max_bytes=60))
    assert docs == [f"line number {i}" for i in range(len(docs))] and sum(map(len, docs)) <= 60 and len(docs) == 4
    assert len(load_documents(cfg(path, max_bytes=0))) == 100
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(f'{{"text": "document {i}"}}\n' for i in range(50)))
    assert load_documents(cfg(jsonl, source="jsonl", max_bytes=25)) == ["document 0", "document 1"]
    long_line = tmp_path / "long.txt"  # one line past the cap: its head, cut on a character boundary
    long_line.write_text("é" * 100)
    assert load_documents(cfg(long_line, max_bytes=51)) == ["é" * 25]


def test_jsonl_field_and_bad_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a b c", "id": 1}\n\n{"text": "d e"}\n')
    assert load_documents(cfg(path, source="jsonl")) == ["a b c", "d e"]
    path.write_text('{"body": "a b c"}\n')
    assert load_documents(cfg(path, source="jsonl", text_field="body")) == ["a b c"]
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl line 2 has no field 'text' \(its fields: body\).*data\.text_field"):
        load_documents(cfg(path, source="jsonl"))
    path.write_text('{"text": "a"}\n{"text": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"d\.jsonl line 3 is not valid JSON"):
        load_documents(cfg(path, source="jsonl"))
    path.write_text('{"text": 7}\n')
    with pytest.raises(DataError, match=r"line 1: field 'text' is a int, not a string"):
        load_documents(cfg(path, source="jsonl"))
    path.write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(DataError, match="no documents"):
        load_documents(cfg(path, source="jsonl"))
    path.write_text("\n \n")
    with pytest.raises(DataError, match="empty"):
        load_documents(cfg(path, source="jsonl"))


def test_stdlib_files_skip_tests_and_installed_packages(tmp_path):
    keep = ["a.py", "json/__init__.py", "json/decoder.py", "idlelib/editor.py", "lib2to3/fixer_base.py"]
    drop = ["test/test_os.py", "test/support/__init__.py", "idlelib/idle_test/htest.py", "test_x.py",
            "lib2to3/tests/data/bom.py", "unittest/test/helper.py", "site-packages/pkg/mod.py",
            "dist-packages/m.py", "json/tests/x.py", "notes.txt", "__pycache__/a.py"]
    for name in keep + drop:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    found = [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)]
    assert found == ["a.py", "idlelib/editor.py", "json/__init__.py", "json/decoder.py", "lib2to3/fixer_base.py"]


def test_stdlib_source_builds_from_code_without_tests():
    files = stdlib_files()
    names = {p.name for p in files}
    assert {"os.py", "functools.py"} <= names and not any(n.startswith("test_") for n in names)
    assert not any({"test", "tests", "idle_test", "site-packages"} & set(p.parts) for p in files)
    data = build_corpus_data(DataConfig(source="stdlib", seq_len=64, vocab_size=400, max_bytes=300_000))
    docs = load_documents(DataConfig(source="stdlib", max_bytes=300_000))
    assert docs[0] == files[0].read_text(encoding="utf-8")  # sorted order, one file per document
    assert data.stats["corpus_bytes"] <= 300_000 and data.stats["num_documents"] == len(docs)
    next_file = files[len(docs)].read_bytes()  # whole files only: the cap stops before the one that overflows
    assert data.stats["corpus_bytes"] + len(next_file) > 300_000
    assert len(data.train) > 100 and len(data.val) > 0 and data.stats["source"] == "stdlib"
    text = data.tokenizer.decode(data.train[:50].flatten().tolist())
    assert "def " in text and "import " in text
    assert 1.5 < data.stats["bytes_per_token"] < 6.0  # merges beat 1 byte per token on Python source


def test_hf_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails even if it is installed
    with pytest.raises(DataError, match=r"`datasets` package.*pip install 'fewstep\[hf\]'"):
        build_corpus_data(DataConfig(source="hf", path="some/dataset"))


# ---------------------------------------------------------------------------------------- splitting
def test_split_is_by_hash_of_the_text_and_order_free():
    docs = corpus(300)
    train, val = split_documents(docs, 0.1)
    expected_val = {d for d in docs if int.from_bytes(hashlib.sha1(d.encode()).digest()[:8], "big") / 2**64 < 0.1}
    assert set(val) == expected_val and 10 < len(val) < 60 and set(train) == set(docs) - expected_val
    assert train == [d for d in docs if d not in expected_val]  # order kept within a split
    train_r, val_r = split_documents(list(reversed(docs)) + corpus(50, seed=1), 0.1)
    assert set(val) <= set(val_r) and set(train) <= set(train_r)  # nothing moved between splits


def test_split_keeps_one_of_each_and_copies_together():
    docs = corpus(3)
    train, val = split_documents(docs, 1e-9)  # no document hashes below this: the lowest is moved
    assert len(val) == 1 and len(train) == 2
    train, val = split_documents(docs, 1 - 1e-9)  # every document hashes below this: the highest stays
    assert len(val) == 2 and len(train) == 1
    train, val = split_documents([docs[0], docs[1], docs[0]], 1e-9)
    assert set(train).isdisjoint(val)


# -------------------------------------------------------------------------------- tokenizer, packing
def test_build_packs_rows_that_decode_to_the_documents(text_file):
    docs = text_file.read_text().splitlines()
    data = build_corpus_data(cfg(text_file))
    assert data.train.dtype == data.val.dtype == torch.int64 and data.task is None
    assert data.train.shape[1] == data.val.shape[1] == 16 and len(data.train) > 10 and len(data.val) > 0
    assert [data.tokenizer.convert_ids_to_tokens(i) for i in range(4)] == list(SPECIALS)
    assert data.mask_id == data.tokenizer.mask_token_id == 3 and len(data.tokenizer) <= 300
    everything = torch.cat([data.train, data.val])
    assert 0 <= int(everything.min()) and int(everything.max()) < len(data.tokenizer)
    assert not (everything == data.mask_id).any() and not (everything == data.tokenizer.pad_token_id).any()
    bos, eos = data.tokenizer.bos_token_id, data.tokenizer.eos_token_id
    flat = data.train.flatten()
    assert flat[0] == bos and (flat[1:][flat[:-1] == eos] == bos).all()  # [BOS] doc [EOS] [BOS] doc [EOS]
    assert (flat == bos).sum() >= 10 and abs(int((flat == bos).sum()) - int((flat == eos).sum())) <= 1
    for row in data.train.tolist()[:20] + data.val.tolist():
        pieces, current = [], []
        for token in row + [eos]:
            if token in (bos, eos):
                pieces.append(current)
                current = []
            else:
                current.append(token)
        for piece in filter(None, pieces):
            assert any(data.tokenizer.decode(piece) in d for d in docs)
    train_docs, val_docs = split_documents(docs, 0.1)
    assert data.stats["num_train_documents"] == len(train_docs) and data.stats["num_val_documents"] == len(val_docs)
    assert data.stats["num_documents"] == len(docs) and data.stats["corpus_bytes"] == sum(len(d) for d in docs)
    val_bytes = sum(len(d) for d in val_docs)
    assert data.stats["bytes_per_token"] == pytest.approx(val_bytes / data.stats["val_tokens"])
    encode = data.tokenizer.backend_tokenizer.encode
    assert data.stats["val_tokens"] == sum(len(encode(d, add_special_tokens=False).ids) + 2 for d in val_docs)
    assert data.stats["val_tokens"] >= data.val.numel() and data.stats["bytes_per_token"] > 1


def test_training_is_deterministic_and_the_fingerprint_tracks_the_data(text_file, tmp_path):
    first, second = build_corpus_data(cfg(text_file)), build_corpus_data(cfg(text_file))
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert first.fingerprint == second.fingerprint
    assert build_corpus_data(cfg(text_file, seq_len=12)).fingerprint != first.fingerprint
    other = tmp_path / "other.txt"
    other.write_text("\n".join(corpus(seed=3)))
    assert build_corpus_data(cfg(other)).fingerprint != first.fingerprint


def test_byte_level_bpe_round_trips_text_and_never_emits_the_mask(tmp_path):
    path = tmp_path / "code.txt"
    code = "def f(x):\n\treturn {'a': x , \"ü\": [1 ,2]}  # [MASK] in a comment  \n"
    path.write_text("\n\n".join([code] * 20 + corpus(60)))
    data = build_corpus_data(cfg(path, val_fraction=0.5))
    ids = data.tokenizer.backend_tokenizer.encode("naïve 日本 [MASK]", add_special_tokens=False).ids
    assert data.tokenizer.decode(ids) == "naïve 日本 [MASK]"
    assert data.tokenizer.decode(data.tokenizer.backend_tokenizer.encode(code).ids) == code
    assert not (torch.cat([data.train, data.val]) == data.mask_id).any()  # "[MASK]" in text is text


def test_given_tokenizer_file_or_directory(text_file, tmp_path):
    first = build_corpus_data(cfg(text_file))
    first.tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    for given in (tmp_path, tmp_path / "tokenizer.json"):
        reused = build_corpus_data(cfg(text_file, tokenizer=str(given)))
        assert torch.equal(reused.train, first.train) and reused.mask_id == first.mask_id
    truncating = first.tokenizer.backend_tokenizer
    truncating.enable_truncation(max_length=4)  # a saved setting that must not cut the documents
    truncating.save(str(tmp_path / "truncating.json"))
    assert torch.equal(build_corpus_data(cfg(text_file, tokenizer=str(tmp_path / "truncating.json"))).train,
                       first.train)


def test_given_tokenizer_errors(text_file, tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "plain.json"))
    with pytest.raises(DataError, match=r"plain\.json has no \[MASK\] token.*add it"):
        build_corpus_data(cfg(text_file, tokenizer=str(tmp_path / "plain.json")))
    with pytest.raises(DataError, match=r"nowhere\.json does not exist"):
        build_corpus_data(cfg(text_file, tokenizer=str(tmp_path / "nowhere.json")))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"empty_dir has no tokenizer\.json"):
        build_corpus_data(cfg(text_file, tokenizer=str(tmp_path / "empty_dir")))
    (tmp_path / "broken.json").write_text("{not a tokenizer")
    with pytest.raises(DataError, match="not a tokenizer.json"):
        build_corpus_data(cfg(text_file, tokenizer=str(tmp_path / "broken.json")))
    with pytest.raises(DataError, match="vocab_size=100 is below"):
        build_corpus_data(cfg(text_file, vocab_size=100))


# ------------------------------------------------------------------------------------------- errors
def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match=r"missing\.txt does not exist"):
        build_corpus_data(cfg(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="is a directory"):
        build_corpus_data(cfg(tmp_path))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        build_corpus_data(cfg(tmp_path / "empty.txt"))
    (tmp_path / "blank.txt").write_text("  \n\n \t\n")
    with pytest.raises(DataError, match=r"blank\.txt is empty \(or only whitespace\)"):
        build_corpus_data(cfg(tmp_path / "blank.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\nna\xefve\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        build_corpus_data(cfg(tmp_path / "latin1.txt"))
    (tmp_path / "one.txt").write_text("just one document\n")
    with pytest.raises(DataError, match="1 document.*too few for a training and a validation split"):
        build_corpus_data(cfg(tmp_path / "one.txt"))
    (tmp_path / "same.txt").write_text("the same line\n" * 30)
    with pytest.raises(DataError, match="30 document.*1 distinct.*too few"):
        build_corpus_data(cfg(tmp_path / "same.txt"))


def test_too_little_text_says_how_many_tokens_and_what_to_do(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("\n".join(corpus(12)))
    with pytest.raises(DataError, match=r"data\.seq_len=512: the training split has \d+ tokens and the "
                                        r"validation split \d+ tokens.*smaller data\.seq_len \(at most \d+\)"):
        build_corpus_data(cfg(path, seq_len=512, val_fraction=0.3))
