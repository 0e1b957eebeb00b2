"""The layout's rules that a test can hold: the subpackages import one way, down their layers (ARCHITECTURE.md);
kernels import nothing of fewstep's; nothing imports the CLI; an import of fewstep's own code sits at the top
of its module (not inside a function, where it would hide a cycle); and importing fewstep changes no
process-wide state (warning filters, environment), nor does drawing its plot (matplotlib's backend)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "fewstep"

# Bottom to top: a unit (a subpackage, or a top-level module) imports its own unit and units of lower
# layers only; units of one layer are independent of each other.
LAYERS = (
    ("errors", "version"),
    ("core", "kernels"),
    ("data", "samplers", "training"),
    ("model",),
    ("evaluation",),
    ("teacher", "distillation", "schedule", "tradeoff", "deploy"),
    ("summary",),
    ("quickstart",),
    ("cli",),
    ("__main__",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# The package's own __init__ (`fewstep.load`) is the public facade: it may reach any layer, lazily.
FACADE = SOURCE / "__init__.py"


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fewstep"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(module, inside a function, line) for every fewstep import a file makes, at any depth."""
    found = []

    def visit(node: ast.AST, inner: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = inner or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, nested, child.lineno) for a in child.names if a.name.startswith("fewstep"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.startswith("fewstep"):
                    found.append((child.module, nested, child.lineno))
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return found


def _modules() -> list[Path]:
    return sorted(p for p in SOURCE.rglob("*.py") if "configs" not in p.parts)


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _modules() if p != FACADE}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS (and to ARCHITECTURE.md)"


def test_imports_run_down_the_layers():
    wrong = []
    for path in _modules():
        if path == FACADE:
            continue
        unit = _unit(_module_name(path))
        for module, _, line in _imports(path):
            other = _unit(module)
            if other == unit:
                continue
            if other == "fewstep" or RANK.get(other, len(LAYERS)) >= RANK[unit]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({unit}, layer {RANK[unit]}) imports {module}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_kernels_import_nothing_of_fewstep_but_the_kernels():
    for path in (SOURCE / "kernels").glob("*.py"):
        outside = {m for m, _, _ in _imports(path) if not m.startswith("fewstep.kernels")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_nothing_imports_the_cli():
    for path in _modules():
        if _unit(_module_name(path)) in ("cli", "__main__"):
            continue
        assert not {m for m, _, _ in _imports(path) if m.startswith("fewstep.cli")}, \
            f"{path.relative_to(ROOT)} imports the CLI"


def _lazy_reason(lines: list[str], index: int) -> bool:
    """Whether the comment block right above line `index` (0-based) gives a `# lazy:` reason."""
    above = index - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        if lines[above].strip().startswith("# lazy:"):
            return True
        above -= 1
    return False


def test_fewstep_imports_sit_at_the_top_of_their_module():
    """An import inside a function hides a cycle. The exceptions say why on the line above (`# lazy: ...`):
    one that keeps an optional dependency (triton) or the whole stack (torch, lightning) out of
    `import fewstep` and `fewstep --help`."""
    inner = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for module, nested, line in _imports(path):
            if nested and not _lazy_reason(lines, line - 1):
                inner.append(f"{path.relative_to(ROOT)}:{line} {module}")
    assert not inner, "imports inside functions with no `# lazy:` reason above them:\n" + "\n".join(inner)


def test_importing_every_module_changes_no_process_wide_state(tmp_path):
    modules = [_module_name(p) for p in _modules() if p.stem != "__main__"]
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
from fewstep.tradeoff.pareto import plot_pareto
rows = [{{"model": "m", "sampler": "s", "steps": n, "tokens_per_s": 10.0 * n, "quality": {{"entropy": 1.0 / n}}}}
        for n in (1, 2)]
plot_pareto(rows, Path({str(tmp_path)!r}) / "pareto.png")
print(json.dumps({{"filters": before[0] == after[0], "new_filters": after[0][: len(after[0]) - len(before[0])],
                  "environ": sorted(set(after[1].items()) ^ set(before[1].items())),
                  "backend": matplotlib.rcParams["backend"] == backend}}))
"""
    # from a neutral directory: the installed package, not whatever the working directory holds
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["filters"], f"importing fewstep added warning filters: {state['new_filters']}"
    assert not state["environ"], f"importing fewstep changed the environment: {state['environ']}"
    assert state["backend"], "fewstep's plot switched matplotlib's backend (a user's notebook would lose its own)"
