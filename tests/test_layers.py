"""The package's layers, read from its imports: data flows one way (core → io → metrics → sweeps → plotting →
report → cli) and no module imports a private name of another (DESIGN.md)."""

import ast
import glob
import os

import pytest

import analysis

#: Each subpackage's place in the flow (a module may import its own level and those below it).
LEVEL = {"core": 0, "errors": 0, "io": 1, "metrics": 2, "sweeps": 3, "plotting": 4, "reference": 4, "report": 5,
         "cli": 6}
ROOT = os.path.dirname(analysis.__file__)


def _modules():
    for dp, _, fs in os.walk(ROOT):
        for f in sorted(fs):
            if f.endswith(".py"):
                path = os.path.join(dp, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield path, rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _level(module):
    parts = module.split(".")
    return LEVEL.get(parts[1]) if parts[0] == "analysis" and len(parts) > 1 else None


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno


def test_every_layer_is_known():
    tops = {name for name in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, name))
            and os.path.exists(os.path.join(ROOT, name, "__init__.py"))}
    assert tops <= set(LEVEL), f"a subpackage without a place in the flow: {tops - set(LEVEL)}"


@pytest.mark.parametrize("path, module", list(_modules()), ids=lambda x: x if isinstance(x, str) else "")
def test_no_upward_import_and_no_private_name(path, module):
    if os.path.basename(path) == "__main__.py":  # the documented python -m shims may import the commands
        return
    mine = _level(module)
    for target, names, line in _imports(path):
        if not target.startswith("analysis"):
            continue
        theirs = _level(target)
        if mine is not None and theirs is not None:
            assert theirs <= mine, f"{module}:{line} imports {target} (a higher layer)"
        for name in names:
            private = name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            assert not (private and target != module), f"{module}:{line} imports the private name {target}.{name}"


def test_base_is_declared_once_for_every_command():
    """Every command's ``--base`` comes from Parser.add_base (one help text, the smollm2 alias everywhere)."""
    import importlib

    from analysis.cli.common import BASE_HELP

    found = []
    for name in ("collection", "finetune", "inspect", "intruders", "merge", "rank", "report", "resize", "subspace"):
        p = importlib.import_module(f"analysis.cli.{name}").build_parser()
        acts = [a for a in p._actions if "--base" in a.option_strings]
        if acts:
            found.append(name)
            assert acts[0].help.startswith(BASE_HELP), name
    assert set(found) == {"inspect", "intruders", "merge", "report", "resize", "subspace"}
    for path in glob.glob(os.path.join(ROOT, "cli", "*.py")):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        assert text.count('"--base"') == (1 if path.endswith("common.py") else 0), path
        assert "resolve_base(" not in text or path.endswith("common.py"), path


def test_one_table_printer_for_every_command():
    """Column / Table format every command's terminal table; no command formats its own header widths."""
    import io

    from analysis.cli.common import Column, Table

    out = io.StringIO()
    t = Table(Column("layer", 5), Column("module", 8, "<", cut=True), Column("x", 7, fmt=".3f"), file=out)
    t.header()
    t.row("3", "self_attn.q_proj", 0.5)
    t.row("-", "v", tail="  zero update")
    assert out.getvalue().splitlines() == ["layer module         x", "    3 ….q_proj   0.500",
                                           "    - v         zero update"]
    f = Table.fitted(["a", "name"], [["1", "long name"], ["22", "x"]], right={0})
    assert [f.header_line(), f.line("1", "long name"), f.line("22", "x")] == [" a name     ", " 1 long name", "22 x        "]
    for path in glob.glob(os.path.join(ROOT, "cli", "*.py")):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        assert "print(f\"{'layer':>5}" not in text, path  # headers come from Table.header
