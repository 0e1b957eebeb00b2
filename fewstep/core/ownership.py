"""Who owns an output: the one rule every fewstep command that writes follows.

A directory fewstep creates carries a marker, `.fewstep-output`, holding JSON
`{"kind": ..., "created": ..., "fewstep_version": ...}`. A command writes only into a directory
it creates now, an empty directory, or one that carries fewstep's marker of the same kind. It
refuses a non-empty foreign directory, a filesystem root, the home directory, a file where a
directory should be, and a directory that one of its own inputs lives in (exporting into the run
a checkpoint comes from, distilling into the teacher's run). It never replaces a file it did not
write. A run in progress holds `.fewstep-lock` (its pid inside), which a second run respects.

Directories written by fewstep before markers existed are recognised by their files (`legacy_kind`):
a run has `config.yaml` beside `checkpoints/`, `model/` or `data.json` (its kind read from the
saved config's sections), an export has `fewstep.json` and `fewstep_generation.json`, a bench
`tradeoff.json`, a quickstart `quickstart.yaml`. Such a directory is treated as carrying the
marker of that kind, and receives the marker the first time a command of that kind writes to it,
so existing runs resume (`--resume`) and existing exports are replaced (`--overwrite`) as before.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fewstep.core.io import MARKER, atomic_write_text
from fewstep.errors import OwnershipError
from fewstep.version import __version__

__all__ = ["OwnershipError", "KINDS", "MARKER", "LOCK", "read_kind", "legacy_kind", "check_dir", "claim_dir",
           "check_file", "remove_owned", "mark_dir", "input_paths", "RunLock", "is_worker_process"]

KINDS = ("teacher-run", "distill-run", "evaluator-run", "export", "bench", "quickstart")
LOCK = ".fewstep-lock"
MODEL = "model"  # a model directory (fewstep.json): an input or part of a run, never a command's target


# ------------------------------------------------------------------------------------------ kinds
def _marker_kind(path: Path) -> str | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def _run_kind(config: Path) -> str | None:
    """The kind of a run from the top-level sections of its saved `config.yaml`."""
    try:
        text = config.read_text()
    except OSError:
        return None
    sections = {line.split(":", 1)[0] for line in text.splitlines() if line and not line[0].isspace() and ":" in line}
    if {"teacher", "rounds"} <= sections:
        return "distill-run"
    if "models" in sections and "samplers" in sections:
        return "bench"
    if "diffusion" in sections:
        return "teacher-run"
    if {"data", "model", "optim"} <= sections:
        return "evaluator-run"
    return None


def legacy_kind(path: Path) -> str | None:
    """The kind of a directory an earlier fewstep wrote without a marker, from the files it holds."""
    if (path / "quickstart.yaml").is_file():
        return "quickstart"
    if (path / "tradeoff.json").is_file():
        return "bench"
    if (path / "fewstep.json").is_file():
        return "export" if (path / "fewstep_generation.json").is_file() else MODEL
    if (path / "fewstep_evaluator.json").is_file():
        return MODEL
    config = path / "config.yaml"
    if config.is_file() and any((path / name).exists() for name in ("checkpoints", "model", "data.json")):
        return _run_kind(config)
    return None


def read_kind(path: str | Path) -> str | None:
    """The kind of fewstep output `path` holds: its marker's, else what its files say (`legacy_kind`)."""
    path = Path(path)
    if not path.is_dir():
        return None
    return _marker_kind(path) or legacy_kind(path)


# ------------------------------------------------------------------------------------------ checks
def _protected(path: Path) -> str | None:
    """Why `path` may never be an output directory: a filesystem root or the home directory."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "a filesystem root"
    try:
        home = Path.home().resolve()
    except RuntimeError:  # no home directory known
        return None
    return "your home directory" if resolved == home else None


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_sources(path: Path, sources: Iterable[str | Path]) -> None:
    target = path.resolve()
    for source in sources:
        source = Path(source).resolve()
        if _inside(source, target):
            raise OwnershipError(f"{path} holds this command's own input {source}; writing there would replace "
                                 "it. Choose another output directory; nothing was changed.")


def input_paths(*values: str | Path | None) -> tuple[Path, ...]:
    """The local files and directories among a command's inputs (hub ids and unset values dropped)."""
    return tuple(Path(v) for v in values if v and Path(v).exists())


def _entries(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name not in (MARKER, LOCK)]


