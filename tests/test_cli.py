"""The `fewstep` console script as a user runs it: help, sampling, and bad input."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, tiny_overrides


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("teacher", "sample", "quickstart"):
        assert command in result.stdout
    for command, words in {"teacher": ["--resume", "KEY=VALUE", "out_dir"], "sample": ["--steps", "--num-samples",
                           "--seed", "--out"], "quickstart": ["--out", "--fresh"]}.items():
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and all(w in sub.stdout for w in words), sub.stdout


def test_sample_writes_jsonl_with_exact_scores(tiny_teacher, tmp_path):
    out = tmp_path / "samples.jsonl"
    result = run_cli("sample", str(tiny_teacher), "--steps", "8", "--num-samples", "3", "--seed", "5",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert len(row["tokens"]) == 16 and all(0 <= t < 8 for t in row["tokens"])
        assert row["text"].split() == [f"s{t}" for t in row["tokens"]]
        assert row["exact_nll"] > 0 and row["invalid_transitions"] >= 0
    again = run_cli("sample", str(tiny_teacher / "model"), "--steps", "8", "--num-samples", "3", "--seed", "5")
    assert [json.loads(line)["tokens"] for line in again.stdout.splitlines()] == [r["tokens"] for r in rows]


def _fails(result, *words):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "Traceback" not in result.stderr, result.stderr[-2000:]
    for word in words:
        assert word in last, last
    return last


def test_unknown_config_key(tmp_path):
    _fails(run_cli("teacher", "teacher/markov", "trainer.max_step=3", f"out_dir={tmp_path}"), "trainer.max_steps")


def test_missing_data_path(tmp_path):
    missing = tmp_path / "nope.txt"
    _fails(run_cli("teacher", "teacher/text", f"data.path={missing}", f"out_dir={tmp_path / 'o'}"), str(missing))


def test_empty_text_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    _fails(run_cli("teacher", "teacher/text", f"data.path={empty}", f"out_dir={tmp_path / 'o'}"), "empty")


def test_missing_mask_token(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "a", "b", "c"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    text = tmp_path / "t.txt"
    text.write_text("\n".join("a b c a b" for _ in range(50)))
    _fails(run_cli("teacher", "teacher/text", f"data.path={text}", f"data.tokenizer={tmp_path / 'tokenizer.json'}",
                   "data.seq_len=8", f"out_dir={tmp_path / 'o'}"), "[MASK]")


def test_vocab_mismatch_between_model_and_tokenizer(tiny_teacher, tmp_path):
    """A pretrained model whose vocabulary is smaller than the data's tokenizer."""
    last = _fails(run_cli("teacher", "teacher/markov", *tiny_overrides(tmp_path / "o", "data.markov.num_states=40",
                          f"model.pretrained={tiny_teacher / 'model'}")), "vocabulary")
    assert "tokenizer" in last


def test_a_finished_run_is_never_overwritten(tiny_teacher):
    before = {p: p.stat().st_mtime_ns for p in (tiny_teacher / "checkpoints").iterdir()}
    _fails(run_cli("teacher", "teacher/markov", *tiny_overrides(tiny_teacher, "trainer.max_steps=2")), "--resume")
    assert {p: p.stat().st_mtime_ns for p in (tiny_teacher / "checkpoints").iterdir()} == before


def test_sample_bad_input(tiny_teacher, tmp_path):
    _fails(run_cli("sample", str(tmp_path / "none"), "--steps", "4"), "does not exist")
    _fails(run_cli("sample", str(tiny_teacher), "--steps", "0"), "--steps")
    _fails(run_cli("sample", str(tiny_teacher), "--seq-len", "4096"), "--seq-len")


@pytest.mark.slow
def test_teacher_then_resume_through_the_cli(tmp_path):
    out = tmp_path / "run"
    first = run_cli("teacher", "teacher/markov", *tiny_overrides(out, "trainer.max_steps=2", "trainer.val_every=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "validation NELBO" in first.stdout and "samples (8 steps)" in first.stdout
    more = run_cli("teacher", "teacher/markov", "--resume", *tiny_overrides(out, "trainer.max_steps=4",
                                                                        "trainer.val_every=2"))
    assert more.returncode == 0, more.stderr[-3000:]
    assert "4 steps" in more.stdout
