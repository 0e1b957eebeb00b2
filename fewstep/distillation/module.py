"""The distillation LightningModule: a thin composition of targets, divergences and the teacher.

The teacher is an explicit, frozen dependency: built once by the runner, kept in eval mode under
no-grad, excluded from the optimiser, from the student's EMA and from checkpoints (on resume it is
rebuilt from the last finished round's model directory). Round changes happen in `RoundCallback`.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch

from fewstep.core.diffusion import NoiseSchedule, forward_process
from fewstep.core.streams import BatchNoise, NoiseSource, step_noise
from fewstep.data.tokens import split_batch
from fewstep.distillation.config import LossConfig, RoundsConfig, TrajectoryConfig
from fewstep.distillation.losses import divergence
from fewstep.distillation.targets import ancestral_reveal, sdtt_target, student_times
from fewstep.distillation.trajectory import trajectory_loss
from fewstep.errors import NonFiniteLossError
from fewstep.model.denoiser import Denoiser
from fewstep.model.lora import merge_lora_
from fewstep.training.config import OptimConfig
from fewstep.training.optim import make_optimizer, regroup_saved_optimizer
from fewstep.training.runtime import clip_gradients

__all__ = ["DistillModule"]


class DistillModule(L.LightningModule):
    """Trains `student` to do in one step what `teacher` does in `rounds.k` (sdtt), or on teacher samples."""

    def __init__(self, student: Denoiser, teacher: Denoiser, schedule: NoiseSchedule, method: str,
                 loss: LossConfig, rounds: RoundsConfig, optim: OptimConfig, trajectory: TrajectoryConfig,
                 seed: int = 0) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self._freeze_teacher()
        self.schedule = schedule
        self.method = method
        self.loss_cfg = loss
        self.rounds = rounds
        self.optim = optim
        self.trajectory = trajectory
        self.seed = seed
        self.strict_loading = False  # checkpoints hold the student only
        self.mask_id = student.mask_id

    # ------------------------------------------------------------------ the teacher
    def _freeze_teacher(self) -> None:
        self.teacher.eval()
        self.teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()  # Lightning switches every submodule to train mode; the teacher stays frozen
        return self

    def set_teacher(self, weights: dict[str, torch.Tensor]) -> None:
        """Make `weights` (a student state dict, e.g. its EMA) the teacher for the next round."""
        if set(weights) != set(self.teacher.state_dict()):  # a smaller or LoRA student: take its shape

            teacher = copy.deepcopy(self.student)
            teacher.load_state_dict(weights)
            # a LoRA student teaches as plain merged weights: no adapters in the frozen teacher's forward
            self.teacher = merge_lora_(teacher)  # merged in place: the copy above is already ours
        else:
            self.teacher.load_state_dict(weights)
        self._freeze_teacher()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # neither the teacher nor the student's frozen weights (a LoRA student's base): both are rebuilt
        # from the teacher on resume, so an 8B LoRA run's checkpoint holds megabytes, not 16 GB
        frozen = {f"student.{name}" for name, p in self.student.named_parameters() if not p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith("teacher.") and k not in frozen}

    # ------------------------------------------------------------------ rounds
    @property
    def round_index(self) -> int:
        return min(self.global_step // self.rounds.steps_per_round, self.rounds.count - 1)

    @property
    def student_steps(self) -> int:
        return self.rounds.steps_for(self.round_index)

    # ------------------------------------------------------------------ training
    def _noise(self, batch: torch.Tensor) -> BatchNoise:
        # fixed by (seed, step, position in the global batch): a resumed run draws the same noise as an
        # uninterrupted one, and N processes draw what one process draws for the whole batch
        return step_noise(self.seed, self.global_step, batch.shape[0], self.global_rank, self.trainer.world_size,
                          batch.device)

    def _global_mean(self, mean: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Turn this process's mean over `count` rows into its share of the mean over every process's rows.

        Data-parallel training averages gradients over processes; scaling by world * count / total
        makes that average the gradient of the global mean, as one process with the whole batch has.
        """
        world = self.trainer.world_size
        if world == 1:
            return mean
        total = self.trainer.strategy.reduce(count.detach().float(), reduce_op="sum")
        return mean * (world * count / total.clamp_min(1.0))

    def sdtt_loss(self, x0: torch.Tensor, generator: NoiseSource, prompt_len: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """The student at z_t against the teacher's k steps; with `prompt_len`, the prompt is never masked,
        so the teacher's rollouts and the loss are on the response only."""
        steps, k = self.student_steps, self.rounds.k
        t = student_times(x0.shape[0], steps, generator=generator, device=x0.device)
        z = forward_process(x0, t, self.schedule, self.mask_id, generator=generator, prompt_len=prompt_len)
        target = sdtt_target(self.teacher, z, t, dt=1.0 / (k * steps), k=k, mask_id=self.mask_id,
                             reveal=ancestral_reveal(self.schedule), generator=generator)
        logits = self.student(z, t.float())
        masked = z == self.mask_id
        dtype = torch.float64 if self.loss_cfg.dtype == "float64" else torch.float32
        loss = divergence(self.loss_cfg.divergence, target[masked], logits[masked], dtype)
        return self._global_mean(loss, masked.sum())

    def training_step(self, batch: torch.Tensor | tuple, batch_idx: int) -> torch.Tensor:
        tokens, prompt_len = split_batch(batch)
        generator = self._noise(tokens)
        if self.method == "sdtt":
            loss = self.sdtt_loss(tokens, generator, prompt_len)
            parts = {}
        else:
            loss, parts = trajectory_loss(self.student, tokens, self.schedule, self.mask_id,
                                          self.trajectory.entropy_weight, generator, prompt_len)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the distillation loss is {loss.item()} at step {self.global_step}; the last good checkpoint is "
                "kept. Lower optim.lr, use loss.dtype=float64, or keep optim.grad_clip on."
            )
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/student_steps", float(self.student_steps))
        for name, value in parts.items():
            self.log(f"train/{name}", value)
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # FSDP-aware

    def configure_optimizers(self) -> dict:
        return make_optimizer(self.student, self.optim, self.rounds.count * self.rounds.steps_per_round)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        regroup_saved_optimizer(checkpoint, self.student)  # a run saved with one AdamW group resumes
