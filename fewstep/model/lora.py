"""LoRA students (peft): adapt a copy of the teacher in the modules its family names, merge for export."""

from __future__ import annotations

import copy
from typing import Any

import torch

from fewstep.errors import ModelError
from fewstep.model.config import LoraConfig
from fewstep.model.denoiser import Denoiser


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
