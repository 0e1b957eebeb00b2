"""Deployable model directories: export from a Lightning checkpoint or a model directory, load, generate.

An export is a model directory (`config.json`, `model.safetensors` with fewstep metadata, tokenizer
files, `fewstep.json`) plus `fewstep_generation.json`, the generation defaults: step count,
sampler, schedule and temperature (what `fewstep tune` chose), and `scheduler_config.json` when a
learned schedule came with the model.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewstep.core.io import atomic_replace_dir, load_checkpoint
from fewstep.core.ownership import check_dir, mark_dir
from fewstep.data.corpus import jsonl_values
from fewstep.errors import CheckpointError, DataError, ModelError, OwnershipError
from fewstep.model.denoiser import Denoiser
from fewstep.model.model_dir import load_model_dir, resolve_model_dir, save_model_dir
from fewstep.samplers.presets import sample_with_spec
from fewstep.training.ema import RAW_STATE_KEY

__all__ = ["GENERATION_FILE", "export_model", "Pipeline", "load", "read_prompts"]

GENERATION_FILE = "fewstep_generation.json"
CARRIED = ("scheduler_config.json", "policy_head.safetensors", GENERATION_FILE)


def _run_dir_of(checkpoint: Path) -> Path:
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    if not (run / "model").exists() and not any(run.glob("round_*/model")):
        raise ModelError(f"cannot find the run of {checkpoint}: expected {run}/model/ beside checkpoints/ "
                         "(export from a teacher or distillation run's checkpoint)")
    return run


def _template_of(run: Path) -> Path:
    return run / "model" if (run / "model").exists() else sorted(run.glob("round_*/model"))[-1]


def _from_checkpoint(checkpoint: Path, trust_remote_code: bool = False) -> tuple[Denoiser, Any, dict[str, Any], Path]:
    """Rebuild the run's architecture from its model directory and load the checkpoint's weights.

    With EMA the checkpoint holds both the average and the raw weights; the export takes the ones the
    run itself exported (its model directory's `weights`: the better by validation NELBO at the run's
    end) and records which in `fewstep.json`.

    The checkpoint is read with `weights_only=True` (`load_checkpoint`): a file whose pickle would
    build anything but tensors and containers is refused before any of it runs.
    """
    template = _template_of(_run_dir_of(checkpoint))
    try:
        saved = load_checkpoint(checkpoint)
        state = saved["state_dict"]
    except CheckpointError as error:
        raise ModelError(str(error)) from error
    except KeyError as error:
        raise ModelError(f"{checkpoint} is not a Lightning checkpoint (it has no state_dict)") from error
    loaded = load_model_dir(template, trust_remote_code=trust_remote_code)
    raw = saved.get(RAW_STATE_KEY)
    if raw and loaded.meta.get("weights") == "raw":  # the run exported its raw weights, not the average
        state = {**state, **raw}
    loaded.meta["weights"] = "raw" if raw is None or loaded.meta.get("weights") == "raw" else "ema"
    for prefix in ("student.", "denoiser."):
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            break
    else:
        raise ModelError(f"{checkpoint} holds no denoiser or student weights")
    try:
        loaded.denoiser.load_state_dict(weights)
    except RuntimeError as error:
        raise ModelError(f"{checkpoint} does not fit the model in {template}: {str(error)[:300]}") from error
    return loaded.denoiser, loaded.tokenizer, loaded.meta, template


def _check_generation(settings: Any, where: str) -> dict[str, Any]:
    """Generation defaults must be a JSON object with a step count >= 1 and a finite temperature >= 0."""
    if not isinstance(settings, dict):
        raise ModelError(f"{where} must hold a JSON object of generation defaults (steps, sampler, schedule)")
    steps, temperature = settings.get("steps"), settings.get("temperature", 1.0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ModelError(f"{where}: the step count must be an integer >= 1, got {steps!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ModelError(f"{where}: the temperature must be a finite number >= 0, got {temperature!r}")
    for key in ("sampler", "schedule"):
        if key in settings and not isinstance(settings[key], str):
            raise ModelError(f"{where}: {key} must be a name (a string), got {settings[key]!r}")
    return settings


def _default_generation(meta: dict[str, Any]) -> dict[str, Any]:
    """What a model directory without `fewstep_generation.json` generates with: its own step count (64 if
    it has none), MDLM's ancestral sampler on its noise schedule, temperature 1."""
    return {"steps": meta.get("steps", 64), "sampler": "ancestral",
            "schedule": meta.get("noise_schedule", "loglinear"), "temperature": 1.0}


