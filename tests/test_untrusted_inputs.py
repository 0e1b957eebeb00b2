"""Untrusted files, met as a user meets them: a model directory that asks to run its own code, one
whose weights or tokenizer were changed, a FIFO or a device as data, jsonl that is not UTF-8 or has
an endless line, and JSON files of the wrong shape. Each ends with one `error:` line and exit
status 2 (issue 15, items 2, 7, 8 and 9), runs no code and changes no file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tracemalloc
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from fewstep.data.config import DataConfig
from fewstep.data.corpus import load_documents
from fewstep.data.sources import markov_tokenizer
from fewstep.errors import DataError, ModelError
from fewstep.model.config import ModelConfig
from fewstep.model.denoiser import build_denoiser
from fewstep.model.model_dir import load_model_dir, save_model_dir

SMALL = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
STATES = 8  # markov states: a vocabulary of 9 with [MASK] = 8
SAMPLE = ("--steps", "2", "--num-samples", "1", "--seed", "0", "--device", "cpu")


# -------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A run directory as a teacher run leaves it: `tokenizer.json` and a model directory `model/`."""
    run = tmp_path_factory.mktemp("untrusted") / "run"
    tokenizer = markov_tokenizer(STATES)
    torch.manual_seed(0)
    model = build_denoiser(SMALL, tokenizer, STATES, seq_len=16)
    save_model_dir(model, tokenizer, run / "model", {"seq_len": 16, "noise_schedule": "loglinear",
                                                     "noise_eps": 1e-3, "data_fingerprint": "test"})
    tokenizer.backend_tokenizer.save(str(run / "tokenizer.json"))
    return run


@pytest.fixture
def run_dir(pristine, tmp_path) -> Path:
    """A fresh copy of the run, to tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "run"))


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path: what must not change."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def one_error(result, *words: str) -> str:
    """Exit status 2, exactly one `error:` line holding every word, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def edit_json(file: Path, change) -> None:
    content = json.loads(file.read_text())
    file.write_text(json.dumps(change(content)))


def rewrite_weights(model: Path, change, keep_checksum: bool = False) -> None:
    """Rewrite model.safetensors with `change(tensors)`; `keep_checksum` also updates fewstep.json, as a
    careful forger would (so that only the structural check can catch it)."""
    from safetensors.torch import load_file, save_file

    weights = model / "model.safetensors"
    save_file(change(load_file(weights)), weights, metadata={"format": "pt"})
    if keep_checksum:
        digest = "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
        edit_json(model / "fewstep.json", lambda m: {**m, "checksums": {**m["checksums"], weights.name: digest}})


def ask_for_code(model: Path, marker: Path) -> None:
    """Make `model` a directory that asks to run its own code: a module that writes `marker` when
    imported (and otherwise is a working ModernBERT), named in config.json's auto_map, and the old
    `"trust_remote_code": true` in fewstep.json."""
    (model / "evil.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('the directory ran its own code')\n"
        "from transformers import ModernBertConfig, ModernBertForMaskedLM\n\n\n"
        "class EvilConfig(ModernBertConfig):\n    pass\n\n\n"
        "class EvilModel(ModernBertForMaskedLM):\n    config_class = EvilConfig\n"
    )
    edit_json(model / "config.json", lambda c: {**c, "auto_map": {"AutoConfig": "evil.EvilConfig",
                                                                   "AutoModelForMaskedLM": "evil.EvilModel"}})
    edit_json(model / "fewstep.json", lambda m: {**m, "trust_remote_code": True})


# ------------------------------------------------------------------------ item 2: remote code
@pytest.mark.slow
def test_a_model_dir_asking_to_run_its_code_is_refused_and_nothing_runs(run_dir, tmp_path):
    marker, out = tmp_path / "marker", tmp_path / "samples.jsonl"
    ask_for_code(run_dir / "model", marker)
    before = checksums(run_dir)
    one_error(run_cli("sample", str(run_dir / "model"), *SAMPLE, "--out", str(out)),
              "evil.py", "auto_map", "--trust-remote-code")
    one_error(run_cli("generate", str(run_dir / "model")), "--trust-remote-code")
    assert not marker.exists() and not out.exists()
    assert checksums(run_dir) == before


