"""The model sections of a run config: the denoiser to build (`model`), the noise schedule (`diffusion`),
the teacher to load (`teacher`: a fewstep model directory or a Hugging Face checkpoint) and a LoRA student
(`student.lora`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from fewstep.errors import ConfigError


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
    # how training estimates the NELBO: independent = MDLM (each token masked with prob 1 - alpha(t),
    # weight 1/t); exact_count = n ~ Uniform{1..L} tokens masked exactly, weight L/n (same objective)
    masking: str = "independent"

    def __post_init__(self) -> None:
        if self.noise_schedule not in ("loglinear", "linear", "cosine"):
            raise ConfigError(
                f"diffusion.noise_schedule={self.noise_schedule!r} is not one of loglinear, linear, cosine"
            )
        if self.masking not in ("independent", "exact_count"):
            raise ConfigError(f"diffusion.masking={self.masking!r} is not one of independent, exact_count")


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
