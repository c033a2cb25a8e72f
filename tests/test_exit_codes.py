"""Issue 24, item 5: exit code 2 only for what a bad input causes (InputError, AdapterError, OSError); anything
else, a plain ValueError included, is a bug in the toolkit: exit code 1, its traceback kept in a file, and where
to report it. Errors a damaged file causes inside the toolkit become AdapterError naming the file."""

import argparse
import json
import os

import numpy as np
import pytest

import analysis
from analysis.cli import common
from analysis.cli.common import run
from analysis.errors import AdapterError, InputError


def _args():
    return argparse.Namespace(debug=False, progress="off", quiet=False)


def _one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _traceback_file(line):
    """The traceback file a bug's line names (removed by the caller)."""
    return line.split("traceback in ")[1].split(" ")[0]


def test_input_error_is_a_public_value_error():
    assert issubclass(InputError, ValueError) and issubclass(AdapterError, InputError)
    assert analysis.InputError is InputError and "InputError" in analysis.__all__
    from analysis.core.patterns import PatternTimeout

    assert issubclass(PatternTimeout, InputError)
    with pytest.raises(InputError, match="same space"):  # the toolkit's own argument checks raise InputError
        analysis.subspace_similarity(np.eye(3)[:, :1], np.eye(4)[:, :1])
    with pytest.raises(ValueError):  # and API users catching ValueError still catch them
        analysis.subspace_similarity(np.eye(3)[:, :1], np.eye(4)[:, :1])
    e = AdapterError("expected x, got y", path="a.safetensors", key="k")  # AdapterError is unchanged
    assert str(e) == "a.safetensors: key 'k': expected x, got y" and e.path == "a.safetensors" and e.key == "k"


def test_a_plain_value_error_inside_a_command_is_a_bug(peft_pair, monkeypatch, capsys):
    import analysis.sweeps.pair as pair
    from analysis.cli.subspace import main

    def boom(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(pair, "compare_adapters", boom)
    assert main([str(p) for p in peft_pair]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("internal error (a bug in the toolkit): ValueError: boom; traceback in ")
    assert line.endswith("please report it with the traceback file to the maintainers")
    where = _traceback_file(line)
    try:
        text = open(where, encoding="utf-8").read()
    finally:
        os.remove(where)
    assert "in boom" in text and "ValueError: boom" in text


def test_an_input_error_inside_a_command_is_exit_2(peft_pair, monkeypatch, capsys):
    import analysis.sweeps.pair as pair
    from analysis.cli.subspace import main

    def bad(*a, **k):
        raise InputError("--side: expected one of A, B, got C")

    monkeypatch.setattr(pair, "compare_adapters", bad)
    assert main([str(p) for p in peft_pair]) == 2
    assert _one_line(capsys.readouterr().err) == "error: --side: expected one of A, B, got C"


@pytest.mark.parametrize("exc, code", [
    (InputError("--k: expected a positive integer, got 0"), 2),
    (AdapterError("expected finite values", path="a.safetensors"), 2),
    (FileNotFoundError(2, "No such file or directory", "b.json"), 2),
    (ValueError("operands could not be broadcast together with shapes (3,) (4,)"), 1),
    (TypeError("unsupported operand type(s)"), 1),
    (IndexError("index 3 is out of bounds"), 1),
])
def test_the_exit_code_follows_the_kind_of_error(exc, code, capsys):
    def body(args):
        raise exc

    assert run(body, _args()) == code
    line = _one_line(capsys.readouterr().err)
    if code == 2:
        assert line.startswith("error: ") and "internal error" not in line
        if isinstance(exc, OSError):
            assert "b.json" in line  # the file named
        return
    assert line.startswith(f"internal error (a bug in the toolkit): {type(exc).__name__}: ")
    assert "report it" in line
    os.remove(_traceback_file(line))


def test_debug_shows_a_bug_s_traceback():
    def body(args):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run(body, argparse.Namespace(debug=True, progress="off", quiet=False))


def test_where_to_report_comes_from_the_package_metadata(monkeypatch):
    # pyproject.toml has no [project.urls]: no address is made up
    assert common._report_to(True) == "please report it with the traceback file to the maintainers"
    assert common._report_to(False) == "please report it with the traceback to the maintainers"

    class Meta:
        def get_all(self, name):
            assert name == "Project-URL"
            return ["Homepage, https://example.org/lora", "Issues, https://example.org/lora/issues"]

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: Meta())
    assert common._report_to(True) == "please report it at https://example.org/lora/issues with the traceback file"


def test_a_damaged_run_manifest_is_the_input_s_fault(tmp_path):
    from analysis.report.compute import _manifest

    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(AdapterError, match=r"manifest\.json: expected a JSON object, got JSONDecodeError"):
        _manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(AdapterError, match=r"manifest\.json: expected a JSON object, got list"):
        _manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"steps": 3}))
    assert _manifest(str(tmp_path)) == {"steps": 3}


def test_damaged_training_files_name_the_file(tmp_path):
    pytest.importorskip("torch")
    from analysis.io.jsonfile import read_json_object
    from analysis.reference import train

    bad = tmp_path / "state.pt"
    bad.write_bytes(b"PK\x03\x04 not a zip archive")
    with pytest.raises(AdapterError, match="state.pt: cannot read the saved training state"):
        train._read_state(str(bad))
    st = tmp_path / "adapter_model.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(AdapterError, match="adapter_model.safetensors: not a valid safetensors file"):
        train._read_tensors(str(st))
    js = tmp_path / "manifest.json"
    js.write_text('{"settings": ')
    with pytest.raises(AdapterError, match="manifest.json: expected a JSON object"):
        read_json_object(str(js))
