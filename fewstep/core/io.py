"""Safe file I/O: atomic writes (a crash mid-write never replaces a good file with a partial one), and
checkpoints read without unpickling code (`load_checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fewstep.errors import CheckpointError, OwnershipError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_save",
    "atomic_replace_dir",
    "MARKER",
    "CHECKPOINT_GLOBALS",
    "load_checkpoint",
    "read_json_object",
]

MARKER = ".fewstep-output"  # the file that says fewstep made a directory (see ownership.py)
# what a directory of fewstep's own holds: atomic_replace_dir replaces nothing else by default
OWN_FILES = (MARKER, "fewstep.json", "fewstep_evaluator.json")
# Globals a fewstep checkpoint may hold beyond tensors, containers, numbers and strings. Teacher,
# distillation and evaluator checkpoints (Lightning's loops, optimiser, schedulers, EMA and callback
# state) need none: tests/test_ownership.py saves each kind and checks. Anything else is refused.
CHECKPOINT_GLOBALS: tuple[Any, ...] = ()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync it, then rename it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _refuse_foreign(path: Path) -> None:
    """Only an empty directory or one of fewstep's own (`OWN_FILES`) may be replaced."""
    if not path.is_dir():
        raise OwnershipError(f"{path} is a file, not a directory fewstep wrote; it is not replaced")
    if any(path.iterdir()) and not any((path / name).is_file() for name in OWN_FILES):
        raise OwnershipError(f"{path} is a directory fewstep did not write; it is not replaced. Move it away or "
                             "choose another output directory")


def atomic_replace_dir(path: str | Path, fill: Callable[[Path], None],
                       check: Callable[[Path], None] = _refuse_foreign) -> None:
    """Build a directory with `fill(tmp_dir)` beside `path`, then swap it in.

    The old directory is kept until the new one is complete, so an interrupted export leaves
    either the old directory or the new one, never a mixture. An existing `path` is first passed to
    `check`, which raises unless it may be replaced (by default: empty, or holding fewstep's files).
    A `.NAME.old` left beside it by an interrupted swap is deleted only if it passes `check` too.
    """
    path = Path(path)
    old = path.parent / f".{path.name}.old"
    if path.exists() or path.is_symlink():
        check(path)
    if old.is_symlink():
        raise OwnershipError(f"{old} is a link where fewstep keeps the previous {path.name} during a swap; it is "
                             "not followed or replaced. Move it away and run again")
    if old.exists():
        check(old)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(tmp)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a `.ckpt` with `torch.load(weights_only=True)`: tensors and plain containers only, never code.

    The only other objects allowed are `CHECKPOINT_GLOBALS`; a file whose pickle names anything
    else is refused with the names it asks for, without running any of it. `mmap` maps the tensors
    instead of reading them (a cheap check of a large file).
    """
    import pickle

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_GLOBALS)):
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        try:
            names = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)[:4])
        except Exception:  # the file is damaged as well
            names = ""
        raise CheckpointError(f"{path} holds objects that are not plain tensors/containers (pickled code"
                              f"{': ' + names if names else ''}); fewstep does not load it") from error
    except FileNotFoundError as error:
        raise CheckpointError(f"{path} does not exist") from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:  # truncated zip, not a torch file, unreadable
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or damaged: "
                              f"{str(error).splitlines()[0][:160]})") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it holds a {type(state).__name__})")
    return state


def read_json_object(path: Path, error: type[Exception], fix: str) -> dict[str, Any]:
    """A JSON file that must hold one object; anything else raises `error` naming the file, then `fix`."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as reason:
        raise error(f"{path} is not valid JSON ({reason}); {fix}") from reason
    if not isinstance(content, dict):
        raise error(f"{path} holds a JSON {type(content).__name__}, not an object; {fix}")
    return content
