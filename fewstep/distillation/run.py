"""`fewstep distill`: load the teacher once, build the student, run the rounds with Lightning."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from fewstep.core.config import save_config
from fewstep.core.diffusion import make_schedule
from fewstep.core.ownership import input_paths
from fewstep.data.loader import train_loader
from fewstep.data.sources import build_data
from fewstep.data.tokens import TokenData
from fewstep.distillation.config import DistillRunConfig
from fewstep.distillation.module import DistillModule
from fewstep.distillation.rounds import RoundCallback
from fewstep.distillation.trajectory import ensure_trajectories, keep_verified
from fewstep.errors import ModelError, Preempted, RunError
from fewstep.model.config import TeacherSourceConfig
from fewstep.model.denoiser import build_denoiser
from fewstep.model.hub import load_hf_teacher
from fewstep.model.lora import apply_lora
from fewstep.model.model_dir import LoadedModel, is_model_dir, load_model_dir
from fewstep.training.ema import SubmoduleEMA
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

__all__ = ["DistillResult", "load_teacher", "run_distill"]

# what a checkpoint depends on; optim too, since a resumed optimiser keeps its saved learning rate
RESUME_SECTIONS = ("teacher", "method", "data", "student", "loss", "rounds", "trajectory", "optim")


@dataclass
class DistillResult:
    out_dir: Path
    model_dir: Path
    rounds: list[dict[str, Any]]
    train_seconds: float
    steps: int
    is_global_zero: bool = True  # False in the other processes of a data-parallel run


def load_teacher(source: TeacherSourceConfig) -> LoadedModel:
    """A teacher run's out_dir or a fewstep model directory; else a Hugging Face model (see `adapters`)."""
    path = Path(source.path)
    if source.family in ("auto", "fewstep") and path.exists() and is_model_dir(path):
        return load_model_dir(path, trust_remote_code=source.trust_remote_code)
    if source.family == "fewstep":
        raise ModelError(f"teacher.path={source.path!r} is not a fewstep model directory (teacher.family=fewstep)")
    if not path.exists() and (source.path.startswith((".", "/", "~")) or source.path.count("/") != 1):
        raise ModelError(f"teacher.path={source.path!r} does not exist (give a teacher run's out_dir, a model "
                         "directory, or a Hugging Face id like org/name)")

    return load_hf_teacher(source)


def _data_config(cfg: DistillRunConfig, teacher: LoadedModel):
    """Corpora are tokenised with the teacher's own tokenizer unless data.tokenizer says otherwise."""
    data = cfg.data
    teacher_dir = teacher.path
    if data.source != "markov" and data.tokenizer is None and teacher_dir:
        data = replace(data, tokenizer=str(teacher_dir))
    return data


def _check_fit(teacher: LoadedModel, data) -> None:
    size = len(data.tokenizer)
    if teacher.denoiser.vocab_size != size or teacher.denoiser.mask_id != data.mask_id:
        raise ModelError(
            f"the teacher's vocabulary ({teacher.denoiser.vocab_size} ids, mask id {teacher.denoiser.mask_id}) does "
            f"not fit the data's tokenizer ({size} ids, mask id {data.mask_id}); distil on the data the teacher was "
            "trained on (copy its data.* settings, or set data.tokenizer to the teacher's model directory)"
        )


def run_distill(cfg: DistillRunConfig, resume: bool = False, callbacks: list[Callback] | None = None) -> DistillResult:
    """Distil `cfg.teacher` into a student in rounds; `out_dir` is owned (checked, marked, locked) for the run."""
    if cfg.trainer.strategy == "fsdp":
        raise RunError(
            "trainer.strategy=fsdp is not supported for distillation yet: the round hand-over copies and reloads "
            "whole state dicts, which has not been made shard-aware or tested. Use trainer.strategy=ddp; for "
            "7-8B teachers add student.lora.rank=16 (the distill/llada_8b and distill/dream_7b recipes)"
        )
    check_device(cfg.trainer.accelerator, "trainer.accelerator")
    out_dir = Path(cfg.out_dir)
    sources = input_paths(cfg.teacher.path, cfg.data.path, cfg.data.tokenizer, cfg.trajectory.reuse)
    with own_run_dir(out_dir, "distill-run", cfg, resume, RESUME_SECTIONS, sources) as ckpt_path:
        return _distill(cfg, out_dir, ckpt_path, callbacks)


