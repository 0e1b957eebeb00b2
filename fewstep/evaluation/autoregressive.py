"""The reference autoregressive model: generative NLL of samples, and the AR speed baseline.

Any Hugging Face causal LM serves as the judge (by path or id); the embedded one is a small
GPT-2-config model trained on the same corpus by `fewstep evaluator CONFIG`. The same architecture,
decoding with a KV cache, is the autoregressive baseline that diffusion students must beat on speed.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from fewstep.core.config import save_config
from fewstep.core.io import atomic_replace_dir, atomic_write_text
from fewstep.core.ownership import input_paths
from fewstep.data.loader import eval_loader
from fewstep.data.sources import build_data
from fewstep.data.tokens import make_loader
from fewstep.errors import ModelError, NonFiniteLossError
from fewstep.evaluation.config import EvaluatorModelConfig, EvaluatorRunConfig
from fewstep.kernels.stats import draw_tokens
from fewstep.training.config import OptimConfig
from fewstep.training.optim import make_optimizer, regroup_saved_optimizer
from fewstep.training.runtime import (
    AtomicCheckpointIO,
    allocation_errors,
    check_device,
    expected_warnings,
    finish_loggers,
    make_loggers,
    own_run_dir,
    resolve_precision,
)

__all__ = [
    "ARModule",
    "train_evaluator",
    "load_evaluator",
    "generative_nll",
    "ar_sample",
    "decode_step",
]






def _gpt2(cfg: EvaluatorModelConfig, vocab_size: int, seq_len: int, bos: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=seq_len + 1, n_embd=cfg.hidden_size,
                        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
                        bos_token_id=bos, eos_token_id=bos, pad_token_id=None,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


class ARModule(L.LightningModule):
    """Next-token cross-entropy; every sequence is prefixed with a start token (the mask id)."""

    def __init__(self, model: torch.nn.Module, start_id: int, optim: OptimConfig, max_steps: int) -> None:
        super().__init__()
        self.model = model
        self.start_id = start_id
        self.optim = optim
        self.max_steps = max_steps

    def nll(self, tokens: torch.Tensor) -> torch.Tensor:
        inputs = F.pad(tokens, (1, 0), value=self.start_id)[:, :-1]
        logits = self.model(input_ids=inputs).logits
        return F.cross_entropy(logits.transpose(1, 2).float(), tokens)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.nll(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the evaluator's loss is {loss.item()} at step {self.global_step}")
        self.log("train/nll", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/nll", self.nll(batch), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict:
        return make_optimizer(self.model, self.optim, self.max_steps)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        regroup_saved_optimizer(checkpoint, self.model)  # a run saved with one AdamW group resumes


def train_evaluator(cfg: EvaluatorRunConfig, resume: bool = False) -> dict[str, Any]:
    """Train the GPT-2-config evaluator; writes `out_dir/model/` (a Hugging Face causal LM + tokenizer)."""
    check_device(cfg.trainer.accelerator, "trainer.accelerator")
    out_dir = Path(cfg.out_dir)
    sources = input_paths(cfg.model.pretrained, cfg.data.path, cfg.data.tokenizer)
    with own_run_dir(out_dir, "evaluator-run", cfg, resume, ("data", "model", "optim"), sources) as ckpt:
        return _train_evaluator(cfg, out_dir, ckpt)


def _train_evaluator(cfg: EvaluatorRunConfig, out_dir: Path, ckpt: Path | None) -> dict[str, Any]:
    L.seed_everything(cfg.trainer.seed, verbose=False)
    with allocation_errors("building the data and the model"):
        data = build_data(cfg.data, out_dir)
        model = _gpt2(cfg.model, len(data.tokenizer), data.train.shape[1], data.mask_id)
    save_config(cfg, out_dir / "config.yaml")  # only now: every check has passed
    module = ARModule(model, data.mask_id, cfg.optim, cfg.trainer.max_steps)
    val_loader, val_process = eval_loader(data.val, cfg.trainer.batch_size)  # the teacher's held-out sample
    trainer = L.Trainer(
        max_steps=cfg.trainer.max_steps,
        max_time=timedelta(minutes=cfg.trainer.max_minutes) if cfg.trainer.max_minutes > 0 else None,
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        precision=resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator),
        gradient_clip_val=cfg.optim.grad_clip or None, val_check_interval=min(cfg.trainer.val_every,
                                                                              cfg.trainer.max_steps),
        check_val_every_n_epoch=None, limit_val_batches=cfg.trainer.val_batches,
        log_every_n_steps=cfg.trainer.log_every, enable_progress_bar=cfg.trainer.progress,
        enable_model_summary=False, num_sanity_val_steps=0, logger=make_loggers(cfg.logger, out_dir, "evaluator", cfg),
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True,
                                                       save_top_k=0, enable_version_counter=False), val_process],
        plugins=[AtomicCheckpointIO()], default_root_dir=str(out_dir),
    )
    start = time.perf_counter()
    with expected_warnings():
        trainer.fit(module, make_loader(data.train, cfg.trainer.batch_size, True, cfg.trainer.seed),
                    val_loader, ckpt_path=str(ckpt) if ckpt else None)
        if trainer.global_step % cfg.trainer.val_every:  # stopped between validations (max_steps or max_minutes)
            trainer.validate(module, val_loader, verbose=False)
    finish_loggers(trainer)
    val = float(trainer.callback_metrics.get("val/nll", float("nan")))

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        data.tokenizer.save_pretrained(tmp)
        (tmp / "fewstep_evaluator.json").write_text(json.dumps(
            {"start_id": data.mask_id, "data": asdict(cfg.data), "data_fingerprint": data.fingerprint,
             "val_nll": val}, indent=2))

    atomic_replace_dir(out_dir / "model", fill)
    summary = {"val_nll": val, "steps": trainer.global_step, "train_seconds": time.perf_counter() - start,
               "parameters": sum(p.numel() for p in model.parameters()), "model_dir": str(out_dir / "model")}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


@dataclass
class Evaluator:
    model: torch.nn.Module
    start_id: int
    meta: dict[str, Any]


def load_evaluator(path: str | Path, device: str | torch.device = "cpu") -> Evaluator:
    """A causal LM directory (trained by `fewstep evaluator`, or any Hugging Face causal LM)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "model" / "config.json").exists():
        path = path / "model"
    with _load_report() as report:
        try:
            model = AutoModelForCausalLM.from_pretrained(path)
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load the evaluator {path}: {str(error).splitlines()[0]}") from error
        except RuntimeError as error:  # weights that do not fit config.json (e.g. another vocabulary size)
            found = "; ".join(report) or str(error).splitlines()[0]
            raise ModelError(f"cannot load the evaluator {path}: its weights do not fit its config.json ({found}); "
                             "re-train it with `fewstep evaluator` or use the directory it was saved as") from error
    meta_file = path / "fewstep_evaluator.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    start = meta.get("start_id", model.config.bos_token_id)
    if start is None:
        raise ModelError(f"the evaluator {path} has no bos_token_id to start sequences with")
    return Evaluator(model.to(device).eval(), int(start), meta)


