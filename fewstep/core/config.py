"""How a run config is read: a dataclass schema merged with a YAML file and `key=value` overrides.

Every field is typed; an unknown key or a value of the wrong type stops the run at start-up with
the valid keys named (`ConfigError`). The resolved config is saved next to every run's outputs. The
sections live with what they configure (`data/config.py`, `model/config.py`, `training/config.py`) and
each command's run config with its stage (`teacher/config.py`, `distillation/config.py`, ...).
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from fewstep.core.io import atomic_write_text
from fewstep.errors import ConfigError

__all__ = [
    "load_config",
    "resolve_config_path",
    "save_config",
    "MISSING",
]

T = TypeVar("T")
































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


def explain_error(error: OmegaConfBaseException, schema: DictConfig) -> str:
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
        raise ConfigError(explain_error(error, schema)) from error
    except ValueError as error:  # raised by a dataclass's __post_init__
        raise ConfigError(str(error)) from error
    return obj  # type: ignore[return-value]


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run can be reproduced from its outputs."""

    atomic_write_text(Path(path), OmegaConf.to_yaml(OmegaConf.structured(cfg)))


