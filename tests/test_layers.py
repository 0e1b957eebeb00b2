"""The layout's rules that a test can hold: kernels import nothing of fewstep's but themselves, nothing
imports the CLI, and importing fewstep changes no process-wide state (warning filters, environment), nor
does drawing its plot (matplotlib's backend)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fewstep": ROOT / "fewstep", "fewstep.distill": ROOT / "distill", "fewstep.samplers": ROOT / "samplers",
            "fewstep.kernels": ROOT / "kernels"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules():
    for package, directory in PACKAGES.items():
        for path in sorted(directory.glob("*.py")):
            yield package, path


def test_kernels_import_nothing_of_fewstep_but_the_kernels():
    for package, path in _modules():
        if package != "fewstep.kernels":
            continue
        outside = {m for m in _imports(path) if m.startswith("fewstep") and not m.startswith("fewstep.kernels")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_nothing_imports_the_cli():
    for _, path in _modules():
        if path.name in ("cli.py", "__main__.py"):
            continue
        assert not {m for m in _imports(path) if m.startswith("fewstep.cli")}, f"{path.relative_to(ROOT)} imports the CLI"


def test_importing_every_module_changes_no_process_wide_state(tmp_path):
    modules = [f"{package}.{path.stem}" if path.stem != "__init__" else package for package, path in _modules()
               if path.stem != "__main__"]
    script = f"""
import json, os, sys, warnings
import importlib
# the dependencies first: their own filters and variables are theirs
for name in ("torch", "lightning", "lightning.pytorch", "transformers", "tokenizers", "omegaconf", "safetensors"):
    importlib.import_module(name)
before = (list(map(str, warnings.filters)), dict(os.environ))
for name in {modules!r}:
    importlib.import_module(name)
after = (list(map(str, warnings.filters)), dict(os.environ))
import matplotlib
backend = matplotlib.rcParams["backend"]
from pathlib import Path
from fewstep.distill.tradeoff import plot_pareto
rows = [{{"model": "m", "sampler": "s", "steps": n, "tokens_per_s": 10.0 * n, "quality": {{"entropy": 1.0 / n}}}}
        for n in (1, 2)]
plot_pareto(rows, Path({str(tmp_path)!r}) / "pareto.png")
print(json.dumps({{"filters": before[0] == after[0], "new_filters": after[0][: len(after[0]) - len(before[0])],
                  "environ": sorted(set(after[1].items()) ^ set(before[1].items())),
                  "backend": matplotlib.rcParams["backend"] == backend}}))
"""
    # from a neutral directory: in the checkout, `-c` would import the source folder fewstep/ in place of the
    # installed package (whose subpackages map to distill/, samplers/, kernels/)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["filters"], f"importing fewstep added warning filters: {state['new_filters']}"
    assert not state["environ"], f"importing fewstep changed the environment: {state['environ']}"
    assert state["backend"], "fewstep's plot switched matplotlib's backend (a user's notebook would lose its own)"