def test_the_old_trust_key_alone_is_a_request_not_a_permission(run_dir, tmp_path):
    """A directory saved before `remote_code` said "trust_remote_code": true; that is never the decision."""
    edit_json(run_dir / "model" / "fewstep.json", lambda m: {**m, "trust_remote_code": True})
    with pytest.raises(ModelError, match="says it needs remote code.*--trust-remote-code"):
        load_model_dir(run_dir / "model")


def test_remote_code_runs_only_when_the_caller_trusts_it(run_dir, tmp_path):
    marker = tmp_path / "marker"
    ask_for_code(run_dir / "model", marker)
    with pytest.raises(ModelError, match="--trust-remote-code"):
        load_model_dir(run_dir / "model")
    assert not marker.exists()
    loaded = load_model_dir(run_dir / "model", trust_remote_code=True)
    assert marker.exists() and type(loaded.denoiser.backbone).__name__ == "EvilModel"


def test_saving_records_the_fact_of_remote_code_never_a_permission(run_dir):
    meta = json.loads((run_dir / "model" / "fewstep.json").read_text())
    assert meta["remote_code"] is False and "trust_remote_code" not in meta
    assert meta["checksums"]["model.safetensors"].startswith("sha256:") and len(meta["tokenizer_fingerprint"]) == 64


# ------------------------------------------------------------------------ item 7: strict loading
@pytest.mark.slow
def test_a_tensor_missing_from_the_weights_is_refused_by_name(run_dir, tmp_path):
    """Renamed in a directory from before checksums: the structure alone must catch it (it used to be
    re-initialised at random, and sampling went on)."""
    model = run_dir / "model"
    name = "model.embeddings.norm.weight"
    rewrite_weights(model, lambda t: {("renamed.weight" if k == name else k): v for k, v in t.items()})
    edit_json(model / "fewstep.json", lambda m: {k: v for k, v in m.items() if k != "checksums"})
    before = checksums(run_dir)
    one_error(run_cli("sample", str(model), *SAMPLE, "--out", str(tmp_path / "s.jsonl")),
              "missing: " + name, "unexpected: renamed.weight", "re-export")
    assert checksums(run_dir) == before and not (tmp_path / "s.jsonl").exists()


def test_a_tensor_of_another_dtype_or_shape_is_refused(run_dir):
    model = run_dir / "model"
    name = "head.dense.weight"
    rewrite_weights(model, lambda t: {**t, name: t[name].half()}, keep_checksum=True)
    with pytest.raises(ModelError, match=f"tensor {name} is stored as F16, the architecture expects float32"):
        load_model_dir(model)
    rewrite_weights(model, lambda t: {**t, name: t[name].float()[:, :16].contiguous()}, keep_checksum=True)
    with pytest.raises(ModelError, match=r"of another shape: head.dense.weight \[32, 16\] where it has \[32, 32\]"):
        load_model_dir(model)


@pytest.mark.slow
def test_overwritten_weight_bytes_are_refused_by_the_checksum(run_dir, tmp_path):
    """Bytes changed in place (same size, still a readable file) used to give all-[PAD] samples."""
    weights = run_dir / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = b"\x7f" * 4096  # inside the last tensors' data: a valid file with other numbers
    weights.write_bytes(bytes(data))
    before = checksums(run_dir)
    one_error(run_cli("sample", str(run_dir), *SAMPLE, "--out", str(tmp_path / "s.jsonl")),
              "model.safetensors does not match its checksum", "changed or corrupted", "re-export")
    assert checksums(run_dir) == before


def test_a_directory_from_before_checksums_still_loads(run_dir):
    edit_json(run_dir / "model" / "fewstep.json",
              lambda m: {k: v for k, v in m.items() if k not in ("checksums", "tokenizer_fingerprint", "remote_code")})
    assert load_model_dir(run_dir / "model").tokenizer.mask_token_id == STATES


@pytest.mark.slow
def test_a_tokenizer_from_another_corpus_is_refused_naming_the_right_one(run_dir, tmp_path):
    """Smaller: it passed check_vocab (the model's vocabulary is padded) and decoded wrongly."""
    model = run_dir / "model"
    markov_tokenizer(STATES - 3).save_pretrained(model)
    before = checksums(run_dir)
    one_error(run_cli("sample", str(model), *SAMPLE, "--out", str(tmp_path / "s.jsonl")),
              "has 6 tokens", "saved with a tokenizer of 9", f"copy {run_dir / 'tokenizer.json'}")
    assert checksums(run_dir) == before


