"""Loadable model directories: `config.json`, `model.safetensors`, tokenizer files, `fewstep.json`.

A directory Hugging Face users recognise (the backbone loads with `AutoModelForMaskedLM`, or its
family's Auto class for a real teacher's student), plus `fewstep.json` with what fewstep needs to
sample from it: mask id, model family, noise schedule, the data config and its fingerprint, a
sha256 of every weights file and a fingerprint of the tokenizer's vocabulary. A LoRA student is
saved merged, as plain weights; a remote-code family's modeling files are copied in, so the
directory loads without the hub. Written atomically: an interrupted save leaves the previous
directory intact.

Loading treats the directory as untrusted: it never runs the directory's Python code unless the
caller says so (`trust_remote_code`, the user's `--trust-remote-code`), every tensor the
architecture expects must be in the weights file with its shape and dtype, the weights must match
their checksum, and the tokenizer must be the one the model was saved with.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.core.io import atomic_replace_dir, read_json_object
from fewstep.data.tokens import tokenizer_fingerprint
from fewstep.errors import ModelError
from fewstep.model.denoiser import Denoiser, check_tokenizer_identity, check_vocab
from fewstep.model.families import dtype_kwargs, family_for
from fewstep.model.lora import is_lora, merged_copy
from fewstep.version import __version__

__all__ = ["is_model_dir", "FORMAT", "LoadedModel", "save_model_dir", "load_model_dir", "resolve_model_dir",
           "weights_checksums"]

FORMAT = "fewstep-denoiser/1"
META_FILE = "fewstep.json"
WEIGHTS_FILE = "model.safetensors"
TIME_FILE = "time_embedding.safetensors"
REEXPORT = "re-export the model"
# fewstep.json keys that are read, with the JSON types they must have (None: may be null)
_REQUIRED = {"format": (str,), "mask_id": (int,), "vocab_size": (int,)}
_OPTIONAL = {"family": (str, type(None)), "time_conditioning": (bool,), "seq_len": (int,), "steps": (int,),
             "noise_schedule": (str,), "noise_eps": (int, float), "sampler": (str,), "schedule": (str,),
             "data": (dict, type(None)), "data_fingerprint": (str, type(None)), "checksums": (dict,),
             "tokenizer_fingerprint": (str,), "remote_code": (bool,), "trust_remote_code": (bool,),
             "weights": (str,), "val_nelbo": (dict,)}  # which weights were exported (ema | raw) and why


@dataclass
class LoadedModel:
    denoiser: Denoiser
    tokenizer: Any
    meta: dict[str, Any]
    path: Path | None = None  # the model directory it came from, if any


# -------------------------------------------------------------------------------------------- saving
def save_model_dir(denoiser: Denoiser, tokenizer: Any, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write `denoiser` and `tokenizer` as a model directory at `path` (replacing it atomically).

    `fewstep.json` records whether the directory ships model code (`remote_code`) as a fact for
    the reader, never as permission: loading it still needs the caller's `trust_remote_code`.
    """
    from safetensors.torch import load_file, save_file


    if is_lora(denoiser.backbone):  # merged on a copy: the training student keeps its adapters
        denoiser = merged_copy(denoiser)
    meta = {k: v for k, v in meta.items() if k != "trust_remote_code"}  # a decision is never saved
    meta = {"format": FORMAT, "fewstep_version": __version__, "mask_id": denoiser.mask_id,
            "vocab_size": denoiser.vocab_size, "time_conditioning": denoiser.time_conditioning, **meta,
            "remote_code": _ships_code(denoiser), "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)}
    if denoiser.adapter is not None:
        meta["family"] = denoiser.family

    def fill(tmp: Path) -> None:
        # one weights file (transformers < 5 shards above 5 GB by default); remote code is copied in by
        # save_pretrained (custom_object_save) since the model was loaded with trust_remote_code
        denoiser.backbone.save_pretrained(tmp, safe_serialization=True, max_shard_size="1000GB")
        _copy_remote_code(denoiser.backbone, tmp)
        weights = tmp / WEIGHTS_FILE
        tensors = load_file(weights)
        header = {"format": "pt", "fewstep_format": FORMAT, "fewstep_version": __version__,
                  "mask_id": str(denoiser.mask_id)}
        header.update({k: json.dumps(v) if not isinstance(v, str) else v
                       for k, v in meta.items() if k in ("steps", "schedule", "sampler", "data_fingerprint",
                                                         "noise_schedule")})
        save_file(tensors, weights, metadata=header)
        if denoiser.time_embedding is not None:
            save_file({k: v.contiguous() for k, v in denoiser.time_embedding.state_dict().items()}, tmp / TIME_FILE)
        tokenizer.save_pretrained(tmp)
        full = {**meta, "checksums": weights_checksums(tmp)}
        (tmp / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))

    path = Path(path)
    atomic_replace_dir(path, fill)
    return path


