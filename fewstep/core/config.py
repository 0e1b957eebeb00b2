"""How a run config is read: a dataclass schema merged with a YAML file and `key=value` overrides.

Every field is typed; an unknown key or a value of the wrong type stops the run at start-up with
the valid keys named (`ConfigError`). The resolved config is saved next to every run's outputs. The
sections live with what they configure (`data/config.py`, `model/config.py`, `training/config.py`) and
each command's run config with its stage (`teacher/config.py`, `distillation/config.py`, ...).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import json
import textwrap
import tokenize
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from fewstep.core.io import atomic_write_text
from fewstep.errors import ConfigError

__all__ = [
    "KeyDoc",
    "config_docs",
    "commented_yaml",
    "yaml_value",
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




class KeyDoc(NamedTuple):
    """One config key as its dataclass declares it: the annotation as written, the default, the comment."""

    type: str
    default: Any
    doc: str


def _comments(source: str) -> dict[int, str]:
    """The text of every comment in `source`, by (1-based) line."""
    return {token.start[0]: token.string.lstrip("#").strip()
            for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}


def _declared_fields(cls: type) -> dict[str, tuple[str, str]]:
    """name -> (annotation, doc) for the fields `cls` itself declares, read from its source.

    A field's doc is its trailing comment, after the comment lines directly above it. Comment lines between
    two fields that both have trailing comments continue the upper one (a trailing comment wrapped onto the
    next line)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a class made at run time)
        return {}
    comments, lines = _comments(source), source.splitlines()
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    found: dict[str, tuple[str, list[str]]] = {}
    previous: tuple[str, bool, int] | None = None  # (name, has a trailing comment, last line)
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            previous = None
            continue
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            line -= 1
        above = [comments[n] for n in range(line + 1, node.lineno)]
        own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]  # type: ignore[operator]
        if above and own and previous is not None and previous[1] and previous[2] == line:
            found[previous[0]][1].extend(above)
            above = []
        found[node.target.id] = (ast.unparse(node.annotation), [*above, *own])
        previous = (node.target.id, bool(own), node.end_lineno or node.lineno)
    return {name: (kind, " ".join(doc)) for name, (kind, doc) in found.items()}


def _class_doc(cls: type) -> str:
    """The first line of a dataclass's own docstring ('' for the one dataclasses writes)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return "" if doc.startswith(f"{cls.__name__}(") else doc.split("\n", 1)[0]


def _walk(node: DictConfig, values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, KeyDoc, bool]]:
    """(dotted key, its KeyDoc, whether it is a section) for every key of a structured config, sections first."""
    cls = OmegaConf.get_type(node)
    declared: dict[str, tuple[str, str]] = {}
    for base in reversed(getattr(cls, "__mro__", ())):  # a subclass's field (and its comment) wins
        if dataclasses.is_dataclass(base):
            declared.update(_declared_fields(base))
    for key, value in values.items():
        child, full = node._get_node(key), f"{prefix}{key}"
        kind, doc = declared.get(str(key), ("", ""))
        section = OmegaConf.get_type(child) if isinstance(child, DictConfig) else None
        if isinstance(value, dict) and section is not None and dataclasses.is_dataclass(section):
            yield full, KeyDoc(kind or section.__name__, None, doc or _class_doc(section)), True
            yield from _walk(child, value, f"{full}.")
        else:
            yield full, KeyDoc(kind, value, doc), False


def config_docs(schema: Any) -> dict[str, KeyDoc]:
    """{dotted.key: (type, default, doc)} for every key of a run config dataclass (or of an instance: its
    values), through its nested sections; the docs are the `# ...` comments of the dataclasses' source."""
    node = OmegaConf.structured(schema)
    return {key: doc for key, doc, section in _walk(node, OmegaConf.to_container(node)) if not section}


def yaml_value(value: Any) -> str:
    """`value` as YAML on one line (flow style), as it would load back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...").strip()
    return json.dumps(value) if "\n" in text else text  # a JSON string is YAML on one line


def commented_yaml(cfg: Any) -> str:
    """A resolved config as YAML with each key's doc as a trailing `# comment`; it loads back to the same values."""
    node = OmegaConf.structured(cfg)
    values = OmegaConf.to_container(node)
    entries = {key: (doc, section) for key, doc, section in _walk(node, values)}
    lines: list[str] = []

    def emit(section: dict[str, Any], prefix: str, indent: str) -> None:
        for key, value in section.items():
            doc, nested = entries.get(f"{prefix}{key}", (KeyDoc("", None, ""), False))
            comment = f"  # {doc.doc}" if doc.doc else ""
            if nested and value:
                lines.append(f"{indent}{key}:{comment}")
                emit(value, f"{prefix}{key}.", indent + "  ")
            else:
                lines.append(f"{indent}{key}: {yaml_value(value)}{comment}")

    emit(values, "", "")  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"