def test_a_tokenizer_of_the_same_size_with_another_vocabulary_is_refused(run_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(STATES)} | {"[MASK]": STATES}  # same ids, other words
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[MASK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, mask_token="[MASK]").save_pretrained(run_dir / "model")
    with pytest.raises(ModelError, match="another vocabulary.*run's, which matches"):
        load_model_dir(run_dir / "model")


def test_a_fifo_in_a_model_dir_is_refused_without_opening_it(run_dir):
    model = run_dir / "model"
    (model / "tokenizer.json").unlink()
    os.mkfifo(model / "tokenizer.json")

    def hung(*_):
        raise TimeoutError("load_model_dir opened the FIFO and blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(ModelError, match="tokenizer.json is not a regular file"):
            load_model_dir(model)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------- item 8: data
@pytest.mark.slow
def test_a_fifo_as_data_path_is_refused_at_once(tmp_path):
    fifo = tmp_path / "data.fifo"
    os.mkfifo(fifo)
    result = run_cli("teacher", "teacher/text", f"data.path={fifo}", f"out_dir={tmp_path / 'o'}", timeout=120)
    one_error(result, str(fifo), "FIFO", "regular file")


@pytest.mark.parametrize("source", ["text", "jsonl"])
def test_a_device_or_directory_as_data_is_refused(tmp_path, source):
    with pytest.raises(DataError, match="a device or socket, not a regular file"):
        load_documents(DataConfig(source=source, path="/dev/zero"))
    with pytest.raises(DataError, match="is a directory"):
        load_documents(DataConfig(source=source, path=str(tmp_path)))


@pytest.mark.slow
def test_jsonl_that_is_not_utf8_names_the_line(tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_bytes(b'{"text": "one"}\n\n{"text": "two"}\n{"text": "caf\xe9"}\n')
    result = run_cli("teacher", "teacher/text", "data.source=jsonl", f"data.path={data}", f"out_dir={tmp_path / 'o'}")
    one_error(result, f"{data} line 4", "not UTF-8")


def test_a_huge_jsonl_line_is_read_bounded(tmp_path):
    """One 10 MB line with data.max_bytes=1000: refused after about 1 MB, never read whole."""
    data = tmp_path / "one_line.jsonl"
    data.write_bytes(b'{"text": "' + b"a" * 10_000_000 + b'"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="line 1 is longer than .* data.max_bytes=1000"):
            load_documents(DataConfig(source="jsonl", path=str(data), max_bytes=1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, peak


def test_a_jsonl_line_within_the_cap_keeps_the_documents_head(tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": "é" * 5000}) + "\n" + json.dumps({"text": "next"}) + "\n")
    assert load_documents(DataConfig(source="jsonl", path=str(data), max_bytes=101)) == ["é" * 50]


# ----------------------------------------------------------------------- item 9: JSON of a wrong shape
@pytest.mark.slow
def test_a_fewstep_json_of_the_wrong_shape_is_one_error_line(run_dir, tmp_path):
    meta = run_dir / "model" / "fewstep.json"
    meta.write_text("[1, 2, 3]")
    one_error(run_cli("sample", str(run_dir), *SAMPLE, "--out", str(tmp_path / "s.jsonl")),
              str(meta), "holds a JSON list, not an object")


@pytest.mark.parametrize("change, words", [
    (lambda m: {k: v for k, v in m.items() if k != "vocab_size"}, "has no 'vocab_size'"),
    (lambda m: {**m, "mask_id": "8"}, "'mask_id' is \"8\", expected an integer"),
    (lambda m: {**m, "mask_id": True}, "'mask_id' is true, expected an integer"),
    (lambda m: {**m, "checksums": ["sha256:0"]}, "'checksums' is"),
    (lambda m: {**m, "data": ["markov"]}, "'data' is [\"markov\"], expected an object or null"),
])
def test_fewstep_json_fields_of_the_wrong_type_are_named(run_dir, change, words):
    edit_json(run_dir / "model" / "fewstep.json", change)
    with pytest.raises(ModelError) as error:
        load_model_dir(run_dir / "model")
    assert words in str(error.value) and "fewstep.json" in str(error.value) and "\n" not in str(error.value)


def _scheduler_config(model: Path, **fields) -> Path:
    from fewstep.samplers.scheduler_config import FORMAT, SCHEDULER_FILE, model_identity

    meta = json.loads((model / "fewstep.json").read_text())
    content = {"format": FORMAT, "model": model_identity(meta), "steps": 2,
               "schedule": {"name": "loglinear"}, "policy": {"name": "random"}, **fields}
    (model / SCHEDULER_FILE).write_text(json.dumps(content))
    return model / SCHEDULER_FILE


@pytest.mark.slow
def test_a_scheduler_config_of_the_wrong_shape_is_one_error_line(run_dir, tmp_path):
    path = _scheduler_config(run_dir / "model", schedule=["learned"])
    before = checksums(run_dir)
    one_error(run_cli("sample", str(run_dir), *SAMPLE, "--sampler", "learned", "--out", str(tmp_path / "s.jsonl")),
              str(path), "'schedule' is", "expected an object")
    assert checksums(run_dir) == before


@pytest.mark.parametrize("fields, words", [
    ({"steps": "2"}, "'steps' is \"2\", expected an integer"),
    ({"schedule": {"name": "learned", "fractions": "0,1"}}, "schedule.fractions is"),
    ({"schedule": {"name": "learned", "fractions": [0, "half", 1]}}, "schedule.fractions holds"),
    ({"policy": {"name": 3}}, "policy.name is 3"),
    ({"policy": {"name": "learned", "hidden": 8, "threshold": 0.5, "weights": "../../x.safetensors"}},
     "expected a file name inside the model directory"),
    ({"policy": {"name": "nosuch"}}, "unknown policy"),
])
def test_scheduler_config_fields_of_the_wrong_shape_are_named(run_dir, fields, words):
    from fewstep.errors import RunError
    from fewstep.samplers.scheduler_config import load_learned

    model = run_dir / "model"
    path = _scheduler_config(model, **fields)
    with pytest.raises(RunError) as error:
        load_learned(model, json.loads((model / "fewstep.json").read_text()), 2)
    assert words in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)
    (path).write_text('{"a": 1')
    with pytest.raises(RunError, match="is not valid JSON"):
        load_learned(model, {}, 2)


def _row(**fields):
    return {"model": "teacher", "sampler": "ancestral", "schedule": "loglinear", "steps": 8, "tokens_per_s": 100.0,
            "quality": {"gen_nll": 2.0, "entropy": 3.0}, **fields}


@pytest.mark.slow
def test_a_tradeoff_json_of_the_wrong_shape_is_one_error_line(tmp_path):
    path = tmp_path / "tradeoff.json"
    path.write_text(json.dumps({"rows": [_row(), _row(steps="4")]}))
    before = checksums(tmp_path)
    one_error(run_cli("tune", str(path), "--target", "gen_nll:1.05", "--reference", "teacher@8"),
              str(path), "row 1: 'steps' is \"4\", expected an integer")
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("payload, words", [
    ([_row()], "holds a JSON list, not an object"),
    ({"rows": {"0": _row()}}, "'rows' is a dict, not a list"),
    ({"rows": []}, "has no rows"),
    ({"rows": ["teacher@8"]}, "row 0 is a str, not an object"),
    ({"rows": [{k: v for k, v in _row().items() if k != "tokens_per_s"}]}, "row 0 has no 'tokens_per_s'"),
    ({"rows": [_row(quality={"gen_nll": 2.0})]}, "row 0: 'quality' has no 'entropy'"),
    ({"rows": [_row(quality={"gen_nll": "low", "entropy": 3.0})]}, "quality 'gen_nll' is \"low\""),
])
def test_tradeoff_json_of_the_wrong_shape_is_named(tmp_path, payload, words):
    from fewstep.errors import RunError
    from fewstep.tradeoff.tune import load_tradeoff

    path = tmp_path / "tradeoff.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(RunError) as error:
        load_tradeoff(path)
    assert words in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)