def _distill(cfg: DistillRunConfig, out_dir: Path, ckpt_path: Path | None, callbacks: list[Callback] | None
             ) -> DistillResult:
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    teacher = load_teacher(cfg.teacher)
    # a Hugging Face teacher brings its own tokenizer; a fewstep teacher's is found by path (_data_config)
    with allocation_errors("building the data"):
        data = build_data(_data_config(cfg, teacher), out_dir, tokenizer=None if teacher.path else teacher.tokenizer)
    _check_fit(teacher, data)
    if cfg.method == "trajectory" and cfg.trajectory.verify and getattr(data.task, "check", None) is None:
        raise RunError(f"trajectory.verify=true needs prompted data whose task has an exact checker (e.g. "
                       f"data.source=anagram); data.source={cfg.data.source} has none: drop trajectory.verify")
    if cfg.method == "trajectory" and cfg.trajectory.references > 1 and not data.prompted:
        raise RunError(f"trajectory.references={cfg.trajectory.references} needs prompted data (several answers to "
                       f"each prompt); data.source={cfg.data.source} has none: drop trajectory.references")
    save_config(cfg, out_dir / "config.yaml")  # only now: every check has passed

    schedule_name = teacher.meta.get("noise_schedule", "loglinear")
    schedule = make_schedule(schedule_name, teacher.meta.get("noise_eps", 1e-3))
    student = _student(cfg, teacher, data)
    original = copy.deepcopy(teacher.denoiser).eval()
    train_tokens, train_prompt_len = data.train, data.train_prompt_len
    if cfg.method == "trajectory":
        train_tokens, train_prompt_len = _trajectories(cfg, teacher, data, out_dir, schedule_name)

    module = DistillModule(student, teacher.denoiser, schedule, cfg.method, cfg.loss, cfg.rounds, cfg.optim,
                           cfg.trajectory, seed=cfg.trainer.seed)
    meta = {"noise_schedule": schedule_name, "noise_eps": schedule.eps, "seq_len": data.train.shape[1],
            "data": asdict(cfg.data), "data_fingerprint": data.fingerprint, "teacher": str(cfg.teacher.path)}
    del teacher  # the module owns the teacher now; no second reference keeps a replaced one alive
    ema = SubmoduleEMA("student", cfg.optim.ema, cfg.optim.ema_warmup) if cfg.optim.ema > 0 else None
    rounds = RoundCallback(cfg, data, original, meta, ema)
    checkpoints = out_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=checkpoints, filename="step-{step}", save_top_k=0, save_last=True,
                                 enable_version_counter=False,
                                 every_n_train_steps=min(cfg.trainer.checkpoint_every, cfg.rounds.steps_per_round))
    preemption = PreemptionCheckpoint(checkpoints / "last.ckpt", requeue=cfg.trainer.requeue)
    loader, position = train_loader(train_tokens, cfg.trainer.batch_size, seed=cfg.trainer.seed,
                                    num_workers=cfg.trainer.num_workers, prompt_len=train_prompt_len)
    prepare_backbone(student, cfg.trainer)
    trainer = _trainer(cfg, out_dir, module,
                       [*([ema] if ema else []), rounds, checkpoint, preemption, position, *(callbacks or [])])
    start = time.perf_counter()
    with expected_warnings():  # the frozen teacher in eval mode, the position-restoring sampler
        trainer.fit(module, loader, ckpt_path=str(ckpt_path) if ckpt_path else None)
    elapsed = time.perf_counter() - start
    trainer.strategy.barrier("distill-exported")  # rank 0 writes model/ at the last round's end
    finish_loggers(trainer)
    if preemption.stopped_by:
        raise Preempted(f"{preemption.stopped_by} at step {trainer.global_step} (round {module.round_index}): "
                        f"checkpoint saved in {checkpoints}; continue with the same command and --resume")
    return DistillResult(out_dir=out_dir, model_dir=out_dir / "model", rounds=rounds.history,
                         train_seconds=elapsed, steps=trainer.global_step, is_global_zero=trainer.is_global_zero)


