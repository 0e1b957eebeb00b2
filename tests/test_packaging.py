"""Packaging: one import package, no bare `kernels` on the path, configs shipped, CLI installed."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_subpackages_import_under_fewstep_and_no_bare_kernels(tmp_path):
    code = (
        "import importlib.util, fewstep.distill, fewstep.samplers, fewstep.kernels, fewstep.configs\n"
        "assert importlib.util.find_spec('kernels') is None, 'a bare kernels package is importable'\n"
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
