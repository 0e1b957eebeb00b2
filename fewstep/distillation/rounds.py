"""Round boundaries: export the round's student, validate it, and hand the teacher role over.

A callback, not `sys.exit`: at the end of round r (every `rounds.steps_per_round` optimiser steps)
the student (or its EMA, as `rounds.teacher_from` says) is written to `out_dir/round_<r>/model/`,
validated against its teacher at k times as many steps and against the undistilled teacher at the
same count, and becomes the teacher of round r + 1. After the last round it is also written to
`out_dir/model/`.

The validation also holds the student's sample entropy against the undistilled teacher's own
many-step samples (`DistillRunConfig.reference_steps`, MDLM's ancestral sampler): `entropy_ratio`
below `eval.min_entropy_ratio` sets `entropy_ok` false in `rounds.json` and prints a warning, since a
student that repeats the corpus's most frequent fragments scores a lower NLL with less diversity.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

from fewstep.core.io import atomic_write_text
from fewstep.data.tokens import TokenData
from fewstep.distillation.config import DistillRunConfig
from fewstep.evaluation.accuracy import evaluate_accuracy, reference_answers
from fewstep.evaluation.quality import response_entropy, sample_quality, unigram_entropy
from fewstep.model.denoiser import Denoiser
from fewstep.model.model_dir import load_model_dir, save_model_dir
from fewstep.samplers.presets import sample_with_spec, sampler_from_spec
from fewstep.training.ema import SubmoduleEMA

__all__ = ["RoundCallback", "round_dir"]


def round_dir(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / f"round_{index}" / "model"


class RoundCallback(L.Callback):
    def __init__(self, cfg: DistillRunConfig, data: TokenData, original: Denoiser, meta: dict[str, Any],
                 ema: SubmoduleEMA | None) -> None:
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        self.data = data
        self.original = original  # the undistilled teacher, for comparison
        self.meta = meta
        self.ema = ema
        self.history: list[dict[str, Any]] = []
        self._reference_entropy: float | None = None  # the undistilled teacher's, sampled once per run
        history = self.out_dir / "rounds.json"
        if history.exists():
            self.history = json.loads(history.read_text())

    # -------------------------------------------------------------- resume
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """On resume, rebuild the teacher of the current round from the last finished round."""
        spr = self.cfg.rounds.steps_per_round
        finished = trainer.global_step // spr
        if finished == 0:
            return
        last = min(finished, self.cfg.rounds.count) - 1
        exported = round_dir(self.out_dir, last).exists()
        if trainer.world_size > 1:  # every process must take the same branch
            exported = bool(trainer.strategy.broadcast(exported, src=0))
        if not exported:  # stopped between the checkpoint and the export
            self.finish_round(trainer, module, last)
        elif last < self.cfg.rounds.count - 1:
            loaded = load_model_dir(round_dir(self.out_dir, last), device=module.device,
                                    trust_remote_code=self.cfg.teacher.trust_remote_code)
            module.set_teacher(loaded.denoiser.state_dict())

    # -------------------------------------------------------------- boundaries
    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.cfg.rounds.steps_per_round == 0:
            self.finish_round(trainer, module, step // self.cfg.rounds.steps_per_round - 1)

    def _round_weights(self, module: L.LightningModule) -> dict[str, torch.Tensor]:
        if self.cfg.rounds.teacher_from == "ema" and self.ema is not None:
            return self.ema.averaged_state()
        return module.student.state_dict()

    def finish_round(self, trainer: L.Trainer, module: L.LightningModule, index: int) -> None:
        rounds = self.cfg.rounds
        steps = rounds.steps_for(index)
        # copies live on the CPU: for a 7-8B student a GPU copy would need another 16 GB at every round end
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self._round_weights(module).items()}
        averaged = self.cfg.rounds.teacher_from == "ema" and self.ema is not None
        meta = {**self.meta, "round": index, "steps": steps, "method": self.cfg.method,
                "divergence": self.cfg.loss.divergence, "global_step": trainer.global_step,
                "weights": "ema" if averaged else "raw"}
        writer = trainer.is_global_zero  # one process writes and validates; every process swaps teachers
        if writer:
            student = _cpu_copy(module.student, move=trainer.world_size == 1)
            student.load_state_dict(weights)
            save_model_dir(student, self.data.tokenizer, round_dir(self.out_dir, index), meta)
        if self.cfg.eval.enabled and writer:
            record = {"round": index, "steps": steps, "global_step": trainer.global_step,
                      **self.validate(student, module.teacher, steps, module.device)}
            self.history = [h for h in self.history if h["round"] != index] + [record]
            atomic_write_text(self.out_dir / "rounds.json", json.dumps(self.history, indent=2))
            flat = {f"round/{key}": value for key, value in record.items() if isinstance(value, (int, float))}
            for logger in trainer.loggers:
                logger.log_metrics(flat, step=trainer.global_step)
            self._log_tradeoff(trainer)
            print(f"\nround {index}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                                   if isinstance(v, float)), flush=True)
            if not record["entropy_ok"]:
                print(f"round {index}: WARNING the student's sample entropy {record['student_entropy']:.4g} is "
                      f"{100 * (1 - record['entropy_ratio']):.1f}% below the teacher's own samples at "
                      f"{int(record['reference_steps'])} steps ({record['reference_entropy']:.4g}; allowed: "
                      f"{100 * (1 - self.cfg.eval.min_entropy_ratio):.0f}%, eval.min_entropy_ratio): it has lost "
                      "diversity, and a lower NLL bought with it is not better quality", flush=True)
        if index < rounds.count - 1:
            module.set_teacher(weights)
            if rounds.reset_optimizer:
                for optimizer in trainer.optimizers:
                    optimizer.state.clear()
        elif writer:
            save_model_dir(student, self.data.tokenizer, self.out_dir / "model", meta)

    def _log_tradeoff(self, trainer: L.Trainer) -> None:
        """Every round so far as trade-off rows in a W&B Table: the students moving towards the front."""
        from lightning.pytorch.loggers import WandbLogger

        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        metric = "exact_nll" if "student_exact_nll" in self.history[0] else "teacher_nelbo"
        columns = ["round", "model", "steps", "tokens_per_s", metric, "entropy"]
        data = [[h["round"], who, int(h[f"{who}_steps"]), h[f"{who}_tokens_per_s"], h.get(f"{who}_{metric}"),
                 h[f"{who}_entropy"]] for h in self.history for who in ("student", "teacher", "original")]
        for logger in loggers:
            logger.log_table("round/tradeoff", columns=columns, data=data, step=trainer.global_step)

    @torch.no_grad()
    def validate(self, student: Denoiser, teacher: Denoiser, steps: int, device: torch.device
                 ) -> dict[str, float | bool]:
        """Student at its steps; its teacher at k x steps; the undistilled teacher at the same steps; the
        student's entropy over the undistilled teacher's at its many-step setting (`entropy_ratio`, `entropy_ok`)."""
        if self.data.prompted:
            return self._validate_prompted(student, teacher, steps, device)
        cfg = self.cfg
        seq_len = self.data.train.shape[1]
        schedule = self.meta.get("noise_schedule", "loglinear")
        out: dict[str, float | bool] = {}
        for name, model, n in (("student", student, steps), ("teacher", teacher, cfg.rounds.k * steps),
                               ("original", self.original, steps)):
            model = model.to(device)
            sample = sample_with_spec(cfg.eval.sampler, model, cfg.eval.num_samples, seq_len, n,
                                      seed=cfg.eval.seed, noise_schedule=schedule, device=device)
            quality = sample_quality(sample.tokens, self.data, self.original, schedule)
            out.update({f"{name}_{key}": value for key, value in quality.items()})
            out[f"{name}_steps"] = float(n)
            out[f"{name}_tokens_per_s"] = sample.tokens.numel() / sample.wall_time
        reference = self.reference_entropy(device)
        out["reference_steps"] = float(cfg.reference_steps)
        out["reference_entropy"] = reference
        out["entropy_ratio"] = out["student_entropy"] / reference if reference > 0 else float("nan")
        out["entropy_ok"] = bool(out["entropy_ratio"] >= cfg.eval.min_entropy_ratio)  # NaN (no reference): not ok
        student.cpu()
        self.original.cpu()  # kept off the accelerator between validations
        return out

    def _validate_prompted(self, student: Denoiser, teacher: Denoiser, steps: int, device: torch.device
                           ) -> dict[str, float | bool]:
        """On prompted data the models answer the first `eval.num_samples` validation prompts (greedy, with
        `eval.sampler`): accuracy (the task's checker, or the reference responses), response tokens per
        forward, and the answers' entropy held against the undistilled teacher's at its many-step setting."""
        cfg, data = self.cfg, self.data
        count = min(cfg.eval.num_samples, len(data.val))
        check = getattr(data.task, "check", None)
        answers = None if check is not None else reference_answers(data, count)
        spec = "llada" if cfg.eval.sampler == "ancestral" else cfg.eval.sampler  # ancestral is unprompted MDLM

        def answer(model: Denoiser, n: int) -> Any:
            sampler = sampler_from_spec(spec, n, self.meta, temperature=0.0)
            return evaluate_accuracy(model.to(device), sampler, data.val[:count], data.val_prompt_len[:count], n,
                                     data.tokenizer, check=check, answers=answers, seed=cfg.eval.seed, device=device)

        out: dict[str, float | bool] = {}
        eos = data.tokenizer.eos_token_id
        for name, model, n in (("student", student, steps), ("teacher", teacher, cfg.rounds.k * steps),
                               ("original", self.original, steps)):
            result = answer(model, n)
            out.update({f"{name}_accuracy": result.accuracy, f"{name}_tokens_per_forward": result.tokens_per_forward,
                        f"{name}_entropy": response_entropy(result.responses, eos), f"{name}_steps": float(n),
                        f"{name}_tokens_per_s": result.tokens_per_s})
        if self._reference_entropy is None:
            self._reference_entropy = response_entropy(answer(self.original, cfg.reference_steps).responses, eos)
        out["reference_steps"] = float(cfg.reference_steps)
        out["reference_entropy"] = self._reference_entropy
        reference = self._reference_entropy
        out["entropy_ratio"] = out["student_entropy"] / reference if reference > 0 else float("nan")
        out["entropy_ok"] = bool(out["entropy_ratio"] >= cfg.eval.min_entropy_ratio)
        student.cpu()
        self.original.cpu()
        return out

    @torch.no_grad()
    def reference_entropy(self, device: torch.device) -> float:
        """The sample entropy of the undistilled teacher at its many-step setting, with MDLM's ancestral sampler."""
        if self._reference_entropy is None:
            cfg = self.cfg
            sample = sample_with_spec("ancestral", self.original.to(device), cfg.eval.num_samples,
                                      self.data.train.shape[1], cfg.reference_steps, seed=cfg.eval.seed,
                                      noise_schedule=self.meta.get("noise_schedule", "loglinear"), device=device)
            self._reference_entropy = unigram_entropy(sample.tokens)
        return self._reference_entropy


def _cpu_copy(model: torch.nn.Module, move: bool) -> torch.nn.Module:
    """A CPU copy of `model`; with `move`, made without a second copy on its device."""
    device = next(model.parameters()).device
    if device.type == "cpu" or not move:  # data-parallel wrappers hold views of the parameters: no moving
        return copy.deepcopy(model).cpu()
    model.cpu()  # parameters move in place, so the optimiser's references stay valid
    try:
        return copy.deepcopy(model)
    finally:
        model.to(device)
