"""An exponential moving average of the student's weights only.

Lightning's `EMAWeightAveraging` averages the whole LightningModule, which in distillation would
copy and average the frozen teacher too (and keep a stale teacher after a round swap). This one
tracks the parameters of one named submodule and checkpoints its shadow copy with the run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

__all__ = ["SubmoduleEMA"]


class SubmoduleEMA(L.Callback):
    """Keep `shadow = decay * shadow + (1 - decay) * weights` for `pl_module.<attribute>`."""

    def __init__(self, attribute: str = "student", decay: float = 0.999) -> None:
        self.attribute = attribute
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] | None = None

    def _module(self, pl_module: L.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, self.attribute)

    def _tracked(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """The entries that change in training: trainable parameters and buffers (a frozen weight's
        average is itself, so a LoRA student's EMA holds its adapters only, not 16 GB of base weights)."""
        module = self._module(pl_module)
        frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
        return {k: v for k, v in module.state_dict().items() if k not in frozen}

    def reset(self, pl_module: L.LightningModule) -> None:
        """Restart the average from the current weights (e.g. when a round begins)."""
        self.shadow = {k: v.detach().clone() for k, v in self._tracked(pl_module).items()}

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
        state = self._module(pl_module).state_dict()
        for key, average in self.shadow.items():  # the tracked entries, chosen once in reset()
            value = state[key].detach()
            if value.is_floating_point():
                average.lerp_(value, 1.0 - self.decay)
            else:
                average.copy_(value)

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """A full state dict of the submodule: averaged entries over its current (frozen) ones."""
        assert self.shadow is not None, "the EMA has not started"
        return {**self._module(self._owner).state_dict(), **self.shadow}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.decay = state_dict["decay"]
        self.shadow = state_dict["shadow"]
