"""Untrusted files never run code, and no command destroys what it did not create (issue 15, part B).

Each test meets a defect as a user would: the CLI in a subprocess, crafted files built here, and
then the exit status, the one `error:` line and the sha256 of every file that must not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli, tiny_overrides

from fewstep.core.ownership import LOCK, MARKER, read_kind, remove_owned
from fewstep.errors import OwnershipError

# the tiny teacher's own settings: a copy of its run resumes with them
TEACHER = [*TINY, "trainer.max_steps=6", "trainer.val_every=3", "logger.wandb.mode=disabled", "optim.lr=0.001",
           "optim.ema=0.999"]


def checksums(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (a file or a directory), by path."""
    sums = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            sums[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def refused(result, *words: str) -> str:
    """Exit status 2, no traceback, and a last line `error: ...` holding every word; returns it."""
    assert result.returncode == 2, (result.returncode, result.stdout[-1000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _home(patch: pytest.MonkeyPatch, home: Path, tmp_path: Path) -> None:
    """HOME for the child processes, with caches (matplotlib's) kept out of it."""
    patch.setenv("HOME", str(home))
    patch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    patch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def run(tiny_teacher, tmp_path) -> Path:
    """A private copy of the tiny teacher's run, which a test may damage."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_teacher, copy)
    return copy


# ------------------------------------------------------------------------------------------ pickles
class Payload:
    """Pickles as a call of os.system: loading it with weights_only=False would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _crafted_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"state_dict": {}, "global_step": 1, "hook": Payload(f"touch {marker}")}, path)


def test_fewstep_checkpoints_need_no_unsafe_globals(tiny_teacher):
    """What the safe-globals list rests on: teacher checkpoints hold tensors and containers only."""
    for name in ("last.ckpt", "best.ckpt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(tiny_teacher / "checkpoints" / name) == []


@pytest.mark.slow
def test_a_checkpoint_whose_pickle_runs_code_is_never_loaded(run, tmp_path):
    proof = tmp_path / "proof"  # the payload is real: an unsafe load does run it
    _crafted_checkpoint(tmp_path / "proof.ckpt", proof)
    torch.load(tmp_path / "proof.ckpt", weights_only=False)
    assert proof.exists()

    marker = tmp_path / "pwned"
    crafted = run / "checkpoints" / "crafted.ckpt"
    _crafted_checkpoint(crafted, marker)
    out = tmp_path / "export"
    refused(run_cli("export", str(crafted), str(out)), "pickled code", "posix.system", "does not load it")
    assert not marker.exists() and not out.exists()

    shutil.copy(crafted, run / "checkpoints" / "last.ckpt")
    before = checksums(run)
    refused(run_cli("teacher", "teacher/markov", *TEACHER, f"out_dir={run}", "--resume"), "--resume",
            "pickled code")
    assert not marker.exists()
    assert checksums(run) == before  # config.yaml included: nothing is rewritten before the checks


def test_resume_from_a_truncated_checkpoint_changes_nothing(run):
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000])
    before = checksums(run)
    refused(run_cli("teacher", "teacher/markov", *TEACHER, f"out_dir={run}", "--resume"),
            "--resume", "truncated or damaged", "last.ckpt")
    assert checksums(run) == before


def test_resume_with_a_new_learning_rate_is_refused_naming_it(run):
    before = checksums(run)
    refused(run_cli("teacher", "teacher/markov", *TEACHER, f"out_dir={run}", "--resume", "optim.lr=0.5"),
            "optim.lr: 0.001 -> 0.5")
    assert checksums(run) == before


# ------------------------------------------------------------------------------------------ export
@pytest.mark.slow
def test_export_never_replaces_what_is_not_an_export(run, tmp_path):
    ckpt = str(run / "checkpoints" / "last.ckpt")
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("keep me")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    before = checksums(run, home, foreign, plain)

    refused(run_cli("export", ckpt, str(run)), "own input")  # the run the checkpoint comes from
    refused(run_cli("export", ckpt, str(run / "model")), "is a model directory, not an export directory")
    refused(run_cli("export", str(run / "model"), str(run / "model")), "own input")
    with pytest.MonkeyPatch.context() as patch:
        _home(patch, home, tmp_path)
        refused(run_cli("export", ckpt, str(home)), "home directory")
    refused(run_cli("export", ckpt, str(foreign)), "not empty", "not made by fewstep")
    refused(run_cli("export", ckpt, str(plain)), "is a file")
    refused(run_cli("export", ckpt, "/"), "filesystem root")
    refused(run_cli("export", ckpt, str(tmp_path / "x"), "--steps", "-5"), "--steps", ">= 1")
    assert checksums(run, home, foreign, plain) == before and not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.old"))


