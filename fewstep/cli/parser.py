"""The argparse parser, built from the command table, and `main`, which turns every fewstep error into one
`error:` line and an exit status."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from fewstep.cli.options import CONFIG_HELP
from fewstep.cli.runs import resolve
from fewstep.cli.table import COMMANDS, Command
from fewstep.core.config import config_docs, yaml_value
from fewstep.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    NonFiniteLossError,
    OwnershipError,
    Preempted,
    RunError,
)
from fewstep.version import __version__

__all__ = ["build_parser", "main", "config_keys_help"]

WITH_HELP = ("another YAML config merged over CONFIG (repeatable; later wins), e.g. --with cluster/ddp for 8 GPUs "
             "per node or --with cluster/fsdp; overrides still win")


def config_keys_help(schema: Any, config_file: bool = True, width: int | None = None) -> str:
    """The `config keys` section of a command's help: each key with its type and default, its doc below."""
    width = width or max(shutil.get_terminal_size().columns - 2, 40)
    where = "in CONFIG or as KEY=VALUE" if config_file else "as KEY=VALUE"
    lines = [f"config keys (set them {where}; type = default):"]
    for key, doc in config_docs(schema).items():
        lines.append(f"  {key}: {doc.type} = {yaml_value(doc.default)}")
        if doc.doc:
            lines.extend(textwrap.wrap(doc.doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines) + "\n"


class CommandParser(argparse.ArgumentParser):
    """A command's parser whose costly parts wait until it is used: options whose choices import torch, and
    the config keys listed in its help (a config module may import torch too)."""

    late_options: Callable[[argparse.ArgumentParser], None] | None = None
    config_class: str | None = None
    config_file = True

    def _complete(self) -> None:
        late, self.late_options = self.late_options, None
        if late is not None:
            late(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        text = super().format_help()
        if self.config_class is None:
            return text
        return f"{text}\n{config_keys_help(resolve(self.config_class), self.config_file)}"


def _add_config_options(parser: argparse.ArgumentParser, command: Command) -> None:
    """CONFIG, KEY=VALUE, --resume, --with and --print-config, as far as the command takes them (every run
    command takes --with; quickstart merges it over its own shipped config)."""
    if command.config_file:
        parser.add_argument("config", metavar="CONFIG", help=f"{CONFIG_HELP} (e.g. {command.example})")
    parser.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=command.overrides_help)
    if command.resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in out_dir from checkpoints/last.ckpt (the config must fit it)")
    parser.add_argument("--with", dest="layers", metavar="CONFIG", action="append", default=[], help=WITH_HELP)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each key's doc as a # comment, and exit")


def build_parser() -> argparse.ArgumentParser:
    """The `fewstep` parser: one subcommand per row of the command table."""
    parser = argparse.ArgumentParser(
        prog="fewstep",
        description="Distil many-step masked-diffusion language models into few-step students.",
        epilog="Run `fewstep COMMAND --help` for a command's options. W&B logs offline unless WANDB_MODE "
               "or logger.wandb.mode says otherwise.",
    )
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.description)
        if command.options is not None:
            command.options(sub)
        if command.config is not None:
            _add_config_options(sub, command)
        sub.late_options, sub.config_class, sub.config_file = command.late_options, command.config, command.config_file
        sub.set_defaults(run_command=command.run, config_class=command.config)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    # key=value overrides may come before or after options (`teacher CFG --resume a=1` and `teacher CFG a=1 --resume`)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one `fewstep` command; bad input exits 2, a failed run 1, a preempted one 3, an interrupt 130."""
    args = _parse(build_parser(), argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.run_command(args)
    except (ConfigError, DataError, ModelError, RunError, OwnershipError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Preempted as error:
        print(f"stopped: {error}", file=sys.stderr)
        return Preempted.exit_code
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
