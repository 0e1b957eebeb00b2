"""Teachers from Hugging Face checkpoints (a hub id or a local folder): read the config, pick the family
(`families.py`), load weights and tokenizer, find the mask token, wrap the result as a `Denoiser`.

A fewstep model directory is handed to `model_dir.load_model_dir`. Remote modeling code runs only when
`teacher.trust_remote_code=true` is given on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewstep.core.io import read_json_object
from fewstep.errors import ModelError
from fewstep.model.config import TeacherSourceConfig
from fewstep.model.denoiser import Denoiser, check_vocab
from fewstep.model.families import FAMILIES, Family, detect_family, dtype_kwargs
from fewstep.model.model_dir import LoadedModel, load_model_dir


# ---------------------------------------------------------------------------------------- loading
def _read_config(path: str) -> dict[str, Any]:
    from transformers.utils import cached_file

    hint = "give a local folder with config.json and weights, or a hub id with network access"
    try:
        file = cached_file(path, "config.json")
    except OSError as error:
        raise ModelError(f"cannot read config.json of teacher.path={path!r}: {str(error).splitlines()[0]}; "
                         f"{hint}") from error
    if file is None:  # some transformers versions return None for a missing file
        raise ModelError(f"teacher.path={path!r} has no config.json; {hint}")
    return read_json_object(Path(file), ModelError, f"teacher.path={path!r} needs a config.json object; {hint}")


def _load_tokenizer(where: str, trust_remote_code: bool, source: TeacherSourceConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        hint = ("set teacher.tokenizer=... to the tokenizer the model was trained with (MDLM-OWT: gpt2)"
                if source.tokenizer is None else "check teacher.tokenizer")
        raise ModelError(f"cannot load a tokenizer from {where!r}: {str(error).splitlines()[0][:300]}; {hint}") \
            from error


def _resolve_mask_id(family: Family, source: TeacherSourceConfig, tokenizer: Any, config: Any,
                     model_vocab: int) -> int | None:
    """teacher.mask_id; else the family's mask token in the tokenizer; else the checkpoint's config; else
    the family's default; else the tokenizer's own mask token."""
    if source.mask_id is not None:
        return source.mask_id
    if family.mask_token is not None and family.mask_token in tokenizer.get_vocab():
        return tokenizer.get_vocab()[family.mask_token]
    if getattr(config, "mask_token_id", None) is not None:
        return int(config.mask_token_id)
    if family.mask_id == -1:
        return model_vocab - 1
    if family.mask_id is not None:
        return family.mask_id
    return tokenizer.mask_token_id


def _fit_mask_token(tokenizer: Any, mask_id: int, family: Family) -> None:
    """Make `tokenizer.mask_token_id == mask_id`, adding the token when it is the next free id.

    GPT-2 (MDLM-OWT's tokenizer) has 50257 ids and no mask token; MDLM's model has 50258 and uses the
    last one, 50257, as its mask. Adding one special token gives it exactly that id, so the data, the
    sampler and the saved tokenizer all agree on it.
    """
    size = len(tokenizer)
    if mask_id < 0:
        raise ModelError(f"mask id {mask_id} is negative; set teacher.mask_id to the model's mask id")
    if mask_id == size:
        tokenizer.add_special_tokens({"mask_token": family.mask_token or "[MASK]"})
    elif mask_id < size:
        if tokenizer.mask_token_id == mask_id:
            return
        token = tokenizer.convert_ids_to_tokens(mask_id)
        if token is None:
            raise ModelError(f"the tokenizer has no token with the mask id {mask_id}; set teacher.mask_id")
        tokenizer.add_special_tokens({"mask_token": token})  # an existing token: no new id
    else:
        raise ModelError(
            f"mask id {mask_id} is beyond the tokenizer's {size} ids, so the data could never hold it; set "
            "teacher.tokenizer to the tokenizer the model was trained with, or teacher.mask_id to its mask id"
        )
    if tokenizer.mask_token_id != mask_id:
        raise ModelError(f"could not make id {mask_id} the tokenizer's mask token (it gave {tokenizer.mask_token_id})"
                         "; set teacher.mask_id to the model's mask id")


def load_hf_teacher(source: TeacherSourceConfig) -> LoadedModel:
    """A Hugging Face checkpoint (hub id or local folder) as a frozen denoiser, through its family."""
    import transformers

    if source.family == "fewstep":
        return load_model_dir(source.path, trust_remote_code=source.trust_remote_code)
    config_dict = _read_config(source.path)
    family = detect_family(config_dict) if source.family == "auto" else FAMILIES[source.family]
    needs_code = family.remote_code or (
        bool(config_dict.get("auto_map"))
        and config_dict.get("model_type") not in transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES)
    if needs_code and not source.trust_remote_code:
        raise ModelError(
            f"teacher.path={source.path!r} (family {family.name}) runs model code shipped with the checkpoint; "
            "read it, then pass teacher.trust_remote_code=true to allow it"
        )
    tokenizer = _load_tokenizer(source.tokenizer or source.path, source.trust_remote_code, source)
    auto = getattr(transformers, family.auto_class)
    try:
        backbone = auto.from_pretrained(source.path, trust_remote_code=source.trust_remote_code,
                                        **dtype_kwargs(source.dtype))
    except (OSError, ValueError, RuntimeError, ImportError) as error:
        raise ModelError(f"cannot load teacher.path={source.path!r} with {family.auto_class} (family {family.name}): "
                         f"{str(error).splitlines()[0][:300]}") from error
    model_vocab = int(backbone.config.vocab_size)
    mask_id = _resolve_mask_id(family, source, tokenizer, backbone.config, model_vocab)
    if mask_id is None:
        raise ModelError(f"neither the tokenizer nor the config of teacher.path={source.path!r} names a mask token; "
                         "set teacher.mask_id to the id the model was trained to treat as masked")
    if mask_id >= model_vocab:
        raise ModelError(f"mask id {mask_id} is outside the model's vocabulary of {model_vocab} ids; set "
                         "teacher.mask_id to the model's mask id")
    _fit_mask_token(tokenizer, mask_id, family)
    model_mask = getattr(backbone.config, "mask_token_id", None) if source.mask_id is None else None
    check_vocab(model_vocab, tokenizer, mask_id, model_mask)
    denoiser = Denoiser(backbone, mask_id=mask_id, vocab_size=len(tokenizer), adapter=family)
    meta = {"noise_schedule": "loglinear", "noise_eps": 1e-3, "source": source.path, "family": family.name,
            "mask_id": mask_id, "remote_code": needs_code}  # a fact about the checkpoint, not a permission
    return LoadedModel(denoiser.eval(), tokenizer, meta, path=None)