def test_a_leftover_old_directory_is_deleted_only_if_it_passes_the_same_check(tmp_path):
    # `.NAME.old` is where a swap keeps the previous directory; an interrupted swap may leave one
    from fewstep.core.io import atomic_replace_dir

    def fill(tmp: Path) -> None:
        (tmp / "fewstep.json").write_text("{}")

    target = tmp_path / "model"
    foreign = tmp_path / ".model.old"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    before = checksums(foreign)
    with pytest.raises(OwnershipError, match=r"\.model\.old is a directory fewstep did not write"):
        atomic_replace_dir(target, fill)
    assert checksums(foreign) == before and not target.exists() and not list(tmp_path.glob(".*.tmp"))

    linked = tmp_path / ".other.old"
    linked.symlink_to(foreign, target_is_directory=True)
    with pytest.raises(OwnershipError, match="is a link"):
        atomic_replace_dir(tmp_path / "other", fill)
    assert checksums(foreign) == before and linked.is_symlink()

    asked = []  # a custom check (the export's) is asked about the leftover as well

    def refuse(path: Path) -> None:
        asked.append(path.name)
        raise OwnershipError("refused by the check")

    with pytest.raises(OwnershipError, match="^refused by the check$"):
        atomic_replace_dir(target, fill, check=refuse)
    assert asked == [".model.old"] and checksums(foreign) == before

    shutil.rmtree(foreign)  # a leftover of fewstep's own is cleared by the next swap
    linked.unlink()
    atomic_replace_dir(target, fill)
    shutil.copytree(target, foreign)
    atomic_replace_dir(target, fill)
    assert (target / "fewstep.json").is_file() and not foreign.exists()