def _student(cfg: DistillRunConfig, teacher: LoadedModel, data: TokenData) -> torch.nn.Module:
    """The trainable student: a copy of the teacher or a fresh denoiser (`student.init`), LoRA-wrapped if asked."""
    if cfg.student.init == "teacher":
        student = copy.deepcopy(teacher.denoiser).train()
    else:
        student = build_denoiser(cfg.student.model, data.tokenizer, data.mask_id, data.train.shape[1])
    student.requires_grad_(True)
    if cfg.student.lora.rank > 0:
        student = apply_lora(student, cfg.student.lora)
    return student


def _trajectories(cfg: DistillRunConfig, teacher: LoadedModel, data: TokenData, out_dir: Path, schedule_name: str
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's own samples as training tokens (and their prompt length), cached in `trajectories.pt`."""
    steps = cfg.trajectory.teacher_steps or cfg.rounds.start_steps * cfg.rounds.k
    spec, temperature = cfg.trajectory.resolved(data.prompted)
    seed = cfg.trainer.seed if cfg.trajectory.seed is None else cfg.trajectory.seed
    signature = {"teacher": str(cfg.teacher.path), "fingerprint": teacher.meta.get("data_fingerprint"),
                 "steps": steps, "seq_len": data.train.shape[1], "seed": seed}
    if data.prompted or spec != "ancestral" or temperature != 1.0:  # earlier caches stay valid
        signature.update(sampler=spec, temperature=temperature, data=data.fingerprint)
    references = cfg.trajectory.references
    if references > 1:
        signature.update(references=references)
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
    tokens, prompt_len = ensure_trajectories(
        teacher.denoiser.to(device), out_dir / "trajectories.pt", cfg.trajectory.num_trajectories,
        data.train.shape[1], steps, cfg.trajectory.batch_size, seed, data.mask_id, schedule_name,
        signature, progress=cfg.trainer.progress, prompts=data.train if data.prompted else None,
        prompt_len=data.train_prompt_len, spec=spec, temperature=temperature,
        reuse=cfg.trajectory.reuse, references=references)
    teacher.denoiser.cpu()
    if cfg.trajectory.verify:
        tokens, prompt_len, counts = keep_verified(tokens, prompt_len, data.tokenizer, data.task.check)
        if counts["prompts_kept"] == 0:
            raise RunError(f"trajectory.verify: the task's checker rejects all {counts['answers']} teacher answers, "
                           "so nothing is left to train on; check the teacher (fewstep bench on it) or drop "
                           "trajectory.verify")
        if cfg.trainer.progress:
            print(f"verified teacher answers: {counts['accepted']}/{counts['answers']} accepted, "
                  f"{counts['prompts_kept']}/{counts['prompts']} prompts kept")
    return tokens, prompt_len


def _trainer(cfg: DistillRunConfig, out_dir: Path, module: DistillModule, callbacks: list[Callback]) -> L.Trainer:
    """The Lightning trainer of a distillation: every round's steps, no validation loop (rounds validate)."""
    return L.Trainer(
        max_steps=cfg.rounds.count * cfg.rounds.steps_per_round,
        gradient_clip_val=cfg.optim.grad_clip or None,
        limit_val_batches=0,
        log_every_n_steps=cfg.trainer.log_every,
        enable_progress_bar=cfg.trainer.progress,
        enable_model_summary=False,
        logger=make_loggers(cfg.logger, out_dir, "distill", cfg),
        callbacks=callbacks,
        default_root_dir=str(out_dir),
        **cluster_trainer_args(cfg.trainer, module),
    )