def check_dir(path: str | Path, kind: str, sources: Iterable[str | Path] = ()) -> str | None:
    """Refuse `path` as the output directory of a `kind` command unless fewstep may write there; writes nothing.

    Returns the kind found there (`kind` itself for a marked or earlier fewstep output of the same
    kind, None for a directory that does not exist or is empty).
    """
    path = Path(path)
    reason = _protected(path)
    if reason:
        raise OwnershipError(f"{path} is {reason}; fewstep writes only into a directory of its own. Give a new "
                             "directory (e.g. runs/NAME); nothing was changed.")
    _check_sources(path, sources)
    if not path.exists():
        return None
    if not path.is_dir():
        raise OwnershipError(f"{path} is a file, not a directory; fewstep does not replace it. Give a new directory; "
                             "nothing was changed.")
    found = read_kind(path)
    if found == kind:
        return kind
    if found is not None:
        what = "a model directory" if found == MODEL else f"a fewstep {found} directory"
        raise OwnershipError(f"{path} is {what}, not {_a(kind)} directory; fewstep does not write {_a(kind)} into "
                             "it. Give another directory; nothing was changed.")
    try:
        entries = _entries(path)
    except OSError as error:
        raise OwnershipError(f"cannot read {path}: {error.strerror}; give another directory") from error
    if entries:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise OwnershipError(f"{path} is not empty ({shown}) and was not made by fewstep; fewstep writes only into a "
                             "new or empty directory or one of its own. Give another directory; nothing was changed.")
    return None


def mark_dir(path: str | Path, kind: str) -> None:
    """Write the marker that says fewstep made `path`, a `kind` output."""
    _write_marker(Path(path), kind)


def _write_marker(path: Path, kind: str) -> None:
    atomic_write_text(path / MARKER, json.dumps({"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                 "fewstep_version": __version__}) + "\n")


def claim_dir(path: str | Path, kind: str, sources: Iterable[str | Path] = ()) -> bool:
    """`check_dir`, then create `path` if needed and mark it as a `kind` output; returns whether it was created."""
    path = Path(path)
    check_dir(path, kind, sources)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if _marker_kind(path) != kind:
            _write_marker(path, kind)
    except OSError as error:
        raise OwnershipError(f"cannot write into {path}: {error.strerror}; give a directory you can write to") \
            from error
    return created


def check_file(path: str | Path, overwrite: bool, ours: Any, what: str) -> None:
    """Refuse to write the file `path` over anything but an earlier output of the same `what` (with `overwrite`).

    `ours(path) -> bool` says whether an existing file is such an output (fewstep's own format).
    """
    path = Path(path)
    if path.is_dir():
        raise OwnershipError(f"{path} is a directory; give a file name")
    if not path.exists():
        return
    if not overwrite:
        raise OwnershipError(f"{path} already exists; pass --overwrite to replace it, or give a new file name")
    if path.suffix in (".ckpt", ".safetensors", ".pt", ".bin") or not ours(path):
        raise OwnershipError(f"{path} is not {what} that fewstep wrote; fewstep does not replace it, even with "
                             "--overwrite. Give a new file name")


def remove_owned(path: str | Path, kind: str, allowed: Iterable[str]) -> None:
    """Delete `path`, a `kind` directory: it must carry that marker, or (an earlier fewstep's) hold only `allowed`."""
    path = Path(path)
    check_dir(path, kind)
    if not path.exists():
        return
    if _marker_kind(path) != kind:
        extra = sorted(set(_entries(path)) - set(allowed))
        if extra:
            raise OwnershipError(f"{path} holds files that fewstep's {kind} does not write ({', '.join(extra[:3])}); "
                                 "it is not deleted. Remove it yourself or give another directory")
    shutil.rmtree(path)


# ------------------------------------------------------------------------------------------ lock
def is_worker_process() -> bool:
    """Whether this is a data-parallel process other than the first (it writes nothing of its own)."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        if os.environ.get(name, "0") not in ("", "0"):
            return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and os.environ.get("SLURM_PROCID", "0") != "0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """`.fewstep-lock` in a run directory: created with O_EXCL, holding the pid; removed on release.

    A lock whose process is gone (same host, dead pid; or the same SLURM job, requeued) is stale:
    it is taken over with a warning. A live one makes `acquire` refuse with one line.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK
        self.held = False

    def _owner(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _stale(self, owner: dict[str, Any]) -> bool:
        job = os.environ.get("SLURM_JOB_ID")
        if job and owner.get("slurm_job") == job:
            return True  # the same job, requeued: its earlier incarnation is gone
        if owner.get("host") != socket.gethostname():
            return False
        pid = owner.get("pid")
        return isinstance(pid, int) and (pid == os.getpid() or not _alive(pid))

    def check(self) -> None:
        """Refuse if another live process holds the lock; writes nothing."""
        if self.path.exists():
            owner = self._owner()
            if owner and not self._stale(owner):
                raise OwnershipError(
                    f"{self.path.parent} is in use by a running fewstep (pid {owner.get('pid')} on "
                    f"{owner.get('host')}); wait for it to finish, or give another out_dir. If that process is "
                    f"gone, delete {self.path}")

    def acquire(self) -> None:
        self.check()
        if self.path.exists():
            warnings.warn(f"taking over the stale lock {self.path} (its process {self._owner().get('pid')} is gone)",
                          stacklevel=2)
            self.path.unlink(missing_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as error:  # another run took it between the check and now
            raise OwnershipError(f"{self.path.parent} was just taken by another fewstep run; give another out_dir") \
                from error
        except OSError as error:
            raise OwnershipError(f"cannot write into {self.path.parent}: {error.strerror}") from error
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(owner))
        self.held = True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
