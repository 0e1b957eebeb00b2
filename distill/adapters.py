"""Real teachers behind the denoiser interface: how each model family maps onto `Denoiser`.

A `Family` says which Auto class loads a checkpoint, which id is its mask, how its forward is
called (MDLM takes `timesteps`; LLaDA / Dream take `input_ids` only), whether its logits are
shifted (Dream predicts token i at position i-1), and which modules a LoRA student adapts.
`load_hf_teacher` loads a Hugging Face checkpoint through its family; `apply_lora` makes a
parameter-efficient student.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.distill.denoiser import Denoiser, ModelError, check_vocab
from fewstep.distill.distill_config import LoraConfig, TeacherSourceConfig
from fewstep.distill.model_dir import LoadedModel, load_model_dir

__all__ = ["FAMILIES", "Family", "apply_lora", "detect_family", "family_for", "is_lora", "load_hf_teacher",
           "merge_lora_", "merged_copy"]


@dataclass(frozen=True)
class Family:
    """How one model family's checkpoints map onto the denoiser interface."""

    name: str
    auto_class: str  # the transformers Auto class that loads it
    remote_code: bool  # its modeling code lives in the checkpoint (needs trust_remote_code)
    mask_token: str | None = None  # the mask token's text in the family's tokenizer
    mask_id: int | None = None  # the default mask id; -1 = the model's last id (MDLM)
    timesteps: bool = False  # forward(input_ids, timesteps): zeros, the family is not time-conditioned
    shifted: bool = False  # the output at position i-1 predicts token i (AR-initialised, Dream)
    lora_targets: str | tuple[str, ...] = "all-linear"  # peft target_modules: names, or one regex string

    def logits(self, backbone: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """The backbone's logits [batch, seq_len, model_vocab], position i predicting token i."""
        if self.timesteps:
            zeros = torch.zeros(input_ids.shape[0], device=input_ids.device)
            logits = backbone(input_ids=input_ids, timesteps=zeros).logits
        else:
            logits = backbone(input_ids=input_ids).logits
        if self.shifted:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


FAMILIES: dict[str, Family] = {
    "masked_lm": Family("masked_lm", "AutoModelForMaskedLM", remote_code=False),
    "mdlm": Family("mdlm", "AutoModelForMaskedLM", remote_code=True, mask_id=-1, timesteps=True,
                   lora_targets=r".*blocks\.\d+\.(attn_qkv|attn_out|mlp\.0|mlp\.2)"),
    # LLaDA's output head is also called ff_out, hence a regex limited to the transformer blocks
    "llada": Family("llada", "AutoModel", remote_code=True, mask_token="<|mdm_mask|>", mask_id=126336,
                    lora_targets=r".*blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)"),
    "dream": Family("dream", "AutoModel", remote_code=True, mask_token="<|mask|>", mask_id=151666, shifted=True,
                    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
}


def family_for(name: str | None) -> Family | None:
    """The family called `name`; None for a fewstep model (no family recorded)."""
    if name in (None, "fewstep"):
        return None
    if name not in FAMILIES:
        raise ModelError(f"unknown model family {name!r}; known: fewstep, {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect_family(config: dict[str, Any]) -> Family:
    """The family of a checkpoint from its config.json (model_type, architectures); masked_lm otherwise."""
    names = [str(config.get("model_type", ""))] + [str(a) for a in config.get("architectures") or []]
    text = " ".join(names).lower()
    for key in ("llada", "dream", "mdlm"):
        if re.search(rf"\b{key}", text):
            return FAMILIES[key]
    return FAMILIES["masked_lm"]


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
    try:
        config = json.loads(Path(file).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{file} (teacher.path={path!r}) is not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ModelError(f"{file} (teacher.path={path!r}) holds a JSON {type(config).__name__}, not an object")
    return config


def _dtype_kwargs(name: str) -> dict[str, Any]:
    import transformers

    value = "auto" if name == "auto" else getattr(torch, name)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": value} if (major, minor) >= (4, 56) else {"torch_dtype": value}  # renamed in 4.56


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
                                        **_dtype_kwargs(source.dtype))
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


# ------------------------------------------------------------------------------------------- LoRA
def _peft():
    try:
        import peft
    except ImportError as error:
        raise ModelError("student.lora.rank > 0 needs the `peft` package, which is not installed: "
                         "pip install 'fewstep[hf]'") from error
    return peft


def is_lora(module: torch.nn.Module) -> bool:
    """Whether `module` is a peft-wrapped backbone (a LoRA student)."""
    return type(module).__module__.startswith("peft.")


def apply_lora(student: Denoiser, cfg: LoraConfig) -> Denoiser:
    """Wrap the student's backbone with LoRA adapters; afterwards only the adapters require grad."""
    peft = _peft()
    family = student.adapter
    targets: Any = list(cfg.target_modules) or (family.lora_targets if family else "all-linear")
    if isinstance(targets, tuple):
        targets = list(targets)
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets)
    student.requires_grad_(False)
    try:
        student.backbone = peft.get_peft_model(student.backbone, config)
    except ValueError as error:  # no module matched the targets
        raise ModelError(f"LoRA could not adapt the student: {str(error).splitlines()[0][:300]}; set "
                         "student.lora.target_modules to names of its linear layers") from error
    for name, parameter in student.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return student


def merge_lora_(denoiser: Denoiser) -> Denoiser:
    """Merge a LoRA denoiser's adapters into plain weights, in place (a no-op without adapters)."""
    if is_lora(denoiser.backbone):
        denoiser.backbone = denoiser.backbone.merge_and_unload()
    return denoiser


def merged_copy(denoiser: Denoiser) -> Denoiser:
    """A copy of a LoRA student with the adapters merged into plain weights (the original is untouched)."""
    return merge_lora_(copy.deepcopy(denoiser))
