"""The optimiser every run uses: AdamW, no weight decay on biases and norms, and its learning-rate
schedule (linear warm-up, then constant or cosine decay), stepped once per optimiser step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from fewstep.training.config import OptimConfig

__all__ = ["warmup_cosine", "decay_groups", "make_optimizer", "regroup_saved_optimizer"]


def warmup_cosine(warmup: int, total: int, decay: str, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over `warmup` steps, then constant or cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _decays(name: str, param: torch.nn.Parameter) -> bool:
    """Matrices decay; biases, norm weights and every other vector or scalar do not."""
    return param.ndim >= 2 and "norm" not in name and "bias" not in name


def decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters of `module` (a LoRA student's adapters only) as two AdamW groups: those
    that decay by `weight_decay`, then those that never decay. Both groups are always there (either may
    be empty), so an optimiser's state keeps one layout whatever the model."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (decay if _decays(name, param) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(module: torch.nn.Module, optim: OptimConfig, total_steps: int) -> dict[str, Any]:
    """AdamW over `module`'s trainable parameters and its warm-up/decay schedule over `total_steps`
    optimiser steps, as `LightningModule.configure_optimizers` returns them."""
    optimizer = torch.optim.AdamW(decay_groups(module, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(optim.warmup_steps, total_steps, optim.decay, optim.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def regroup_saved_optimizer(checkpoint: dict[str, Any], module: torch.nn.Module) -> None:
    """Let a checkpoint saved with one AdamW group (distillation and evaluator runs before `decay_groups`)
    resume: its per-parameter state is renumbered into the two groups, in place. A checkpoint that has the
    two groups already, or no optimiser state, is left as it is. Call it from `on_load_checkpoint`, which
    Lightning runs before it restores the optimiser."""
    states = checkpoint.get("optimizer_states") or []
    if len(states) != 1 or len(states[0].get("param_groups", [])) != 1:
        return
    saved = states[0]
    trainable = [p for p in module.parameters() if p.requires_grad]  # the one group's order
    groups = decay_groups(module, 0.0)
    if len(saved["param_groups"][0]["params"]) != len(trainable):
        return  # not this module's state: Lightning's own check names the mismatch
    new_index = {id(p): i for i, p in enumerate(groups[0]["params"] + groups[1]["params"])}
    renumber = [new_index[id(p)] for p in trainable]
    old_group = saved["param_groups"][0]
    saved["state"] = {renumber[int(i)]: value for i, value in saved["state"].items()}
    first = len(groups[0]["params"])
    saved["param_groups"] = [
        {**old_group, "params": list(range(first))},
        {**old_group, "weight_decay": 0.0, "params": list(range(first, len(renumber)))},
    ]
