"""`fewstep teacher`: build data and denoiser, train with Lightning, export `out_dir/model/`.

`model/` holds the better of the run's raw and averaged (EMA) weights by the final validation
NELBO; `fewstep.json` says which (`weights`) and records both figures (`val_nelbo`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from fewstep.core.config import save_config
from fewstep.core.diffusion import make_schedule
from fewstep.core.io import atomic_write_text
from fewstep.core.ownership import input_paths
from fewstep.data import loader
from fewstep.data.sources import build_data
from fewstep.data.tokens import TokenData
from fewstep.errors import Preempted
from fewstep.model.denoiser import build_denoiser
from fewstep.model.model_dir import save_model_dir
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.module import TeacherModule
from fewstep.training.ema import SubmoduleEMA, better_weights
from fewstep.training.preemption import PreemptionCheckpoint
from fewstep.training.runtime import (
    allocation_errors,
    check_device,
    cluster_trainer_args,
    expected_warnings,
    finish_loggers,
    make_loggers,
    own_run_dir,
    prepare_backbone,
)

__all__ = ["TeacherResult", "train_teacher", "model_meta"]


@dataclass
class TeacherResult:
    out_dir: Path
    model_dir: Path
    steps: int
    val_nelbo: float | None  # the exported weights' (see `weights`)
    val_gap: float | None
    train_seconds: float
    data: dict[str, Any]
    num_parameters: int
    is_global_zero: bool = True  # False in the other processes of a data-parallel run
    weights: str = "raw"  # what model/ holds: "ema" (the averaged weights) or "raw"
    val_nelbo_ema: float | None = None
    val_nelbo_raw: float | None = None


def model_meta(data: TokenData, cfg: TeacherRunConfig) -> dict[str, Any]:
    """What a model directory records about how its model was made."""
    return {
        "noise_schedule": cfg.diffusion.noise_schedule,
        "noise_eps": cfg.diffusion.eps,
        "seq_len": cfg.data.seq_len,
        "data": asdict(cfg.data),
        "data_fingerprint": data.fingerprint,
        "trust_remote_code": cfg.model.trust_remote_code,
    }


def train_teacher(cfg: TeacherRunConfig, resume: bool = False, callbacks: list[Callback] | None = None) -> TeacherResult:
    """Train a teacher as `cfg` says; continue from `out_dir/checkpoints/last.ckpt` with `resume`.

    `out_dir` is owned for the run (`own_run_dir`): checked, marked and locked before anything is written.
    """
    check_device(cfg.trainer.accelerator, "trainer.accelerator")
    out_dir = Path(cfg.out_dir)
    sources = input_paths(cfg.model.pretrained, cfg.data.path, cfg.data.tokenizer)
    with own_run_dir(out_dir, "teacher-run", cfg, resume, sources=sources) as ckpt_path:
        return _train(cfg, out_dir, ckpt_path, callbacks)


def _train(cfg: TeacherRunConfig, out_dir: Path, ckpt_path: Path | None, callbacks: list[Callback] | None
           ) -> TeacherResult:
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    with allocation_errors("building the data and the model"):
        data = build_data(cfg.data, out_dir)
        denoiser = build_denoiser(cfg.model, data.tokenizer, data.mask_id, cfg.data.seq_len)
    save_config(cfg, out_dir / "config.yaml")  # only now: every check has passed
    atomic_write_text(out_dir / "data.json", json.dumps(data.describe(), indent=2))

    ema = SubmoduleEMA("denoiser", cfg.optim.ema, cfg.optim.ema_warmup) if cfg.optim.ema > 0 else None
    module = TeacherModule(
        denoiser,
        make_schedule(cfg.diffusion.noise_schedule, cfg.diffusion.eps),
        cfg.optim,
        max_steps=cfg.trainer.max_steps,
        antithetic=cfg.diffusion.antithetic,
        masking=cfg.diffusion.masking,
        data_entropy=data.stats.get("data_entropy_per_token"),
        seed=cfg.trainer.seed,
        ema=ema,
    )
    checkpoints = out_dir / "checkpoints"
    preemption = PreemptionCheckpoint(checkpoints / "last.ckpt", requeue=cfg.trainer.requeue)
    train_loader, position = loader.train_loader(data.train, cfg.trainer.batch_size, seed=cfg.trainer.seed,
                                                 num_workers=cfg.trainer.num_workers, prompt_len=data.train_prompt_len)
    val_loader, val_process = loader.eval_loader(data.val, cfg.trainer.batch_size, num_workers=cfg.trainer.num_workers,
                                                 prompt_len=data.val_prompt_len)
    all_callbacks = _callbacks(cfg, checkpoints, ema, [preemption, position, val_process, *(callbacks or [])])
    prepare_backbone(denoiser, cfg.trainer)
    trainer = _trainer(cfg, out_dir, denoiser, all_callbacks)
    elapsed = _fit(cfg, trainer, module, train_loader, val_loader, ckpt_path, preemption)

    weights, scores = _final_weights(trainer, denoiser, ema)
    chosen = scores.get(weights)
    model_dir = out_dir / "model"
    if trainer.is_global_zero:
        save_model_dir(denoiser.cpu(), data.tokenizer, model_dir,
                       {**model_meta(data, cfg), "weights": weights, "val_nelbo": scores})
    trainer.strategy.barrier("teacher-exported")  # no process reads model/ before it is written
    finish_loggers(trainer)
    return TeacherResult(
        out_dir=out_dir,
        model_dir=model_dir,
        steps=trainer.global_step,
        val_nelbo=chosen,
        val_gap=chosen / module.data_entropy - 1.0 if chosen is not None and module.data_entropy else None,
        train_seconds=elapsed,
        data=data.describe(),
        num_parameters=denoiser.num_parameters(),
        is_global_zero=trainer.is_global_zero,
        weights=weights,
        val_nelbo_ema=scores.get("ema"),
        val_nelbo_raw=scores.get("raw"),
    )


def _callbacks(cfg: TeacherRunConfig, checkpoints: Path, ema: SubmoduleEMA | None, others: list[Callback]
               ) -> list[Callback]:
    """EMA first (each step updates the average before any callback saves a checkpoint), then best, last, others."""
    best = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/nelbo", mode="min", save_top_k=1,
                           save_last=False, enable_version_counter=False)
    last = ModelCheckpoint(dirpath=checkpoints, save_top_k=0, save_last=True, enable_version_counter=False,
                           every_n_train_steps=min(cfg.trainer.checkpoint_every, cfg.trainer.max_steps))
    return [*([ema] if ema is not None else []), best, last, *others]


def _trainer(cfg: TeacherRunConfig, out_dir: Path, denoiser: torch.nn.Module, callbacks: list[Callback]
             ) -> L.Trainer:
    """The Lightning trainer of a teacher run: validation every `val_every` steps, loggers, cluster settings."""
    return L.Trainer(
        max_steps=cfg.trainer.max_steps,
        max_time=timedelta(minutes=cfg.trainer.max_minutes) if cfg.trainer.max_minutes > 0 else None,
        gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=min(cfg.trainer.val_every, cfg.trainer.max_steps),
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.trainer.val_batches,
        log_every_n_steps=cfg.trainer.log_every,
        enable_progress_bar=cfg.trainer.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        logger=make_loggers(cfg.logger, out_dir, "teacher", cfg),
        callbacks=callbacks,
        default_root_dir=str(out_dir),
        **cluster_trainer_args(cfg.trainer, denoiser),
    )


def _fit(cfg: TeacherRunConfig, trainer: L.Trainer, module: TeacherModule, train_loader: Any, val_loader: Any,
         ckpt_path: Path | None, preemption: PreemptionCheckpoint) -> float:
    """Train (from `ckpt_path` when resuming) and validate the last step; the seconds it took. Preempted: raise."""
    start = time.perf_counter()
    with expected_warnings():
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt_path) if ckpt_path else None)
    elapsed = time.perf_counter() - start
    if preemption.stopped_by:
        finish_loggers(trainer)
        raise Preempted(f"{preemption.stopped_by} at step {trainer.global_step}: checkpoint saved in "
                        f"{preemption.checkpoint_path.parent}; continue with the same command and --resume")
    if trainer.global_step % cfg.trainer.val_every:  # stopped between validations (max_steps or max_minutes)
        trainer.validate(module, val_loader, verbose=False)
    return elapsed


def _final_weights(trainer: L.Trainer, denoiser: torch.nn.Module, ema: SubmoduleEMA | None
                   ) -> tuple[str, dict[str, float]]:
    """Which weights model/ gets ("ema" or "raw", by the final validation NELBO; loaded into `denoiser`) and
    each one's NELBO where measured."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    raw = metrics.get("val/nelbo_raw")
    averaged = metrics.get("val/nelbo") if ema is not None else None
    weights = better_weights(averaged, raw) if ema is not None else "raw"
    if weights == "ema":
        denoiser.load_state_dict(ema.averaged_state())
    return weights, {name: value for name, value in (("ema", averaged), ("raw", raw)) if value is not None}
