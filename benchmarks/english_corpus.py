"""An English corpus built only from files that ship with Python (nothing is downloaded).

    python benchmarks/english_corpus.py --out /tmp/english.txt

The prose of the interpreter's own documentation: the help topics (`pydoc_data/topics.py`, the
language reference's sections that `help()` prints) and the docstrings of the standard library's
modules, classes and functions (read with `ast`, never imported; tests excluded), one paragraph per
line, whitespace collapsed, duplicates and paragraphs shorter than `--min-chars` or mostly non-letters
dropped. A `text` corpus for `fewstep teacher teacher/text data.path=...` and `bench_budget.py`. The
content depends on the Python version (printed with the size), so record it beside any figure.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "__pycache__"}


def paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs of `text`, each on one line."""
    for block in re.split(r"\n\s*\n", text):
        line = " ".join(block.split())
        if line:
            yield line


def is_prose(line: str, min_chars: int) -> bool:
    letters = sum(c.isalpha() or c == " " for c in line)
    return len(line) >= min_chars and letters >= 0.8 * len(line)


def topic_texts() -> Iterator[str]:
    import pydoc_data.topics

    for name in sorted(pydoc_data.topics.topics):
        yield pydoc_data.topics.topics[name]


def docstrings(stdlib: Path) -> Iterator[str]:
    for path in sorted(stdlib.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(stdlib).parts) or path.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def build(max_bytes: int, min_chars: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    lines, size = [], 0
    for text in (*topic_texts(), *docstrings(stdlib)):
        for line in paragraphs(text):
            if line in seen or not is_prose(line, min_chars):
                continue
            seen.add(line)
            lines.append(line)
            size += len(line.encode()) + 1
            if size >= max_bytes:
                return lines
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the text file to write (must not exist)")
    parser.add_argument("--max-bytes", type=int, default=4_000_000, help="stop once the corpus is this large")
    parser.add_argument("--min-chars", type=int, default=40, help="shortest paragraph kept")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; pass another --out (this script never overwrites a file)", file=sys.stderr)
        return 2
    lines = build(args.max_bytes, args.min_chars)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{out}: {len(lines)} paragraphs, {out.stat().st_size:,} bytes, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
