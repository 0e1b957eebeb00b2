"""The `fewstep` command line: one subcommand per stage of the pipeline, from one table (`table.py`).

Every subcommand reports bad input as one `error: ...` line saying what to fix, and exits with
status 2 (1 for a failure during a run, such as a NaN loss), without touching good outputs. A run
stopped by SIGTERM or SIGUSR1 saves its checkpoint first and exits with status 3.
"""

from __future__ import annotations

from fewstep.cli.parser import build_parser, main

__all__ = ["main", "build_parser"]