@pytest.mark.slow
def test_an_export_is_replaced_only_with_overwrite(run, tmp_path):
    out = tmp_path / "export"
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert run_cli("export", ckpt, str(out), "--steps", "4").returncode == 0
    assert read_kind(out) == "export" and json.loads((out / MARKER).read_text())["kind"] == "export"
    before = checksums(out)
    refused(run_cli("export", ckpt, str(out), "--steps", "2"), "--overwrite")
    assert checksums(out) == before
    again = run_cli("export", ckpt, str(out), "--steps", "2", "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "fewstep_generation.json").read_text())["steps"] == 2
    (out / MARKER).unlink()  # an export from before markers: recognised by its files
    assert read_kind(out) == "export"
    assert run_cli("export", ckpt, str(out), "--overwrite").returncode == 0


# ------------------------------------------------------------------------------------------ sample --out
@pytest.mark.slow
def test_sample_out_never_replaces_a_file_it_did_not_write(run, tmp_path):
    model = run / "model"
    before = checksums(run)
    for target in (run / "checkpoints" / "last.ckpt", model / "model.safetensors", model / "fewstep.json"):
        refused(run_cli("sample", str(run), "--steps", "2", "--num-samples", "1", "--out", str(target)),
                "already exists", "--overwrite")
        refused(run_cli("sample", str(run), "--steps", "2", "--num-samples", "1", "--out", str(target),
                        "--overwrite"), "not a samples file", "even with --overwrite")
    assert checksums(run) == before

    samples = tmp_path / "samples.jsonl"
    args = ["sample", str(run), "--steps", "2", "--num-samples", "2", "--out", str(samples)]
    assert run_cli(*args).returncode == 0
    first = checksums(samples)
    refused(run_cli(*args, "--seed", "1"), "already exists")
    assert checksums(samples) == first
    assert run_cli(*args, "--seed", "1", "--overwrite").returncode == 0
    assert checksums(samples) != first

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(run_cli("sample", str(run), "--steps", "2", "--num-samples", "1", "--out", str(blocker / "s.jsonl")),
            "cannot write --out")
    refused(run_cli("sample", str(run), "--steps", "2", "--temperature", "nan"), "--temperature")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_cuda_device_without_a_gpu_is_one_line(run, tmp_path):
    refused(run_cli("sample", str(run), "--steps", "2", "--device", "cuda"), "--device cuda", "no CUDA GPU")
    out = tmp_path / "t"
    refused(run_cli("teacher", "teacher/markov", *tiny_overrides(out), "trainer.accelerator=cuda"),
            "trainer.accelerator=cuda", "trainer.accelerator=cpu")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ run out_dir
@pytest.mark.slow
def test_out_dir_guard_refuses_roots_home_foreign_and_finished_runs(run, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "main.py").write_text("print('mine')")
    (run / "checkpoints" / "last.ckpt").unlink()  # a finished run whose checkpoints were pruned
    (run / "checkpoints" / "best.ckpt").unlink()
    before = checksums(run, foreign)
    with pytest.MonkeyPatch.context() as patch:
        _home(patch, home, tmp_path)
        refused(run_cli("teacher", "teacher/markov", *tiny_overrides(home)), "home directory")
    refused(run_cli("teacher", "teacher/markov", *tiny_overrides("/")), "filesystem root")
    refused(run_cli("teacher", "teacher/markov", *tiny_overrides(foreign)), "not empty")
    refused(run_cli("teacher", "teacher/markov", *TEACHER, f"out_dir={run}"), "already holds a run", "model/")
    refused(run_cli("teacher", "teacher/markov", *TEACHER, f"out_dir={run}", "--resume"), "no checkpoint")
    assert checksums(run, foreign) == before and list(home.iterdir()) == []


def test_a_run_in_progress_holds_a_lock_that_a_second_run_respects(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"kind": "teacher-run"}))
    import socket

    # what a first run that has not written its first checkpoint leaves: its marker and its live lock
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    before = checksums(out)
    refused(run_cli("teacher", "teacher/markov", *tiny_overrides(out)), "in use by a running fewstep",
            str(os.getpid()))
    assert checksums(out) == before


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_and_resume_leaves_no_versioned_checkpoint(run):
    import socket

    (run / LOCK).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # no such process
    result = run_cli("teacher", "teacher/markov", *TEACHER, "trainer.max_steps=8", f"out_dir={run}", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stale lock" in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no last-v1.ckpt
    assert not (run / LOCK).exists()  # released at the end


@pytest.mark.slow
def test_bad_values_are_one_line_and_create_nothing(tmp_path):
    layer = tmp_path / "layer.yaml"
    layer.write_text("optim:\n  lr: ???\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = tmp_path / "never"
    cases = [
        (["optim.lr=nan"], "optim.lr=nan"),
        (["optim.lr=-0.001"], "optim.lr=-0.001"),
        (["data.seq_len=1000000000"], "data.seq_len=1000000000"),
        (["optim.lr=???"], "'optim.lr' is ???"),
        (["--with", str(layer)], f"in {layer}"),
    ]
    for extra, words in cases:
        refused(run_cli("teacher", "teacher/markov", *tiny_overrides(out), *extra), words)
        assert not out.exists()
    refused(run_cli("teacher", "teacher/markov", *tiny_overrides(blocker / "run")), "cannot write into")


# ------------------------------------------------------------------------------------------ quickstart
def test_quickstart_fresh_deletes_only_a_quickstart_directory(tmp_path):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("\\chapter{}")
    before = checksums(foreign)
    refused(run_cli("quickstart", "--out", str(foreign), "--fresh"), "not made by fewstep")
    assert checksums(foreign) == before

    legacy = tmp_path / "old-quickstart"  # written before markers: only quickstart's own entries
    (legacy / "teacher").mkdir(parents=True)
    (legacy / "quickstart.yaml").write_text("seed: 0\n")
    (legacy / "teacher" / "config.yaml").write_text("x: 1\n")
    remove_owned(legacy, "quickstart", ("quickstart.yaml", "teacher"))
    assert not legacy.exists()
    (legacy / "teacher").mkdir(parents=True)
    (legacy / "quickstart.yaml").write_text("seed: 0\n")
    (legacy / "my-notes.txt").write_text("keep")
    with pytest.raises(OwnershipError, match="my-notes.txt"):
        remove_owned(legacy, "quickstart", ("quickstart.yaml", "teacher"))
    assert (legacy / "my-notes.txt").read_text() == "keep"


# ------------------------------------------------------------------------------------------ bench
@pytest.mark.slow
def test_bench_replaces_an_earlier_tradeoff_only_with_overwrite(tiny_teacher, tmp_path):
    config = tmp_path / "bench.yaml"
    out = tmp_path / "bench"
    config.write_text(f"out_dir: {out}\nmodels:\n  - name: teacher\n    path: {tiny_teacher}\nsamplers: [ancestral]\n"
                      "steps: [2]\nnum_samples: 4\nrepeats: 1\nlogger:\n  wandb:\n    mode: disabled\n")
    first = run_cli("bench", str(config))
    assert first.returncode == 0, first.stderr[-3000:]
    before = checksums(out)
    refused(run_cli("bench", str(config)), "tradeoff.json", "--overwrite")
    assert checksums(out) == before
    again = run_cli("bench", str(config), "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    refused(run_cli("bench", str(config), f"out_dir={tiny_teacher}"), "own input")


def test_earlier_fewstep_directories_are_recognised_by_their_files(tiny_teacher, tmp_path):
    legacy = tmp_path / "old-run"
    shutil.copytree(tiny_teacher, legacy)
    (legacy / MARKER).unlink()
    assert read_kind(legacy) == "teacher-run"
    assert read_kind(legacy / "model") == "model"
    assert read_kind(tmp_path) is None