def _ships_code(denoiser: Denoiser) -> bool:
    """Whether the saved directory will carry model code that loading it would run."""
    family_code = denoiser.adapter is not None and denoiser.adapter.remote_code
    return bool(family_code or getattr(denoiser.backbone.config, "auto_map", None))


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def weights_checksums(folder: str | Path) -> dict[str, str]:
    """sha256 of each weights file of a model directory, by file name (what `fewstep.json` records)."""
    folder = Path(folder)
    return {name: _sha256(folder / name) for name in (WEIGHTS_FILE, TIME_FILE) if (folder / name).is_file()}


def _copy_remote_code(backbone: Any, folder: Path) -> None:
    """Make sure every module named in config.json's auto_map is in `folder` (a saved remote-code model)."""
    import shutil
    import sys

    needed = _auto_map_modules(getattr(backbone.config, "auto_map", None) or {})
    source = sys.modules.get(type(backbone).__module__)
    source_dir = Path(source.__file__).parent if source is not None and source.__file__ else None
    for name in needed:
        if not (folder / f"{name}.py").is_file():
            if source_dir is None or not (source_dir / f"{name}.py").is_file():
                raise ModelError(f"cannot find the model code {name}.py named in config.json's auto_map; the saved "
                                 "directory would not load")
            shutil.copy(source_dir / f"{name}.py", folder / f"{name}.py")


def _auto_map_modules(auto_map: dict[str, Any]) -> set[str]:
    """The local module names an `auto_map` refers to (`module.Class`; `repo--module.Class` is remote)."""
    return {str(ref).split(".")[0] for refs in auto_map.values()
            for ref in (refs if isinstance(refs, (list, tuple)) else [refs]) if ref and "--" not in str(ref)}


