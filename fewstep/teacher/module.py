"""The teacher LightningModule: pretrain a denoiser with MDLM's continuous-time NELBO."""

from __future__ import annotations

import lightning as L
import torch

from fewstep.core.diffusion import NoiseSchedule, draw_masks, masked_cross_entropy
from fewstep.core.streams import NoiseSource, step_noise
from fewstep.data.tokens import split_batch
from fewstep.errors import NonFiniteLossError
from fewstep.model.denoiser import Denoiser
from fewstep.training.config import OptimConfig
from fewstep.training.ema import SubmoduleEMA
from fewstep.training.optim import make_optimizer
from fewstep.training.runtime import clip_gradients

__all__ = ["TeacherModule"]


class TeacherModule(L.LightningModule):
    """Trains `denoiser` on the NELBO (estimated as `masking` says: `draw_masks`); logs `train/nelbo`,
    `val/nelbo` and `val/nelbo_raw` in nats per token.

    `val/nelbo` is the validation NELBO of the averaged weights (`ema`, a `SubmoduleEMA` of
    `denoiser`), `val/nelbo_raw` that of the weights the optimiser reached; without an EMA the two
    are the same. Both see the same masks and times. With `data_entropy` (the exact per-token entropy
    of the data, known for `markov`) it also logs `val/gap`, the relative excess of `val/nelbo` over
    that optimum.
    """

    def __init__(self, denoiser: Denoiser, schedule: NoiseSchedule, optim: OptimConfig, max_steps: int,
                 antithetic: bool = True, data_entropy: float | None = None, val_seed: int = 1234,
                 seed: int = 0, ema: SubmoduleEMA | None = None, masking: str = "independent") -> None:
        super().__init__()
        self.denoiser = denoiser
        self.ema = ema
        self.schedule = schedule
        self.optim = optim
        self.max_steps = max_steps
        self.antithetic = antithetic
        self.masking = masking
        self.data_entropy = data_entropy
        self.val_seed = val_seed
        self.seed = seed

    def nelbo(self, x0: torch.Tensor, generator: NoiseSource = None, prompt_len: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Mean NELBO per token (nats) of a batch, one t per sequence; with `prompt_len`, per response token
        (the prompt is never masked and never counted)."""
        mask_id = self.denoiser.mask_id
        z, t, weight = draw_masks(x0, self.schedule, mask_id, self.masking, self.antithetic, generator, prompt_len)
        ce = masked_cross_entropy(self.denoiser(z, t), x0, z, mask_id, prompt_len)
        per_position = weight.to(ce.dtype).unsqueeze(-1) * ce
        if prompt_len is None:
            return per_position.mean()
        response_tokens = (x0.shape[1] - prompt_len).sum().clamp_min(1)
        return per_position.sum() / response_tokens

    def training_step(self, batch: torch.Tensor | tuple, batch_idx: int) -> torch.Tensor:
        tokens, prompt_len = split_batch(batch)
        # noise fixed by (seed, step, position in the global batch): resumed and data-parallel runs
        # draw exactly what an uninterrupted single-process run draws
        noise = step_noise(self.seed, self.global_step, tokens.shape[0], self.global_rank, self.trainer.world_size,
                           tokens.device)
        loss = self.nelbo(tokens, generator=noise, prompt_len=prompt_len)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.global_step}; the last good checkpoint is kept. "
                "Lower optim.lr, keep optim.grad_clip on, or use trainer.precision=32-true."
            )
        self.log("train/nelbo", loss, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: torch.Tensor | tuple, batch_idx: int) -> None:
        tokens, prompt_len = split_batch(batch)
        raw = self._val_nelbo(tokens, batch_idx, prompt_len)
        averaged = raw
        if self.ema is not None:
            with self.ema.applied(self):
                averaged = self._val_nelbo(tokens, batch_idx, prompt_len)
        self.log("val/nelbo", averaged, prog_bar=True, sync_dist=True)
        self.log("val/nelbo_raw", raw, sync_dist=True)
        if self.data_entropy:
            self.log("val/gap", averaged / self.data_entropy - 1.0, sync_dist=True)

    def _val_nelbo(self, tokens: torch.Tensor, batch_idx: int, prompt_len: torch.Tensor | None) -> torch.Tensor:
        # the same masks and times at every validation and for both weights, so the figures compare
        noise = step_noise(self.val_seed, batch_idx, tokens.shape[0], self.global_rank, self.trainer.world_size,
                           tokens.device)
        return self.nelbo(tokens, generator=noise, prompt_len=prompt_len)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # FSDP-aware

    def configure_optimizers(self) -> dict:
        return make_optimizer(self.denoiser, self.optim, self.max_steps)
