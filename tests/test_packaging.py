"""Packaging: one import package, no bare `kernels` of fewstep's, configs shipped, CLI installed."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_subpackages_import_under_fewstep_and_no_bare_kernels(tmp_path):
    code = (
        "import importlib.metadata, importlib.util, pathlib\n"
        "import fewstep, fewstep.core, fewstep.samplers, fewstep.kernels, fewstep.configs\n"
        # transformers >= 5.25 depends on Hugging Face's own `kernels` package: a bare `kernels` may be
        # importable, but it must not be fewstep's: not installed by it, and not a stray folder beside it
        # (beside it in site-packages is fine when another distribution owns it)
        "owners = importlib.metadata.packages_distributions().get('kernels', [])\n"
        "assert 'fewstep' not in owners, 'fewstep installs a bare kernels package'\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "beside = pathlib.Path(fewstep.__file__).resolve().parents[1] / 'kernels'\n"
        "origin = None if spec is None else pathlib.Path(spec.origin).resolve().parent\n"
        "assert origin != beside or (owners and 'fewstep' not in owners), 'a bare kernels beside fewstep'\n"
        "assert importlib.util.find_spec('distill') is None and importlib.util.find_spec('samplers') is None\n"
        "import transformers\n"
        "from transformers import AutoModelForMaskedLM\n"
        "print('ok')\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_shipped_configs_are_installed():
    from importlib import resources

    names = {p.name for p in resources.files("fewstep.configs").iterdir()}
    assert "quickstart.yaml" in names
    assert resources.files("fewstep.configs").joinpath("teacher/markov.yaml").is_file()


def test_every_subpackage_is_declared_in_pyproject():
    """pyproject lists the packages by hand (configs/ maps into fewstep.configs); a new subpackage left out
    of the list would be missing from every install that is not editable."""
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    declared = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    in_tree = {".".join(p.parent.relative_to(root).parts) for p in (root / "fewstep").rglob("__init__.py")}
    assert in_tree | {"fewstep.configs"} == declared
