"""The typed public API: mypy over the package is clean, every name in an ``__all__`` has hints, py.typed ships."""

import ast
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "analysis")

#: Modules whose public functions are not annotated yet (none now); any listed here must also be an
#: ``ignore_errors`` override in pyproject.toml's ``[tool.mypy]``, and leave both once annotated.
PENDING: set[str] = set()

#: Methods of public classes that need hints besides the public (unprefixed) ones.
_DUNDERS = {"__init__", "__call__", "__getitem__", "__iter__", "__len__", "__contains__", "__getattr__"}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def _all_names(tree):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    return []


def _missing(fn, *, method):
    """Names of ``fn``'s parameters without a hint, and ``->`` for a missing return hint."""
    a = fn.args
    params = a.posonlyargs + a.args + a.kwonlyargs
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if method and not static and params:
        params = params[1:]  # self / cls
    out = [p.arg for p in params if p.annotation is None]
    out += ["*" + p.arg for p in (a.vararg, a.kwarg) if p is not None and p.annotation is None]
    return out + (["->"] if fn.returns is None else [])


def _unannotated(tree):
    """``{qualified name: [what lacks a hint]}`` for the functions and public methods named in ``__all__``."""
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    out = {}
    for name in _all_names(tree):
        node = defs.get(name)
        if isinstance(node, ast.FunctionDef):
            out[name] = _missing(node, method=False)
        elif isinstance(node, ast.ClassDef):
            for m in node.body:
                if isinstance(m, ast.FunctionDef) and (not m.name.startswith("_") or m.name in _DUNDERS):
                    out[f"{name}.{m.name}"] = _missing(m, method=True)
    return {k: v for k, v in out.items() if v}


def test_every_public_function_has_type_hints():
    gaps, done = [], []
    for module, path in _modules():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        missing = _unannotated(tree)
        if module in PENDING:
            if not missing and _all_names(tree):
                done.append(module)
            continue
        gaps += [f"{module}.{name}: {', '.join(what)}" for name, what in missing.items()]
    assert not gaps, "public functions without type hints (parameters, '->' = return):\n" + "\n".join(gaps)
    assert not done, (f"{done} are annotated now: remove them from PENDING here and from the ignore_errors "
                      "override in pyproject.toml")


def test_pending_list_matches_mypy_overrides():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        cfg = tomllib.load(fh)
    ignored = {m for o in cfg["tool"]["mypy"]["overrides"] if o.get("ignore_errors") for m in o["module"]}
    assert ignored == PENDING
    assert cfg["tool"]["setuptools"]["package-data"]["analysis"] == ["py.typed"]
    assert os.path.isfile(os.path.join(PACKAGE, "py.typed"))


def test_lazy_exports_are_visible_to_type_checkers():
    """``analysis.analyse_adapter`` and the other lazy names resolve to their functions in a type checker too."""
    import analysis

    with open(os.path.join(PACKAGE, "__init__.py"), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    blocks = [n for n in tree.body if isinstance(n, ast.If) and isinstance(n.test, ast.Name)
              and n.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1
    imported = {a.asname or a.name: m.module for m in blocks[0].body if isinstance(m, ast.ImportFrom) for a in m.names}
    assert imported == analysis._LAZY


def test_mypy_is_clean():
    """``python -m mypy analysis`` with pyproject.toml's settings finds nothing (about 20 s without its cache)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "mypy", "analysis"], capture_output=True, text=True, cwd=ROOT,
                         timeout=600, check=False)
    if "No module named mypy" in res.stderr:
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    assert res.returncode == 0, f"mypy found problems ({time.perf_counter() - t0:.0f} s):\n{res.stdout}{res.stderr}"
