"""The learning-rate schedule every run uses: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(warmup: int, total: int, decay: str, min_ratio: float):
    """LR multiplier: linear warm-up over `warmup` steps, then constant or cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
