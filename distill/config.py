"""Structured run configs: dataclasses merged with a YAML file and `key=value` overrides.

Every field is typed; an unknown key or a value of the wrong type stops the run at start-up with
the valid keys named (`ConfigError`). The resolved config is saved next to every run's outputs.
"""

from __future__ import annotations

import difflib
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
    "ModelConfig",
    "DiffusionConfig",
    "OptimConfig",
    "RuntimeConfig",
    "TrainerConfig",
    "WandbConfig",
    "LoggerConfig",
    "TeacherRunConfig",
    "TeacherSourceConfig",
    "StudentConfig",
    "LoraConfig",
    "TEACHER_FAMILIES",
    "LossConfig",
    "RoundsConfig",
    "TrajectoryConfig",
    "DistillTrainerConfig",
    "EvalConfig",
    "DistillRunConfig",
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


@dataclass
class DataConfig:
    """Where tokens come from, how long a sequence is, and how the data is split."""

    source: str = "markov"  # markov | stdlib | text | jsonl | hf
    path: str | None = None  # text / jsonl file, or a Hugging Face dataset name for `hf`
    text_field: str = "text"  # jsonl / hf field that holds the document
    hf_config: str | None = None  # Hugging Face dataset config name
    hf_split: str = "train"
    seq_len: int = 64
    tokenizer: str | None = None  # tokenizer.json or a directory with one; trained when absent
    vocab_size: int = 2048  # BPE vocabulary size when a tokenizer is trained
    max_bytes: int = 4_000_000  # cap on corpus bytes read (stdlib / text / jsonl / hf); 0 = no cap
    num_train: int = 20_000  # markov: training sequences
    num_val: int = 512  # markov: validation sequences
    val_fraction: float = 0.05  # corpora: fraction of documents held out (by a hash of their text)
    seed: int = 0  # markov: seed of the sampled sequences
    markov: MarkovConfig = field(default_factory=MarkovConfig)

    def __post_init__(self) -> None:
        sources = ("markov", "stdlib", "text", "jsonl", "hf")
        if self.source not in sources:
            raise ConfigError(f"data.source={self.source!r} is not one of {', '.join(sources)}")
        if self.seq_len < 2:
            raise ConfigError("data.seq_len must be at least 2")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction must be in (0, 1)")
        if self.source in ("text", "jsonl", "hf") and not self.path:
            raise ConfigError(
                f"data.source={self.source} needs data.path (a file, or a dataset name for hf); "
                f"pass it as data.path=..."
            )


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
    """AdamW with linear warm-up, then constant or cosine decay; EMA of the weights."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    decay: str = "cosine"  # constant | cosine
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables
    ema: float = 0.999  # 0 disables EMA

    def __post_init__(self) -> None:
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


# ------------------------------------------------------------------------------------ distillation
TEACHER_FAMILIES = ("auto", "fewstep", "masked_lm", "mdlm", "llada", "dream")


@dataclass
class TeacherSourceConfig:
    """The teacher: a teacher run's out_dir, a model directory, or a Hugging Face id / local HF folder."""

    path: str = MISSING
    trust_remote_code: bool = False
    family: str = "auto"  # auto | fewstep | masked_lm | mdlm | llada | dream: how its outputs map onto a denoiser
    tokenizer: str | None = None  # a tokenizer id/path when the model repo has none (MDLM-OWT uses gpt2)
    mask_id: int | None = None  # override the family's mask id (LLaDA 126336, Dream 151666, MDLM vocab-1)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: the frozen teacher's weights

    def __post_init__(self) -> None:
        if self.family not in TEACHER_FAMILIES:
            raise ConfigError(f"teacher.family={self.family!r} is not one of {', '.join(TEACHER_FAMILIES)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"teacher.dtype={self.dtype!r} is not one of auto, float32, bfloat16, float16")


@dataclass
class LoraConfig:
    """A LoRA student (peft): only low-rank adapters train; the rest stays the teacher's. rank 0 = off."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)  # empty = the family's attention/MLP projections

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ConfigError("student.lora.rank must be >= 0 (0 disables LoRA)")


@dataclass
class StudentConfig:
    """The student starts as a copy of the teacher (`init: teacher`) or as a new `model` (`init: config`)."""

    init: str = "teacher"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if self.init not in ("teacher", "config"):
            raise ConfigError(f"student.init={self.init!r} is not one of teacher, config")


@dataclass
class LossConfig:
    divergence: str = "kl_bwd"  # kl_fwd | kl_bwd | jeffreys | tvd | mse
    dtype: str = "float32"  # float32 | float64

    def __post_init__(self) -> None:
        from fewstep.distill.losses import DIVERGENCES

        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"loss.divergence={self.divergence!r} is not one of {', '.join(DIVERGENCES)}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"loss.dtype={self.dtype!r} is not one of float32, float64")


@dataclass
class RoundsConfig:
    """Rounds of distillation; round r's student samples in `steps_for(r)` steps."""

    start_steps: int = 64  # N0: the first round's student step count
    count: int = 3
    steps_per_round: int = 500  # optimiser steps per round
    shrink: str = "halve"  # halve | linear
    linear_step: int = 0  # with shrink=linear: steps removed per round
    k: int = 2  # teacher steps per student step (SDTT)
    teacher_from: str = "ema"  # ema | student: what becomes the next round's teacher
    reset_optimizer: bool = True

    def __post_init__(self) -> None:
        if self.count < 1 or self.steps_per_round < 1 or self.start_steps < 1 or self.k < 1:
            raise ConfigError("rounds.count, rounds.steps_per_round, rounds.start_steps and rounds.k must be >= 1")
        if self.shrink == "halve":
            factor = 2 ** (self.count - 1)
            if self.start_steps % factor:
                raise ConfigError(
                    f"rounds.start_steps={self.start_steps} is not divisible by {factor} (2^(rounds.count-1)), so "
                    f"it cannot halve {self.count - 1} times; use e.g. rounds.start_steps={factor * 8}"
                )
        elif self.shrink == "linear":
            if self.linear_step < 1 or self.start_steps - (self.count - 1) * self.linear_step < 1:
                raise ConfigError(
                    "rounds.shrink=linear needs rounds.linear_step >= 1 and start_steps - (count-1)*linear_step >= 1"
                )
        else:
            raise ConfigError(f"rounds.shrink={self.shrink!r} is not one of halve, linear")
        if self.teacher_from not in ("ema", "student"):
            raise ConfigError(f"rounds.teacher_from={self.teacher_from!r} is not one of ema, student")

    def steps_for(self, round_index: int) -> int:
        if self.shrink == "halve":
            return self.start_steps // 2**round_index
        return self.start_steps - round_index * self.linear_step


@dataclass
class TrajectoryConfig:
    """Trajectory distillation (dParallel / d3LLM): learn from the teacher's own samples."""

    num_trajectories: int = 2048
    teacher_steps: int = 0  # 0 = rounds.start_steps * rounds.k
    batch_size: int = 64  # sequences per teacher sampling batch
    entropy_weight: float = 0.5  # weight of the certainty-forcing term


@dataclass
class DistillTrainerConfig(RuntimeConfig):
    """Trainer settings for distillation; the length is rounds.count * rounds.steps_per_round."""

    batch_size: int = 32  # the global batch, shared out over data-parallel processes


@dataclass
class EvalConfig:
    """Round-end validation: samples per model, float64 Gumbel noise."""

    num_samples: int = 64
    seed: int = 0
    enabled: bool = True


@dataclass
class DistillRunConfig:
    """`fewstep distill`: distil a teacher into a few-step student in rounds."""

    out_dir: str = "runs/distill"
    teacher: TeacherSourceConfig = field(default_factory=TeacherSourceConfig)
    method: str = "sdtt"  # sdtt | trajectory
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=50, decay="constant"))
    trainer: DistillTrainerConfig = field(default_factory=DistillTrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.method not in ("sdtt", "trajectory"):
            raise ConfigError(f"method={self.method!r} is not one of sdtt, trajectory")