# ----------------------------------------------------------------------------------------- finding
def _find_model_dir(path: Path) -> Path | None:
    """`path` itself if it is a model directory, its `model/` if it is a run directory, else None."""
    return next((d for d in (path, path / "model") if (d / META_FILE).is_file()), None)


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` is a fewstep model directory or a run directory holding one at `model/`."""
    return _find_model_dir(Path(path)) is not None


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a run directory holding one at `model/`."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model directory {path} does not exist")
    found = _find_model_dir(path)
    if found is not None:
        return found
    raise ModelError(
        f"{path} is not a fewstep model directory (no {META_FILE}); pass a teacher or distillation run's "
        "out_dir, its model/ folder, or a directory written by `fewstep export`"
    )


# -------------------------------------------------------------------------------- untrusted reading
def _check_regular_files(path: Path) -> None:
    """Every entry is a regular file or a folder: a FIFO or device in place of a file would block or never end."""
    for entry in path.iterdir():
        try:
            mode = os.stat(entry).st_mode
        except OSError as error:  # e.g. a dangling symbolic link
            raise ModelError(f"{entry} cannot be read ({error.strerror}); {REEXPORT}") from error
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ModelError(f"{entry} is not a regular file (a FIFO, device or socket); a model directory holds "
                             f"regular files only, {REEXPORT}")


def _type_names(types: tuple[type, ...]) -> str:
    if types == (int, float):
        return "a number"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
             type(None): "null"}
    return " or ".join(names[t] for t in types)


def _read_meta(path: Path) -> dict[str, Any]:
    """`fewstep.json`, checked for its format and the type of every key the loader reads."""
    file = path / META_FILE
    meta = read_json_object(file, ModelError, REEXPORT)
    if meta.get("format") != FORMAT:
        raise ModelError(f"{file} has format {meta.get('format')!r}, expected {FORMAT!r}")
    for key, types in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in meta:
            if key in _REQUIRED:
                raise ModelError(f"{file} has no {key!r}; {REEXPORT}")
            continue
        value = meta[key]
        wrong_bool = isinstance(value, bool) and bool not in types  # JSON true is not an integer here
        if wrong_bool or not isinstance(value, types):
            raise ModelError(f"{file}: {key!r} is {json.dumps(value)[:60]}, expected {_type_names(types)}; "
                             f"{REEXPORT}")
    return meta


def _code_requests(path: Path, meta: dict[str, Any], family: Any) -> list[str]:
    """What in the directory asks for its own Python code to run (empty: nothing does)."""
    reasons = []
    if family is not None and family.remote_code:
        reasons.append(f"its family {family.name} runs the model code it ships")
    if meta.get("remote_code") or meta.get("trust_remote_code"):
        reasons.append(f"{META_FILE} says it needs remote code")
    for name in ("config.json", "tokenizer_config.json"):
        if (path / name).is_file():
            auto_map = read_json_object(path / name, ModelError, REEXPORT).get("auto_map")
            if auto_map:
                modules = sorted(_auto_map_modules(auto_map)) if isinstance(auto_map, dict) else []
                reasons.append(f"{name}'s auto_map names {', '.join(f'{m}.py' for m in modules) or 'model code'}")
    return reasons


def _check_remote_code(path: Path, meta: dict[str, Any], family: Any, trust_remote_code: bool) -> None:
    """Refuse a directory that wants its own code run unless the caller (the user) allowed it."""
    reasons = _code_requests(path, meta, family)
    if reasons and not trust_remote_code:
        shipped = sorted(p.name for p in path.glob("*.py"))
        ships = f" (it ships {', '.join(shipped)})" if shipped else ""
        raise ModelError(f"{path} asks to run Python code{ships}: {'; '.join(reasons)}. It was not run; pass "
                         "--trust-remote-code if you have read its code")


def _names(keys: Any, limit: int = 5) -> str:
    keys = sorted(str(k) for k in keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_loading_info(path: Path, info: dict[str, Any]) -> None:
    """Every tensor the architecture expects was in the file, and nothing else: none left at random."""
    missing, unexpected = info.get("missing_keys") or (), info.get("unexpected_keys") or ()
    mismatched = [f"{k[0]} {list(k[1])} where it has {list(k[2])}" if isinstance(k, tuple) and len(k) == 3 else str(k)
                  for k in info.get("mismatched_keys") or ()]
    problems = [f"{what}: {_names(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                              ("of another shape", mismatched)) if keys]
    if problems:
        raise ModelError(f"{path / WEIGHTS_FILE} does not match config.json: its tensors are not those the "
                         f"architecture expects ({'; '.join(problems)}); the file was changed or belongs to another "
                         f"model, {REEXPORT}")


def _check_dtypes(path: Path, backbone: torch.nn.Module) -> None:
    """Each stored tensor has the dtype the loaded architecture gives it (no silent cast of a changed file)."""
    from safetensors import safe_open

    expected = backbone.state_dict()
    with safe_open(str(path / WEIGHTS_FILE), "pt") as handle:
        for key in handle.keys():
            if key in expected:
                stored = handle.get_slice(key).get_dtype()
                want = str(expected[key].dtype).removeprefix("torch.")
                if _SAFETENSORS_DTYPES.get(stored, stored) != want:
                    raise ModelError(f"{path / WEIGHTS_FILE}: tensor {key} is stored as {stored}, the architecture "
                                     f"expects {want}; the file was changed, {REEXPORT}")


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _check_checksums(path: Path, meta: dict[str, Any]) -> None:
    """The weights files are byte for byte those that were saved (directories from before checksums: skipped)."""
    saved = meta.get("checksums") or {}
    for name, digest in saved.items():
        file = path / name
        if not file.is_file():
            raise ModelError(f"{path} has no {name}, which {META_FILE} lists; the directory is incomplete, {REEXPORT}")
        if _sha256(file) != digest:
            raise ModelError(f"{file} does not match its checksum in {META_FILE}: the weights were changed or "
                             f"corrupted since they were saved; {REEXPORT}")


def _tokenizer_hint(path: Path, meta: dict[str, Any]) -> str:
    """Where the right tokenizer is: the run's own tokenizer.json when it matches, else data.tokenizer."""
    from transformers import PreTrainedTokenizerFast

    run_tokenizer = path.parent / "tokenizer.json"
    if run_tokenizer.is_file() and meta.get("tokenizer_fingerprint"):
        try:
            if tokenizer_fingerprint(PreTrainedTokenizerFast(tokenizer_file=str(run_tokenizer))) == \
                    meta["tokenizer_fingerprint"]:
                return f"copy {run_tokenizer} (the run's, which matches) into {path}"
        except Exception:  # an unreadable file is simply not the hint
            pass
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    if isinstance(data.get("tokenizer"), str):
        return f"use data.tokenizer={data['tokenizer']}, the one it was trained with"
    return "restore the tokenizer files saved with the model (the training run's out_dir/tokenizer.json)"


# ------------------------------------------------------------------------------------------ loading
def load_model_dir(path: str | Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> LoadedModel:
    """Load a model directory written by `save_model_dir`, checking that every part fits.

    The directory is untrusted. Its own Python code (an `auto_map`, a remote-code family) runs only
    when the caller passes `trust_remote_code=True` (the user's `--trust-remote-code`); what the
    directory says about itself is never the decision. Every tensor must be present with its shape
    and dtype, the weights must match the sha256 in `fewstep.json` and the tokenizer its vocabulary
    fingerprint. Directories saved before checksums and fingerprints were recorded still load; for
    them only the structure and the vocabulary size are checked.
    """
    import transformers
    from transformers import AutoModelForMaskedLM, PreTrainedTokenizerFast


    path = resolve_model_dir(path)
    _check_regular_files(path)
    meta = _read_meta(path)
    for name in ("config.json", WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ModelError(f"{path} has no {name}; the directory is incomplete, {REEXPORT}")
    family = family_for(meta.get("family"))  # none recorded: a fewstep model
    _check_remote_code(path, meta, family, trust_remote_code)
    remote = bool(trust_remote_code)
    try:
        if family is None:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        else:  # a real teacher's tokenizer may be a slow or remote-code one
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    except Exception as error:  # tokenizers raises several types for a bad file
        raise ModelError(f"cannot load the tokenizer in {path}: {str(error).splitlines()[0][:300]}") from error
    try:
        check_tokenizer_identity(tokenizer, meta["vocab_size"], meta.get("tokenizer_fingerprint"),
                                 f"the tokenizer in {path}")
    except ModelError as error:  # only now look for the right one (it may mean reading another tokenizer)
        raise ModelError(f"{error}; {_tokenizer_hint(path, meta)}") from error
    auto = AutoModelForMaskedLM if family is None else getattr(transformers, family.auto_class)
    backbone = _load_backbone(path, auto, remote)
    _check_checksums(path, meta)
    check_vocab(backbone.config.vocab_size, tokenizer, tokenizer.mask_token_id,
                getattr(backbone.config, "mask_token_id", None))
    if tokenizer.mask_token_id != meta["mask_id"]:
        raise ModelError(f"{META_FILE} says mask id {meta['mask_id']}, the tokenizer {tokenizer.mask_token_id}")
    denoiser = Denoiser(backbone, mask_id=meta["mask_id"], vocab_size=meta["vocab_size"],
                        time_conditioning=bool(meta.get("time_conditioning")), adapter=family)
    if denoiser.time_embedding is not None:
        _load_time_embedding(path, denoiser.time_embedding)
    return LoadedModel(denoiser.to(device).eval(), tokenizer, meta, path)


def _load_backbone(path: Path, auto: Any, remote: bool) -> torch.nn.Module:
    """The backbone from config.json + model.safetensors, strictly: nothing missing, extra or re-initialised."""
    from safetensors import SafetensorError


    # dtype "auto": the dtype config.json declares, so a stored tensor's dtype can be checked against it;
    # tensors of another shape are reported in `info` (and refused below) instead of a pointer to a log
    try:
        backbone, info = auto.from_pretrained(path, trust_remote_code=remote, output_loading_info=True,
                                              ignore_mismatched_sizes=True, **dtype_kwargs("auto"))
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError, KeyError) as error:
        raise ModelError(
            f"cannot load the weights in {path}: {str(error).splitlines()[0][:300]}. The file may be corrupt or "
            f"not match config.json; {REEXPORT}"
        ) from error
    _check_loading_info(path, info)
    _check_dtypes(path, backbone)
    return backbone


def _load_time_embedding(path: Path, module: torch.nn.Module) -> None:
    """The time embedding's weights, strictly (every tensor, right shapes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (path / TIME_FILE).is_file():
        raise ModelError(f"{path} has no {TIME_FILE} though {META_FILE} says the model is time-conditioned; "
                         f"{REEXPORT}")
    try:
        module.load_state_dict(load_file(path / TIME_FILE), strict=True)
    except (SafetensorError, RuntimeError) as error:
        raise ModelError(f"{path / TIME_FILE} does not fit the time embedding "
                         f"({' '.join(str(error).split())[:300]}); {REEXPORT}") from error
