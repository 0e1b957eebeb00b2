"""Structured run configs: dataclasses merged with a YAML file and `key=value` overrides.

Every field is typed; an unknown key or a value of the wrong type stops the run at start-up with
the valid keys named (`ConfigError`). The resolved config is saved next to every run's outputs.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

__all__ = [
    "ConfigError",
    "DataConfig",
    "MarkovConfig",
    "AnagramConfig",
    "ModelConfig",
    "DiffusionConfig",
    "OptimConfig",
    "RuntimeConfig",
    "TrainerConfig",
    "WandbConfig",
    "LoggerConfig",
    "TeacherRunConfig",
    "load_config",
    "resolve_config_path",
    "save_config",
    "MISSING",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used as given; the message says what to change."""


@dataclass
class MarkovConfig:
    """The embedded `markov` task: a fixed sparse random Markov chain."""

    num_states: int = 32
    branching: int = 4  # successors per state; every other transition has probability 0
    concentration: float = 1.0  # Dirichlet concentration of each row's non-zero weights
    seed: int = 0  # fixes the chain itself (not the samples drawn from it)

    def __post_init__(self) -> None:
        if self.num_states < 2:
            raise ConfigError("data.markov.num_states must be at least 2")
        if not 1 <= self.branching <= self.num_states:
            raise ConfigError(f"data.markov.branching must be in [1, num_states={self.num_states}]")


ANAGRAM_LETTERS = 26  # the alphabet the `anagram` task draws its letters from: a-z


@dataclass
class AnagramConfig:
    """The embedded `anagram` task: the answer is a set of distinct letters in any order.

    `show=missing` (the default): the prompt lists the alphabet's letters the answer leaves out;
    `show=letters`: the prompt lists the answer's own letters (under the NELBO this one stalls for
    thousands of steps: see distill/tasks.py).
    """

    min_letters: int = 4  # letters per answer, drawn uniformly from [min_letters, max_letters]
    max_letters: int = 8
    alphabet: int = 12  # the first `alphabet` letters of a-z
    show: str = "missing"  # missing | letters

    def __post_init__(self) -> None:
        if not 2 <= self.alphabet <= ANAGRAM_LETTERS:
            raise ConfigError(f"data.anagram.alphabet={self.alphabet} must be in [2, {ANAGRAM_LETTERS}] (letters a-z)")
        if not 2 <= self.min_letters <= self.max_letters <= self.alphabet:
            raise ConfigError(f"data.anagram needs 2 <= min_letters ({self.min_letters}) <= max_letters "
                              f"({self.max_letters}) <= alphabet ({self.alphabet})")
        if self.show not in ("missing", "letters"):
            raise ConfigError(f"data.anagram.show={self.show!r} is not one of missing, letters")

    def min_seq_len(self) -> int:
        """Tokens the longest example needs: prompt letters, '=', the answer and one EOS."""
        return self.alphabet + 2 if self.show == "missing" else 2 * self.max_letters + 2


MAX_SEQ_LEN = 65_536  # tokens per sequence; far above any model fewstep distils, far below an allocator failure


@dataclass
class DataConfig:
    """Where tokens come from, how long a sequence is, and how the data is split."""

    source: str = "markov"  # markov | anagram | stdlib | text | jsonl | hf
    path: str | None = None  # text / jsonl file, or a Hugging Face dataset name for `hf`
    text_field: str = "text"  # jsonl / hf field that holds the document
    # jsonl prompt/response data: one example per line, one row of seq_len each (prompt, response, EOS fill);
    # the loss counts the response only. `prompted` reads prompt_field/response_field; messages_field (chat
    # messages rendered by the tokenizer's chat template, the last one the assistant's answer) implies it.
    prompted: bool = False
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str | None = None
    hf_config: str | None = None  # Hugging Face dataset config name
    hf_split: str = "train"
    seq_len: int = 64
    tokenizer: str | None = None  # tokenizer.json or a directory with one; trained when absent
    vocab_size: int = 2048  # BPE vocabulary size when a tokenizer is trained
    max_bytes: int = 4_000_000  # cap on corpus bytes read (stdlib / text / jsonl / hf); 0 = no cap
    num_train: int = 20_000  # markov / anagram: training sequences
    num_val: int = 512  # markov / anagram: validation sequences
    val_fraction: float = 0.05  # corpora: fraction of documents held out (by a hash of their text)
    seed: int = 0  # markov / anagram: seed of the sampled sequences
    markov: MarkovConfig = field(default_factory=MarkovConfig)
    anagram: AnagramConfig = field(default_factory=AnagramConfig)

    @property
    def is_prompted(self) -> bool:
        """Whether examples are prompt/response pairs (the loss on the response only)."""
        return self.source == "anagram" or (self.source == "jsonl" and (self.prompted or bool(self.messages_field)))

    def __post_init__(self) -> None:
        sources = ("markov", "anagram", "stdlib", "text", "jsonl", "hf")
        if self.source not in sources:
            raise ConfigError(f"data.source={self.source!r} is not one of {', '.join(sources)}")
        if not 2 <= self.seq_len <= MAX_SEQ_LEN:
            raise ConfigError(f"data.seq_len={self.seq_len} must be in [2, {MAX_SEQ_LEN}] (tokens per sequence; "
                              "real diffusion LMs use 1024-8192)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction must be in (0, 1)")
        if self.source in ("text", "jsonl", "hf") and not self.path:
            raise ConfigError(
                f"data.source={self.source} needs data.path (a file, or a dataset name for hf); "
                f"pass it as data.path=..."
            )
        if (self.prompted or self.messages_field) and self.source != "jsonl":
            raise ConfigError(f"data.prompted / data.messages_field read prompt/response pairs from a jsonl file, "
                              f"not data.source={self.source}; use data.source=jsonl (data.source=anagram is "
                              "prompted by itself)")
        if self.source == "anagram" and self.seq_len < self.anagram.min_seq_len():
            raise ConfigError(f"data.seq_len={self.seq_len} cannot hold every example of data.anagram (show="
                              f"{self.anagram.show}: prompt letters and '=', then the answer and at least one EOS); "
                              f"use data.seq_len={self.anagram.min_seq_len()} or more, or a smaller alphabet / "
                              "max_letters")


