"""The denoiser: any Hugging Face `AutoModelForMaskedLM` behind one small interface.

`Denoiser(z, t=None)` returns float logits [batch, seq_len, vocab] with the mask token at -inf.
Built from a config (a tiny ModernBERT by default, offline) or loaded with `from_pretrained`; a real
teacher's family (`adapters.Family`: MDLM, LLaDA, Dream) says how its forward is called.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fewstep.data.tokens import tokenizer_fingerprint
from fewstep.errors import ModelError
from fewstep.model.config import ModelConfig

__all__ = [
    "Denoiser",
    "build_denoiser",
    "check_tokenizer_identity",
    "check_vocab",
    "tiny_modernbert_config",
]


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t, then an MLP; the last layer starts at zero so it is a no-op at init."""

    def __init__(self, hidden_size: int, features: int = 64) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(features // 2) / (features // 2)),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(features, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 1000.0 * t.float().unsqueeze(-1) * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class Denoiser(nn.Module):
    """Wraps a masked-LM backbone: logits over the tokenizer's vocabulary, in the backbone's dtype.

    The logits are a view of the backbone's (no copy of [B, L, V]); the mask token is excluded where
    they are used (SUBS): in the sampling step and in the losses.
    """

    def __init__(self, backbone: nn.Module, mask_id: int, vocab_size: int, time_conditioning: bool = False,
                 adapter: Any = None) -> None:
        super().__init__()
        if adapter is not None and time_conditioning:
            raise ModelError(f"a {adapter.name} model brings its own time handling; time_conditioning must be off")
        self.backbone = backbone
        self.adapter = adapter  # an adapters.Family, or None for fewstep's own masked-LM backbones
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.time_conditioning = time_conditioning
        hidden = getattr(backbone.config, "hidden_size", None)
        self.time_embedding = TimeEmbedding(hidden) if time_conditioning else None

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.time_embedding is not None:
            if t is None:
                raise ValueError("this denoiser is time-conditioned: pass t")
            embeds = self.backbone.get_input_embeddings()(z)
            embeds = embeds + self.time_embedding(t.to(z.device)).unsqueeze(1).to(embeds.dtype)
            logits = self.backbone(inputs_embeds=embeds).logits
        elif self.adapter is not None:
            logits = self.adapter.logits(self.backbone, z)
        else:
            logits = self.backbone(input_ids=z).logits
        return logits[..., : self.vocab_size]

    @property
    def family(self) -> str:
        """The model family recorded with a saved model ("fewstep" for fewstep's own backbones)."""
        return self.adapter.name if self.adapter is not None else "fewstep"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_vocab(model_vocab: int, tokenizer: Any, mask_id: int | None, model_mask_id: int | None = None) -> None:
    """Stop with a clear message when a model and a tokenizer cannot work together.

    This checks sizes and the mask id only: a model's vocabulary may be padded past its tokenizer's,
    so a smaller tokenizer from another corpus passes. Whether the tokenizer is the model's own is
    `check_tokenizer_identity`'s question.
    """
    if mask_id is None:
        raise ModelError(
            "the tokenizer has no mask token; masked diffusion needs one. Add a '[MASK]' special token "
            "to the tokenizer (tokenizer.add_special_tokens({'mask_token': '[MASK]'})) and resize the model."
        )
    size = len(tokenizer)
    if model_vocab < size:
        raise ModelError(
            f"the model's vocabulary ({model_vocab} ids) is smaller than the tokenizer's ({size}); use the "
            f"tokenizer the model was trained with, or resize the model's embeddings to at least {size}"
        )
    if mask_id >= model_vocab:
        raise ModelError(f"mask id {mask_id} is outside the model's vocabulary of {model_vocab}")
    if model_mask_id is not None and model_mask_id != mask_id:
        raise ModelError(
            f"the model's config says mask_token_id={model_mask_id} but the tokenizer's mask token has id "
            f"{mask_id}; use the tokenizer saved with the model, or fix mask_token_id in config.json"
        )


def check_tokenizer_identity(tokenizer: Any, vocab_size: int, fingerprint: str | None, what: str) -> None:
    """Stop when `tokenizer` is not the one a model was saved with: another size, or another vocabulary.

    `vocab_size` and `fingerprint` (`data.tokenizer_fingerprint`) are what the model recorded; a
    model saved before fingerprints were recorded (None) is checked for its size only. `what` names
    the tokenizer in the message; the caller adds which tokenizer to use instead.
    """
    size = len(tokenizer)
    if size != vocab_size:
        raise ModelError(f"{what} has {size} tokens, the model was saved with a tokenizer of {vocab_size}: it is "
                         "another tokenizer and would decode wrongly")
    if fingerprint is not None and tokenizer_fingerprint(tokenizer) != fingerprint:
        raise ModelError(f"{what} is not the tokenizer the model was saved with (same size, another vocabulary: "
                         "its fingerprint differs) and would decode wrongly")


def tiny_modernbert_config(cfg: ModelConfig, vocab_size: int, mask_id: int, seq_len: int,
                           pad_id: int | None = None, bos_id: int | None = None, eos_id: int | None = None):
    """A small ModernBERT (RoPE, bidirectional, alternating global/local attention) sized by `cfg`."""
    from transformers import ModernBertConfig

    padded_vocab = ((vocab_size + 7) // 8) * 8  # multiples of 8 keep matmuls aligned
    special = pad_id if pad_id is not None else mask_id
    return ModernBertConfig(
        vocab_size=padded_vocab,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(seq_len, 8),
        local_attention=cfg.local_attention,
        global_attn_every_n_layers=2,
        embedding_dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        mlp_dropout=cfg.dropout,
        pad_token_id=special,
        mask_token_id=mask_id,
        bos_token_id=bos_id if bos_id is not None else special,
        eos_token_id=eos_id if eos_id is not None else special,
        cls_token_id=bos_id if bos_id is not None else special,
        sep_token_id=eos_id if eos_id is not None else special,
    )


def build_denoiser(cfg: ModelConfig, tokenizer: Any, mask_id: int | None, seq_len: int) -> Denoiser:
    """A denoiser for `tokenizer`: a tiny ModernBERT from config, or `cfg.pretrained` loaded."""
    from transformers import AutoModelForMaskedLM

    if cfg.pretrained:
        try:
            backbone = AutoModelForMaskedLM.from_pretrained(cfg.pretrained, trust_remote_code=cfg.trust_remote_code)
        except OSError as error:
            raise ModelError(
                f"cannot load model.pretrained={cfg.pretrained!r}: {str(error).splitlines()[0]}. Give a local "
                "directory with config.json and weights, or a hub id with network access."
            ) from error
        model_mask = getattr(backbone.config, "mask_token_id", None)
        check_vocab(backbone.config.vocab_size, tokenizer, mask_id, model_mask)
    else:
        check_vocab(((len(tokenizer) + 7) // 8) * 8, tokenizer, mask_id)
        config = tiny_modernbert_config(cfg, len(tokenizer), mask_id, seq_len,
                                        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
        backbone = AutoModelForMaskedLM.from_config(config)
    return Denoiser(backbone, mask_id=mask_id, vocab_size=len(tokenizer), time_conditioning=cfg.time_conditioning)
