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
from fewstep.evaluation.metrics import ACCURACY, ENTROPY, quality_key
from fewstep.evaluation.quality import response_entropy, sample_quality, unigram_entropy
from fewstep.model.denoiser import Denoiser
from fewstep.model.model_dir import load_model_dir, save_model_dir
from fewstep.samplers.presets import sample_with_spec, sampler_from_spec
from fewstep.training.ema import SubmoduleEMA

__all__ = ["RoundCallback", "round_dir"]

# who is validated at a round's end: the student at its steps, its teacher at k x as many, the undistilled
# teacher at the student's; a round record holds `<who>_<metric>` for each
CONTESTANTS = ("student", "teacher", "original")


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
        """The weights that end the round, copied to the CPU: for a 7-8B student a GPU copy would need
        another 16 GB at every round end."""
        if self._from_ema():
            weights = self.ema.averaged_state()
        else:
            weights = module.student.state_dict()
        return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}

    def _from_ema(self) -> bool:
        return self.cfg.rounds.teacher_from == "ema" and self.ema is not None

    def _round_meta(self, trainer: L.Trainer, index: int) -> dict[str, Any]:
        return {**self.meta, "round": index, "steps": self.cfg.rounds.steps_for(index), "method": self.cfg.method,
                "divergence": self.cfg.loss.divergence, "global_step": trainer.global_step,
                "weights": "ema" if self._from_ema() else "raw"}

    def finish_round(self, trainer: L.Trainer, module: L.LightningModule, index: int) -> None:
        """Export round `index`'s student, validate and report it, and make it the next round's teacher.

        One process writes and validates; every process swaps teachers."""
        weights = self._round_weights(module)
        meta = self._round_meta(trainer, index)
        student = None
        if trainer.is_global_zero:
            student = _cpu_copy(module.student, move=trainer.world_size == 1)
            student.load_state_dict(weights)
            save_model_dir(student, self.data.tokenizer, round_dir(self.out_dir, index), meta)
            if self.cfg.eval.enabled:
                record = self._record_round(index, trainer.global_step,
                                            self.validate(student, module.teacher, meta["steps"], module.device))
                self._log_round(trainer, record)
                self._print_round(record)
        if index < self.cfg.rounds.count - 1:
            self._hand_over(trainer, module, weights)
        elif student is not None:
            save_model_dir(student, self.data.tokenizer, self.out_dir / "model", meta)

    def _hand_over(self, trainer: L.Trainer, module: L.LightningModule, weights: dict[str, torch.Tensor]) -> None:
        """The round's weights become the teacher; with `rounds.reset_optimizer`, the optimiser starts afresh."""
        module.set_teacher(weights)
        if self.cfg.rounds.reset_optimizer:
            for optimizer in trainer.optimizers:
                optimizer.state.clear()

    # -------------------------------------------------------------- reporting
    def _record_round(self, index: int, global_step: int, scores: dict[str, float | bool]) -> dict[str, Any]:
        """Add (or replace) round `index` in the history and write it to `rounds.json`."""
        record = {"round": index, "steps": self.cfg.rounds.steps_for(index), "global_step": global_step, **scores}
        self.history = [h for h in self.history if h["round"] != index] + [record]
        atomic_write_text(self.out_dir / "rounds.json", json.dumps(self.history, indent=2))
        return record

    def _log_round(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        """The round's numbers to every logger as `round/<key>`, and the trade-off so far to W&B."""
        flat = {f"round/{key}": value for key, value in record.items() if isinstance(value, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=trainer.global_step)
        self._log_tradeoff(trainer)

    def _print_round(self, record: dict[str, Any]) -> None:
        """One line of the round's numbers, and a warning when the student has lost diversity."""
        index = record["round"]
        print(f"\nround {index}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)),
              flush=True)
        if not record["entropy_ok"]:
            print(f"round {index}: WARNING the student's sample entropy {record[f'student_{ENTROPY}']:.4g} is "
                  f"{100 * (1 - record['entropy_ratio']):.1f}% below the teacher's own samples at "
                  f"{int(record['reference_steps'])} steps ({record['reference_entropy']:.4g}; allowed: "
                  f"{100 * (1 - self.cfg.eval.min_entropy_ratio):.0f}%, eval.min_entropy_ratio): it has lost "
                  "diversity, and a lower NLL bought with it is not better quality", flush=True)

    def _log_tradeoff(self, trainer: L.Trainer) -> None:
        """Every round so far as trade-off rows in a W&B Table: the students moving towards the front."""
        from lightning.pytorch.loggers import WandbLogger

        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        metric = quality_key([{"quality": _scores_of(h, "student")} for h in self.history])
        columns = ["round", "model", "steps", "tokens_per_s", *dict.fromkeys((metric, ENTROPY))]
        data = [[h["round"], who, int(h[f"{who}_steps"]), h[f"{who}_tokens_per_s"],
                 *(h.get(f"{who}_{key}") for key in columns[4:])] for h in self.history for who in CONTESTANTS]
        for logger in loggers:
            logger.log_table("round/tradeoff", columns=columns, data=data, step=trainer.global_step)

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, student: Denoiser, teacher: Denoiser, steps: int, device: torch.device
                 ) -> dict[str, float | bool]:
        """Student at its steps; its teacher at k x steps; the undistilled teacher at the same steps; the
        student's entropy over the undistilled teacher's at its many-step setting (`entropy_ratio`, `entropy_ok`).

        On prompted data the models answer the first `eval.num_samples` validation prompts (greedy, with
        `eval.sampler`): accuracy (the task's checker, or the reference responses), response tokens per
        forward, and the answers' entropy."""
        score = self._score_answers if self.data.prompted else self._score_samples
        out: dict[str, float | bool] = {}
        contestants = ((student, steps), (teacher, self.cfg.rounds.k * steps), (self.original, steps))
        for name, (model, n) in zip(CONTESTANTS, contestants):
            out.update({f"{name}_{key}": value for key, value in score(model, n, device).items()})
        out.update(self._entropy_check(out[f"student_{ENTROPY}"], device))
        student.cpu()
        self.original.cpu()  # kept off the accelerator between validations
        return out

    def _score_samples(self, model: Denoiser, steps: int, device: torch.device) -> dict[str, float]:
        """Unprompted: `eval.num_samples` samples in `steps` steps, scored (exact NLL or the undistilled
        teacher's NELBO, entropy), and their speed."""
        cfg = self.cfg
        schedule = self.meta.get("noise_schedule", "loglinear")
        sample = sample_with_spec(cfg.eval.sampler, model.to(device), cfg.eval.num_samples, self.data.train.shape[1],
                                  steps, seed=cfg.eval.seed, noise_schedule=schedule, device=device)
        quality = sample_quality(sample.tokens, self.data, self.original, schedule)
        return {**quality, "steps": float(steps), "tokens_per_s": sample.tokens.numel() / sample.wall_time}

    def _score_answers(self, model: Denoiser, steps: int, device: torch.device) -> dict[str, float]:
        """Prompted: the answers' accuracy, response tokens per forward, entropy and speed."""
        result = self._answer(model, steps, device)
        return {ACCURACY: result.accuracy, "tokens_per_forward": result.tokens_per_forward,
                ENTROPY: response_entropy(result.responses, self.data.tokenizer.eos_token_id),
                "steps": float(steps), "tokens_per_s": result.tokens_per_s}

    def _answer(self, model: Denoiser, steps: int, device: torch.device) -> Any:
        """`model`'s greedy answers to the first `eval.num_samples` validation prompts, in `steps` steps."""
        cfg, data = self.cfg, self.data
        count = min(cfg.eval.num_samples, len(data.val))
        check = getattr(data.task, "check", None)
        answers = None if check is not None else reference_answers(data, count)
        spec = "llada" if cfg.eval.sampler == "ancestral" else cfg.eval.sampler  # ancestral is unprompted MDLM
        sampler = sampler_from_spec(spec, steps, self.meta, temperature=0.0)
        return evaluate_accuracy(model.to(device), sampler, data.val[:count], data.val_prompt_len[:count], steps,
                                 data.tokenizer, check=check, answers=answers, seed=cfg.eval.seed, device=device)

    def _entropy_check(self, student_entropy: float, device: torch.device) -> dict[str, float | bool]:
        """The student's entropy held against the undistilled teacher's at its many-step setting."""
        reference = self.reference_entropy(device)
        ratio = student_entropy / reference if reference > 0 else float("nan")
        return {"reference_steps": float(self.cfg.reference_steps), "reference_entropy": reference,
                "entropy_ratio": ratio,
                "entropy_ok": bool(ratio >= self.cfg.eval.min_entropy_ratio)}  # NaN (no reference): not ok

    @torch.no_grad()
    def reference_entropy(self, device: torch.device) -> float:
        """The entropy of the undistilled teacher's samples at its many-step setting, computed once per run:
        MDLM's ancestral sampler, or on prompted data its answers."""
        if self._reference_entropy is None:
            cfg = self.cfg
            if self.data.prompted:
                responses = self._answer(self.original, cfg.reference_steps, device).responses
                self._reference_entropy = response_entropy(responses, self.data.tokenizer.eos_token_id)
            else:
                sample = sample_with_spec("ancestral", self.original.to(device), cfg.eval.num_samples,
                                          self.data.train.shape[1], cfg.reference_steps, seed=cfg.eval.seed,
                                          noise_schedule=self.meta.get("noise_schedule", "loglinear"), device=device)
                self._reference_entropy = unigram_entropy(sample.tokens)
        return self._reference_entropy


def _scores_of(record: dict[str, Any], who: str) -> dict[str, Any]:
    """One contestant's numbers in a round record, without its `<who>_` prefix."""
    return {key[len(who) + 1:]: value for key, value in record.items() if key.startswith(f"{who}_")}


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
