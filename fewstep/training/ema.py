"""One exponential moving average of one submodule's weights, with a warm-up; teacher runs and distillation.

Lightning's `EMAWeightAveraging` averages the whole LightningModule, which in distillation would
copy and average the frozen teacher too (and keep a stale teacher after a round swap). This one
tracks the parameters of one named submodule (`denoiser` in a teacher run, `student` in
distillation). Its decay warms up, `min(decay, (1 + t) / (10 + t))` after t updates, so the
average of a short run does not still hold its first, untrained weights.

Checkpoints follow Lightning's convention for weight averaging: `state_dict` holds the averaged
weights (what a checkpoint exports), `current_model_state` the raw ones (what training resumes
from). Checkpoints from before this layout (Lightning's own EMA callback, or a shadow copy in the
callback's state without an update count) still load; a missing count means the warm-up is over.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

__all__ = ["SubmoduleEMA", "warmup_decay", "better_weights", "RAW_STATE_KEY"]

RAW_STATE_KEY = "current_model_state"  # Lightning's key for the raw weights beside an averaged state_dict


def warmup_decay(decay: float, updates: int) -> float:
    """The decay of update number `updates` (0-based): `min(decay, (1 + t) / (10 + t))`."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def better_weights(averaged: float | None, raw: float | None) -> str:
    """`"ema"` or `"raw"`: the weights with the lower validation NELBO; a tie, or no figures (validation off),
    keeps the average."""
    return "raw" if raw is not None and (averaged is None or raw < averaged) else "ema"


class SubmoduleEMA(L.Callback):
    """Keep `shadow = d * shadow + (1 - d) * weights` for `pl_module.<attribute>`, d = `current_decay`."""

    def __init__(self, attribute: str = "student", decay: float = 0.999, warmup: bool = True) -> None:
        self.attribute = attribute
        self.decay = decay
        self.warmup = warmup
        self.updates: int | None = 0  # None: a checkpoint from before the count was saved (warm-up over)
        self.shadow: dict[str, torch.Tensor] | None = None

    @property
    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup or self.updates is None:
            return self.decay
        return warmup_decay(self.decay, self.updates)

    def _module(self, pl_module: L.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, self.attribute)

    def _tracked(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """The entries that change in training: trainable parameters and buffers (a frozen weight's
        average is itself, so a LoRA student's EMA holds its adapters only, not 16 GB of base weights)."""
        module = self._module(pl_module)
        frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
        return {k: v for k, v in module.state_dict().items() if k not in frozen}

    def reset(self, pl_module: L.LightningModule) -> None:
        """Restart the average (and its warm-up) from the current weights."""
        self._owner = pl_module
        self.shadow = {k: v.detach().clone() for k, v in self._tracked(pl_module).items()}
        self.updates = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._owner = pl_module
        if self.shadow is None:
            self.reset(pl_module)
        else:  # restored from a checkpoint: follow the module's device
            device = next(self._module(pl_module).parameters()).device
            self.shadow = {k: v.to(device) for k, v in self.shadow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        assert self.shadow is not None
        weight = 1.0 - self.current_decay
        state = self._module(pl_module).state_dict()
        for key, average in self.shadow.items():  # the tracked entries, chosen once in reset()
            value = state[key].detach()
            if value.is_floating_point():
                average.lerp_(value, weight)
            else:
                average.copy_(value)
        if self.updates is not None:
            self.updates += 1

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """A full state dict of the submodule: averaged entries over its current (frozen) ones."""
        assert self.shadow is not None, "the EMA has not started"
        return {**self._module(self._owner).state_dict(), **self.shadow}

    @contextmanager
    def applied(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Run the block with the averaged weights in the submodule, then put the raw ones back.

        The two are swapped in place one tensor at a time: no second copy of the model is made."""
        assert self.shadow is not None, "the EMA has not started"
        self._swap(pl_module)
        try:
            yield
        finally:
            self._swap(pl_module)

    @torch.no_grad()
    def _swap(self, pl_module: L.LightningModule) -> None:
        assert self.shadow is not None
        state = self._module(pl_module).state_dict()
        first: dict[int, str] = {}  # storage -> the first name it was swapped under
        for key, average in self.shadow.items():
            tensor = state[key]
            if tensor.numel() and tensor.data_ptr() in first:  # a tied weight (embeddings = decoder): swapped once
                average.copy_(self.shadow[first[tensor.data_ptr()]])
                continue
            first[tensor.data_ptr()] = key
            held = tensor.detach().clone()
            tensor.copy_(average)
            average.copy_(held)

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.decay = state_dict["decay"]
        self.warmup = state_dict.get("warmup", self.warmup)
        self.updates = state_dict.get("updates")  # absent in older checkpoints: the warm-up is over
        if "shadow" in state_dict:  # older layout: the average in here, the raw weights in state_dict
            self.shadow = state_dict["shadow"]

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
                           ) -> None:
        if self.shadow is None:
            return
        weights, prefix = checkpoint["state_dict"], f"{self.attribute}."
        raw = {}
        for key, average in self.shadow.items():
            if prefix + key in weights:
                raw[prefix + key] = weights[prefix + key]
                weights[prefix + key] = average
        checkpoint[RAW_STATE_KEY] = raw

    @torch.no_grad()
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
                           ) -> None:
        """The module has loaded `state_dict` (the average) by now: take it as the shadow, restore the raw weights."""
        raw = checkpoint.get(RAW_STATE_KEY)
        if raw is None:  # no average in state_dict (EMA off when saved, or the older layout): nothing to swap
            return
        self.updates = None  # until load_state_dict reads a saved count (Lightning's EMA saved none)
        prefix = f"{self.attribute}."
        weights = checkpoint["state_dict"]
        state = self._module(pl_module).state_dict()
        self.shadow = {}
        for key, value in state.items():
            if prefix + key in raw and prefix + key in weights:
                self.shadow[key] = weights[prefix + key].detach().clone()
                value.copy_(raw[prefix + key])