def _generation_defaults(meta: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The defaults overridden by the directory's `fewstep_generation.json`, checked, if it has one."""
    settings = _default_generation(meta)
    file = directory / GENERATION_FILE
    if file.exists():
        try:
            saved = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise ModelError(f"{file} is not valid JSON ({error})") from error
        settings.update(_check_generation(saved, str(file)))
    return settings


def _check_out_dir(out_dir: Path, inputs: list[Path], overwrite: bool) -> None:
    """OUT_DIR must be new, empty, or an export (then only with --overwrite); never an input's directory."""
    if check_dir(out_dir, "export", inputs) == "export" and not overwrite:
        raise OwnershipError(f"{out_dir} holds an export already; pass --overwrite to replace it, or give another "
                             "OUT_DIR; nothing was changed")


def export_model(source: str | Path, out_dir: str | Path, generation: dict[str, Any] | None = None,
                 overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Write a deployable directory from a Lightning checkpoint (.ckpt) or a model directory.

    `out_dir` is replaced as a whole, atomically, and only if it is an export (with `overwrite`);
    a run, a model directory, the source itself or a foreign directory is refused untouched.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise ModelError(f"{source} does not exist")
    if generation and generation.get("steps") is not None:
        _check_generation({"steps": generation["steps"]}, "--steps")
    inputs = [source, _run_dir_of(source)] if source.is_file() else [source, resolve_model_dir(source)]
    _check_out_dir(out_dir, inputs, overwrite)
    if source.is_file():
        denoiser, tokenizer, meta, origin = _from_checkpoint(source, trust_remote_code)
    else:
        loaded = load_model_dir(source, trust_remote_code=trust_remote_code)
        denoiser, tokenizer, meta, origin = loaded.denoiser, loaded.tokenizer, loaded.meta, resolve_model_dir(source)
    defaults = {**_generation_defaults(meta, origin), **(generation or {})}
    _check_generation(defaults, "the generation defaults")
    meta = {**meta, "steps": defaults["steps"], "sampler": defaults["sampler"], "schedule": defaults["schedule"]}

    def fill(tmp: Path) -> None:
        save_model_dir(denoiser, tokenizer, tmp, meta)
        for name in CARRIED:
            if (origin / name).exists() and name != GENERATION_FILE:
                shutil.copy2(origin / name, tmp / name)
        (tmp / GENERATION_FILE).write_text(json.dumps(defaults, indent=2))
        mark_dir(tmp, "export")

    try:
        atomic_replace_dir(out_dir, fill, check=lambda path: _check_out_dir(path, inputs, overwrite=True))
    except OSError as error:
        raise OwnershipError(f"cannot write the export {out_dir}: {error.strerror or error}; give a directory you "
                             "can write to") from error
    return out_dir


@dataclass
class Pipeline:
    """A loaded export: `generate()` with its tuned defaults; `denoiser` and `tokenizer` for more."""

    denoiser: Denoiser
    tokenizer: Any
    meta: dict[str, Any]
    generation: dict[str, Any]
    directory: Path | None = None  # where learned schedules (scheduler_config.json) are read from

    def generate(self, num_samples: int = 1, steps: int | None = None, seed: int = 0,
                 temperature: float | None = None, seq_len: int | None = None,
                 batch_size: int = 64, prompts: list[str] | None = None, chat: bool = False) -> dict[str, Any]:
        """Sample with the export's defaults (its tuned sampler and schedule); returns texts, ids and NFE.

        With `prompts` (texts), `num_samples` answers per prompt, each up to the model's length and cut at
        the first end-of-sequence token; `texts` then holds the responses only and `prompts` their prompts.
        A prompt's answers depend only on (prompt, seed, answer number): the same in any batch, and the
        same as when it is given alone. `chat`: render each prompt as a user message with the tokenizer's
        chat template (an error if it has none).
        """

        generation = {**_default_generation(self.meta), **self.generation}
        steps = steps or int(generation["steps"])
        seq_len = seq_len or int(self.meta.get("seq_len", 64))
        temperature = generation["temperature"] if temperature is None else temperature
        sampler = generation["sampler"]
        noise_schedule = self.meta.get("noise_schedule", "loglinear")
        if sampler == "ancestral":  # its "schedule" is the noise schedule it was tuned with
            noise_schedule = generation["schedule"]
        rows, ids = None, None
        if prompts is not None:
            encoded = [self.encode_prompt(text, chat) for text in prompts]
            rows = [row for row in encoded for _ in range(num_samples)]
            ids = [k for _ in encoded for k in range(num_samples)]
            asked = [text for text in prompts for _ in range(num_samples)]
            num_samples = len(rows)
        out = sample_with_spec(sampler, self.denoiser, num_samples, seq_len, steps, seed=seed,
                               noise_schedule=noise_schedule, meta=self.meta, model_dir=self.directory,
                               temperature=temperature, batch_size=batch_size, prompt=rows, sample_ids=ids)
        result = {"texts": [self.tokenizer.decode(row.tolist()) for row in out.tokens], "tokens": out.tokens,
                  "nfe": out.nfe_per_sequence, "steps": steps, "tokens_per_forward": out.tokens_per_forward}
        if rows is not None:
            responses = [self.response(tokens[len(row):]) for tokens, row in zip(out.tokens, rows)]
            result.update(texts=[self.tokenizer.decode(r, skip_special_tokens=True) for r in responses],
                          responses=responses, prompts=asked)
        return result

    def encode_prompt(self, text: str, chat: bool = False) -> list[int]:
        """A prompt's token ids, as a user message in the chat template with `chat`."""
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ModelError("the export's tokenizer has no chat template; drop --chat (the prompt is then "
                                 "used as plain text) or export a model whose tokenizer has one")
            return list(self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                           add_generation_prompt=True, tokenize=True))
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def response(self, tokens: torch.Tensor) -> list[int]:
        """A generated continuation up to (not including) the first end-of-sequence token."""
        ids = tokens.tolist()
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def read_prompts(path: Path, field: str = "prompt") -> list[str]:
    """The `field` string of every line of a jsonl file (one JSON object per line; blank lines skipped)."""
    if not path.is_file():
        raise DataError(f"--prompts {path} is not a file; give a jsonl file with a {field!r} field on every line")
    prompts = []
    for _, where, record in jsonl_values(path, 0, f"a string {field!r} field"):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(f"{where} has no string field {field!r}; every line must be an object "
                            f'like {{"{field}": "..."}}')
        prompts.append(record[field])
    if not prompts:
        raise DataError(f"{path} holds no prompts; give one JSON object per line with a {field!r} field")
    return prompts


def load(path: str | Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> Pipeline:
    """Load an export (or any fewstep model directory) for generation.

    `trust_remote_code=True` lets a directory that ships its own modeling code run it; only pass it
    for a directory you trust (the CLI's `--trust-remote-code`).
    """
    loaded = load_model_dir(path, device=device, trust_remote_code=trust_remote_code)
    directory = resolve_model_dir(path)
    return Pipeline(loaded.denoiser, loaded.tokenizer, loaded.meta, _generation_defaults(loaded.meta, directory),
                    directory)
