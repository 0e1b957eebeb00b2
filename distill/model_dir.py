"""Loadable model directories: `config.json`, `model.safetensors`, tokenizer files, `fewstep.json`.

A directory Hugging Face users recognise (the backbone loads with `AutoModelForMaskedLM`, or its
family's Auto class for a real teacher's student), plus `fewstep.json` with what fewstep needs to
sample from it: mask id, model family, noise schedule, the data config and its fingerprint. A LoRA
student is saved merged, as plain weights; a remote-code family's modeling files are copied in, so
the directory loads without the hub. Written atomically: an interrupted save leaves the previous
directory intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep.distill.denoiser import Denoiser, ModelError, check_vocab
from fewstep.distill.io import atomic_replace_dir

__all__ = ["is_model_dir", "FORMAT", "LoadedModel", "save_model_dir", "load_model_dir", "resolve_model_dir"]

FORMAT = "fewstep-denoiser/1"
META_FILE = "fewstep.json"
TIME_FILE = "time_embedding.safetensors"


@dataclass
class LoadedModel:
    denoiser: Denoiser
    tokenizer: Any
    meta: dict[str, Any]
    path: Path | None = None  # the model directory it came from, if any


def save_model_dir(denoiser: Denoiser, tokenizer: Any, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write `denoiser` and `tokenizer` as a model directory at `path` (replacing it atomically)."""
    from safetensors.torch import load_file, save_file

    from fewstep.distill.adapters import is_lora, merged_copy

    if is_lora(denoiser.backbone):  # merged on a copy: the training student keeps its adapters
        denoiser = merged_copy(denoiser)
    meta = {"format": FORMAT, "fewstep_version": fewstep.__version__, "mask_id": denoiser.mask_id,
            "vocab_size": denoiser.vocab_size, "time_conditioning": denoiser.time_conditioning, **meta}
    if denoiser.adapter is not None:
        meta["family"] = denoiser.family
        meta["trust_remote_code"] = denoiser.adapter.remote_code or bool(getattr(denoiser.backbone.config,
                                                                                 "auto_map", None))

    def fill(tmp: Path) -> None:
        # one weights file (transformers < 5 shards above 5 GB by default); remote code is copied in by
        # save_pretrained (custom_object_save) since the model was loaded with trust_remote_code
        denoiser.backbone.save_pretrained(tmp, safe_serialization=True, max_shard_size="1000GB")
        _copy_remote_code(denoiser.backbone, tmp)
        weights = tmp / "model.safetensors"
        tensors = load_file(weights)
        header = {"format": "pt", "fewstep_format": FORMAT, "fewstep_version": fewstep.__version__,
                  "mask_id": str(denoiser.mask_id)}
        header.update({k: json.dumps(v) if not isinstance(v, str) else v
                       for k, v in meta.items() if k in ("steps", "schedule", "sampler", "data_fingerprint",
                                                         "noise_schedule")})
        save_file(tensors, weights, metadata=header)
        if denoiser.time_embedding is not None:
            save_file({k: v.contiguous() for k, v in denoiser.time_embedding.state_dict().items()}, tmp / TIME_FILE)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))

    path = Path(path)
    atomic_replace_dir(path, fill)
    return path


def _copy_remote_code(backbone: Any, folder: Path) -> None:
    """Make sure every module named in config.json's auto_map is in `folder` (a saved remote-code model)."""
    import shutil
    import sys

    auto_map = getattr(backbone.config, "auto_map", None) or {}
    needed = {ref.split(".")[0] for refs in auto_map.values()
              for ref in (refs if isinstance(refs, (list, tuple)) else [refs]) if ref and "--" not in ref}
    source = sys.modules.get(type(backbone).__module__)
    source_dir = Path(source.__file__).parent if source is not None and source.__file__ else None
    for name in needed:
        if not (folder / f"{name}.py").is_file():
            if source_dir is None or not (source_dir / f"{name}.py").is_file():
                raise ModelError(f"cannot find the model code {name}.py named in config.json's auto_map; the saved "
                                 "directory would not load")
            shutil.copy(source_dir / f"{name}.py", folder / f"{name}.py")


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


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory written by `save_model_dir`, checking that every part fits."""
    import transformers
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM, PreTrainedTokenizerFast

    from fewstep.distill.adapters import family_for

    path = resolve_model_dir(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ModelError(f"{path / META_FILE} is not valid JSON ({error}); re-export the model") from error
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path / META_FILE} has format {meta.get('format')!r}, expected {FORMAT!r}")
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise ModelError(f"{path} has no {name}; the directory is incomplete, re-export the model")
    family = family_for(meta.get("family"))  # none recorded: a fewstep model
    remote = bool(meta.get("trust_remote_code"))
    try:
        if family is None:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        else:  # a real teacher's tokenizer may be a slow or remote-code one
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    except Exception as error:  # tokenizers raises several types for a bad file
        raise ModelError(f"cannot load the tokenizer in {path}: {error}") from error
    auto = AutoModelForMaskedLM if family is None else getattr(transformers, family.auto_class)
    try:
        backbone = auto.from_pretrained(path, trust_remote_code=remote)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ModelError(
            f"cannot load the weights in {path}: {str(error).splitlines()[0][:300]}. The file may be corrupt or "
            "not match config.json; re-export the model"
        ) from error
    check_vocab(backbone.config.vocab_size, tokenizer, tokenizer.mask_token_id,
                getattr(backbone.config, "mask_token_id", None))
    if tokenizer.mask_token_id != meta["mask_id"]:
        raise ModelError(f"{META_FILE} says mask id {meta['mask_id']}, the tokenizer {tokenizer.mask_token_id}")
    denoiser = Denoiser(backbone, mask_id=meta["mask_id"], vocab_size=meta["vocab_size"],
                        time_conditioning=bool(meta.get("time_conditioning")), adapter=family)
    if denoiser.time_embedding is not None:
        denoiser.time_embedding.load_state_dict(load_file(path / TIME_FILE))
    return LoadedModel(denoiser.to(device).eval(), tokenizer, meta, path)
