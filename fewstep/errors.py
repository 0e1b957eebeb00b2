"""The errors fewstep raises for bad input: each message says what is wrong and how to fix it.

The bottom layer: this module imports nothing, and every other module may import it. The CLI turns
each of these into one `error:` line and a non-zero exit (`Preempted` exits with its own code).
"""

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "NonFiniteLossError",
    "OwnershipError",
    "Preempted",
    "RunError",
]


class ConfigError(ValueError):
    """A config that cannot be used as given; the message says what to change."""


class DataError(ValueError):
    """Data that cannot be used as given; the message says what is wrong and how to fix it."""


class ModelError(ValueError):
    """A model that does not fit its tokenizer or data; the message says what to fix."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely: truncated, not a checkpoint, or holding pickled code."""


class OwnershipError(RuntimeError):
    """A write refused because fewstep does not own the target; the message says what to do instead."""


class RunError(RuntimeError):
    """A run that cannot start or go on as asked; the message says why and what to do."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


class Preempted(RuntimeError):
    """The run stopped on a signal after saving its checkpoint; resume it with --resume."""

    exit_code = 3

