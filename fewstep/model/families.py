"""Real teachers behind the denoiser interface: how each model family maps onto `Denoiser`.

A `Family` says which Auto class loads a checkpoint, which id is its mask, how its forward is
called (MDLM takes `timesteps`; LLaDA / Dream take `input_ids` only), whether its logits are
shifted (Dream predicts token i at position i-1), and which modules a LoRA student adapts.
`hub.load_hf_teacher` loads a Hugging Face checkpoint through its family; `lora.apply_lora` makes a
parameter-efficient student in the modules its family names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from fewstep.errors import ModelError

__all__ = [
    "FAMILIES",
    "Family",
    "detect_family",
    "family_for",
]


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


def dtype_kwargs(name: str) -> dict[str, Any]:
    import transformers

    value = "auto" if name == "auto" else getattr(torch, name)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": value} if (major, minor) >= (4, 56) else {"torch_dtype": value}  # renamed in 4.56