@contextmanager
def _load_report() -> Iterator[list[str]]:
    """The rows of transformers' loading report (mismatched shapes), which its error only points "above" to."""
    import logging

    rows: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())
            rows.extend(" ".join(line.replace("|", " ").split()) for line in text.splitlines()
                        if "MISMATCH" in line and not line.lstrip().startswith("-"))

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield rows
    finally:
        logger.removeHandler(handler)


@torch.no_grad()
def generative_nll(evaluator: Evaluator, tokens: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Mean NLL per token (nats) of `tokens` under the evaluator, and the perplexity exp(NLL)."""
    device = next(evaluator.model.parameters()).device
    vocab = evaluator.model.config.vocab_size
    if tokens.max() >= vocab:
        raise ModelError(f"sample ids go up to {int(tokens.max())} but the evaluator's vocabulary is {vocab}")
    total, count = 0.0, 0
    for chunk in tokens.split(batch_size):
        chunk = chunk.to(device)
        inputs = F.pad(chunk, (1, 0), value=evaluator.start_id)[:, :-1]
        logits = evaluator.model(input_ids=inputs).logits.double()
        total += float(F.cross_entropy(logits.transpose(1, 2), chunk, reduction="sum"))
        count += chunk.numel()
    nll = total / count
    return {"gen_nll": nll, "gen_ppl": math.exp(min(nll, 50.0))}


def _cache_keyword(model: torch.nn.Module) -> str:
    """The keyword that takes the KV cache: `past_key_values` in transformers 4.x (whose forward also
    takes **kwargs, so a `cache=` there is swallowed and every token is decoded without context),
    `cache` in the 5.x releases that deprecate the old name."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def decode_step(model: torch.nn.Module, token: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """One KV-cached decoding step: the next-token logits [batch, V] after `token` [batch, 1] and the
    grown cache (None before the first token)."""
    extra = {_cache_keyword(model): cache} if cache is not None else {}
    result = model(input_ids=token, use_cache=True, **extra)
    grown = getattr(result, "past_key_values", None)
    return result.logits[:, -1], grown if grown is not None else result.cache


@torch.no_grad()
def ar_sample(evaluator: Evaluator, num_samples: int, seq_len: int, seed: int = 0, batch_size: int | None = None,
              exclude: int | None = None) -> tuple[torch.Tensor, float]:
    """Decode token by token with a KV cache and the sampler's own draw (inverse CDF with a float64
    uniform per token, `fewstep.kernels.stats.draw_tokens`); returns (tokens, seconds)."""
    model = evaluator.model
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    batch_size = batch_size or num_samples
    chunks = []
    start = time.perf_counter()
    for first in range(0, num_samples, batch_size):
        batch = min(batch_size, num_samples - first)
        token = torch.full((batch, 1), evaluator.start_id, dtype=torch.long, device=device)
        cache, out = None, []
        for _ in range(seq_len):
            logits, cache = decode_step(model, token, cache)
            u = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
            token = draw_tokens(logits, u, mask_id=exclude).unsqueeze(1)
            out.append(token)
        chunks.append(torch.cat(out, dim=1))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return torch.cat(chunks).cpu(), time.perf_counter() - start