@dataclass
class ModelConfig:
    """The denoiser backbone: a tiny ModernBERT built from config, or a pretrained checkpoint."""

    pretrained: str | None = None  # local directory or hub id for AutoModelForMaskedLM
    trust_remote_code: bool = False
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    local_attention: int = 128  # ModernBERT sliding-window width for its local layers
    dropout: float = 0.0
    time_conditioning: bool = False  # absorbing diffusion does not need it (MDLM, SDTT)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError("model.hidden_size must be divisible by model.num_heads")


@dataclass
class DiffusionConfig:
    """The forward (masking) process and how training draws t."""

    noise_schedule: str = "loglinear"  # loglinear | linear | cosine
    eps: float = 1e-3  # keeps alpha(1) = eps > 0 ... and the weights finite
    antithetic: bool = True  # low-discrepancy t: one uniform offset, evenly spaced across the batch

    def __post_init__(self) -> None:
        if self.noise_schedule not in ("loglinear", "linear", "cosine"):
            raise ConfigError(
                f"diffusion.noise_schedule={self.noise_schedule!r} is not one of loglinear, linear, cosine"
            )


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then constant or cosine decay; EMA of the weights.

    `ema` is the EMA's decay (0 disables it); with `ema_warmup` the decay of update t is
    min(ema, (1 + t) / (10 + t)), so a short run's average does not still hold its first weights.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    decay: str = "cosine"  # constant | cosine
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables
    ema: float = 0.999  # 0 disables EMA
    ema_warmup: bool = True  # decay of update t: min(ema, (1 + t) / (10 + t))

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"optim.lr={self.lr} must be a positive finite number, e.g. optim.lr=1e-3")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"optim.{name}={value} must be a finite number >= 0")
        if not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} must both be in [0, 1)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps must be >= 0")
        if self.decay not in ("constant", "cosine"):
            raise ConfigError(f"optim.decay={self.decay!r} is not one of constant, cosine")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError("optim.ema must be in [0, 1); 0 disables it")


@dataclass
class RuntimeConfig:
    """Where and how a run executes; shared by every kind of training run."""

    precision: str = "auto"  # auto = bf16-mixed on GPU, 32-true on CPU
    accelerator: str = "auto"
    devices: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 25
    progress: bool = True
    strategy: str = "auto"  # auto | ddp | fsdp: data parallel or sharded (see configs/cluster/)
    num_nodes: int = 1
    checkpoint_every: int = 100  # optimiser steps between writes of checkpoints/last.ckpt
    requeue: bool = True  # under SLURM, SIGUSR1 saves a checkpoint and requeues the job
    compile: bool = False  # torch.compile the trained backbone
    activation_checkpointing: bool = False  # recompute each layer in the backward pass: less memory

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"trainer.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.num_nodes < 1 or self.checkpoint_every < 1:
            raise ConfigError("trainer.num_nodes and trainer.checkpoint_every must be at least 1")


STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class TrainerConfig(RuntimeConfig):
    """Lightning Trainer settings that a user changes."""

    max_steps: int = 2000
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit); the LR plan uses max_steps
    batch_size: int = 64  # the global batch, shared out over data-parallel processes
    val_every: int = 250  # optimiser steps between validations (and checkpoints)
    val_batches: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_steps < 1:
            raise ConfigError("trainer.max_steps must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("trainer.batch_size must be at least 1")


@dataclass
class WandbConfig:
    """W&B logging; offline unless the user sets WANDB_MODE or logger.wandb.mode."""

    mode: str | None = None  # offline | online | disabled; None = $WANDB_MODE or offline
    project: str = "fewstep"
    name: str | None = None


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class TeacherRunConfig:
    """`fewstep teacher`: pretrain a masked-diffusion teacher with the MDLM objective."""

    out_dir: str = "runs/teacher"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sample_steps: int = 64  # steps for the samples printed at the end of a run
    num_print_samples: int = 4


def resolve_config_path(name: str) -> Path:
    """A config given as a path, or as a name of a config shipped with fewstep (`teacher/markov`)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = resources.files("fewstep.configs")
    for candidate in (name, f"{name}.yaml"):
        entry = shipped.joinpath(candidate)
        if entry.is_file():
            return Path(str(entry))
    available = sorted(
        str(p.relative_to(Path(str(shipped))).with_suffix(""))
        for p in Path(str(shipped)).rglob("*.yaml")
    )
    raise ConfigError(
        f"config {name!r} is neither a file nor a shipped config; shipped configs: {', '.join(available)}"
    )


def _valid_keys(schema: Any, prefix: str = "") -> list[str]:
    keys = []
    for key in schema.keys():
        full = f"{prefix}{key}"
        value = schema._get_node(key)
        if isinstance(value, DictConfig):
            keys.extend(_valid_keys(value, f"{full}."))
        else:
            keys.append(full)
    return keys


def _explain(error: OmegaConfBaseException, schema: DictConfig) -> str:
    key = getattr(error, "full_key", None) or ""
    if isinstance(error, MissingMandatoryValue):
        return f"config key {key!r} is required: set it in the YAML file or pass {key}=..."
    valid = _valid_keys(schema)
    message = str(error).splitlines()[0]
    if key and key not in valid:
        close = difflib.get_close_matches(key, valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = [k for k in valid if k.startswith(parent) and "." not in k[len(parent):]]
        return f"unknown config key {key!r}.{hint} Valid keys here: {', '.join(siblings or valid)}"
    return f"bad value for config key {key!r}: {message}"


def _refuse_placeholders(layers: list[DictConfig], names: list[str]) -> None:
    """A `???` (a value still to fill in) that no later layer or override fills would silently keep the default."""
    unset = object()
    for index, (layer, name) in enumerate(zip(layers, names)):
        try:
            missing = sorted(OmegaConf.missing_keys(layer))
        except OmegaConfBaseException:
            continue  # a malformed layer is reported by the merge, with its key
        for key in missing:
            if not any(OmegaConf.select(later, key, default=unset, throw_on_missing=False) is not unset
                       for later in layers[index + 1:]):
                where = "on the command line" if name == "the command line" else f"in {name}"
                raise ConfigError(f"config key {key!r} is ??? (a value still to fill in) {where} and nothing sets "
                                  f"it; pass {key}=...")


def load_config(schema_cls: type[T], config: str | Path | list[str | Path] | None,
                overrides: list[str] | None = None) -> T:
    """Merge `schema_cls` defaults, YAML files (in order, later wins) and `key=value` overrides."""
    schema = OmegaConf.structured(schema_cls)
    layers = []
    for name in [] if config is None else config if isinstance(config, list) else [config]:
        path = resolve_config_path(str(name))
        try:
            layers.append(OmegaConf.load(path))
        except Exception as error:  # yaml errors come in several types
            raise ConfigError(f"cannot read config {path}: {error}") from error
    bad = [o for o in overrides or [] if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    layers.append(OmegaConf.from_dotlist(list(overrides or [])))
    names = [str(n) for n in ([] if config is None else config if isinstance(config, list) else [config])]
    _refuse_placeholders(layers, [*names, "the command line"])
    try:
        merged = OmegaConf.merge(schema, *layers)
        obj = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as error:
        raise ConfigError(_explain(error, schema)) from error
    except ValueError as error:  # raised by a dataclass's __post_init__
        raise ConfigError(str(error)) from error
    return obj  # type: ignore[return-value]


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run can be reproduced from its outputs."""
    from fewstep.distill.io import atomic_write_text

    atomic_write_text(Path(path), OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def data_config(saved: dict[str, Any]) -> DataConfig:
    """A `DataConfig` from its saved form (a model's `fewstep.json` "data", a run's config): nested sections
    (markov, anagram) rebuilt as their dataclasses, keys it does not know (a later version's) refused."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig), saved)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        reason = _explain(error, OmegaConf.structured(DataConfig))
        raise ConfigError(f"the saved data config is not one this fewstep reads: {reason}") from error
    except ValueError as error:  # __post_init__
        raise ConfigError(str(error)) from error
