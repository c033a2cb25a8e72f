"""Issue 25, item 5: output conventions of every command. ``-`` is standard output (data only, the messages on
standard error); the null device, a FIFO or a character device is written as it is, without --force; a folder
where a file goes is one error naming the option and the path; the issue-23 promises still hold."""

import importlib
import json
import os
import pty
import subprocess
import sys
import threading

import numpy as np
import pytest

from analysis import AdapterError
from analysis.io.outputs import atomic_output, output_set, write_json

from _rank_tiny import base_state, tiny_llama
from conftest import make_peft_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three PEFT adapters of one tiny Llama, that Llama saved as a base, and a full fine-tune of it."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("conv")
    make_peft_adapter(root / "A", r=4, seed=1)
    make_peft_adapter(root / "B", r=2, seed=2)
    make_peft_adapter(root / "C", r=4, seed=3)
    tiny_llama().save_pretrained(str(root / "base"))
    base = {k: v.astype(np.float32) for k, v in base_state().items()}
    rng = np.random.default_rng(0)
    ft = {k: (v + 1e-2 * rng.standard_normal(v.shape).astype(np.float32)) if "self_attn" in k else v
          for k, v in base.items()}
    (root / "w0").mkdir()
    (root / "w1").mkdir()
    save_file(base, str(root / "w0" / "model.safetensors"))
    save_file(ft, str(root / "w1" / "model.safetensors"))
    return root


def _commands(root):
    """Every command with a --json option: its module and its arguments before --json."""
    a, b, c = str(root / "A"), str(root / "B"), str(root / "C")
    return {
        "subspace": [a, b],
        "rank": [a, b, "--trials", "5"],
        "resize": [a, "--rank", "2", "--out", os.devnull],
        "finetune": [str(root / "w0"), str(root / "w1"), "--rank", "2", "--modules", "q_proj"],
        "intruders": [a, "--base", str(root / "base"), "--top-k", "2"],
        "collection": [a, b, c],
        "merge": [a, c, "--method", "cat", "--out", os.devnull],
        "inspect": [a],
    }


COMMANDS = ("subspace", "rank", "resize", "finetune", "intruders", "collection", "merge", "inspect")


def _main(command):
    return importlib.import_module(f"analysis.{command}").main


def _read_fifo(path):
    """A thread reading the FIFO ``path`` to its end; ``finish()`` returns what it read."""
    box = {}

    def read():
        with open(path, "rb") as fh:
            box["data"] = fh.read()

    t = threading.Thread(target=read, daemon=True)
    t.start()

    def finish():
        if t.is_alive() and "data" not in box:
            t.join(0.5)
        if t.is_alive():  # nothing opened it for writing: let the reader go
            with open(path, "wb"):
                pass
        t.join(30)
        return box.get("data")

    return finish


@pytest.mark.parametrize("command", COMMANDS)
def test_json_to_stdout_null_device_and_fifo(inputs, tmp_path, capsys, command):
    main, args = _main(command), _commands(inputs)[command]
    # the null device: it exists, and no --force is needed
    assert main([*args, "--json", os.devnull]) == 0
    table = capsys.readouterr().out
    assert table.strip()  # the command's messages, on standard output as usual
    # "-": standard output holds the JSON only, the messages are on standard error
    assert main([*args, "--json", "-"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["command"] == command and doc["tool"] == "lora-subspace-analysis"
    assert table.splitlines()[0] in cap.err
    # a FIFO, read by another thread: the same bytes (JSON outputs are byte-identical across reruns)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    finish = _read_fifo(fifo)
    assert main([*args, "--json", str(fifo)]) == 0
    assert finish() == cap.out.encode()
    assert os.listdir(tmp_path) == ["out.fifo"]  # no lock, no temporary beside it


def test_csv_and_plot_to_stdout_null_and_fifo(inputs, tmp_path, capsys):
    from analysis.rank import main

    a, b = str(inputs / "A"), str(inputs / "B")
    assert main([a, b, "--trials", "5", "--csv", "-"]) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines()[0].split(",")[:2] == ["name", "layer"] and "side both" in cap.err
    assert main([a, b, "--trials", "5", "--plot", os.devnull, "--csv", os.devnull, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["command"] == "rank"
    from analysis.intruders import main as intruders

    assert intruders([a, "--base", str(inputs / "base"), "--top-k", "2", "--plot", os.devnull, "--csv",
                      os.devnull]) == 0
    fifo = tmp_path / "plot.fifo"  # a FIFO's name says nothing of the format: PNG
    os.mkfifo(fifo)
    finish = _read_fifo(fifo)
    assert main([a, b, "--trials", "5", "--plot", str(fifo)]) == 0
    assert finish().startswith(PNG)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, cwd=ROOT, timeout=300, **kw)


@pytest.mark.slow
def test_real_standard_output_binary_and_terminal(inputs):
    a, b = str(inputs / "A"), str(inputs / "B")
    res = _cli("analysis.rank", a, b, "--trials", "5", "--plot", "-")
    assert res.returncode == 0 and res.stdout.startswith(PNG) and b"side both" in res.stderr
    res = _cli("analysis.subspace", a, b, "--json", "-", "--quiet")
    assert res.returncode == 0 and res.stderr == b"" and json.loads(res.stdout)["command"] == "subspace"
    master, slave = pty.openpty()  # standard output a terminal: binary data refused before any work
    try:
        res = subprocess.run([sys.executable, "-m", "analysis.rank", a, b, "--plot", "-"], stdout=slave,
                             stderr=subprocess.PIPE, cwd=ROOT, timeout=300, text=True)
    finally:
        os.close(slave)
        os.close(master)
    line = res.stderr.strip()
    assert res.returncode == 2 and len(line.splitlines()) == 1
    assert line.startswith("error: --plot - (standard output): would write PNG data to the terminal")


def test_a_folder_where_a_file_goes_is_one_error(inputs, tmp_path, capsys):
    from analysis.rank import main

    a, b = str(inputs / "A"), str(inputs / "B")
    (tmp_path / "d").mkdir()
    for opt in ("--json", "--csv", "--plot"):
        for target in (tmp_path / "d", f"{tmp_path / 'new'}/"):
            assert main([a, b, "--trials", "5", opt, str(target), "--force"]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and err.startswith(f"error: {opt} {str(target).rstrip('/')}: ")
            assert "this output is a file" in err
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def test_stdout_twice_refused_null_twice_accepted(inputs, tmp_path, capsys, monkeypatch):
    import analysis.sweeps.advice as adv
    from analysis.rank import main

    a, b = str(inputs / "A"), str(inputs / "B")
    real = adv.prefix_stability
    monkeypatch.setattr(adv, "prefix_stability", lambda *x, **k: pytest.fail("computed before the refusal"))
    assert main([a, b, "--json", "-", "--csv", "-"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --csv -") and "standard output" in err and len(err.strip().splitlines()) == 1
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    assert main([a, b, "--json", str(fifo), "--csv", str(fifo)]) == 2
    assert "two outputs cannot name one path" in capsys.readouterr().err
    from analysis.subspace import main as subspace

    assert subspace([a, b, "--out", "-"]) == 2
    assert "--out writes a folder" in capsys.readouterr().err
    monkeypatch.setattr(adv, "prefix_stability", real)
    assert main([a, b, "--trials", "5", "--json", os.devnull, "--csv", os.devnull, "--plot", os.devnull]) == 0


def test_a_failed_command_sends_nothing_to_a_fifo_or_stdout(inputs, tmp_path, capsys, monkeypatch):
    import errno

    from matplotlib.figure import Figure

    from analysis.rank import main

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    a, b = str(inputs / "A"), str(inputs / "B")
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    finish = _read_fifo(fifo)
    assert main([a, b, "--trials", "5", "--json", str(fifo), "--csv", "-", "--plot", str(tmp_path / "p.png")]) == 2
    cap = capsys.readouterr()
    assert finish() == b"" and cap.out == "" and "No space left on device" in cap.err
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_streams_are_sent_before_files_are_placed(tmp_path, capsys):
    with output_set():
        write_json("-", {"a": 1})
        write_json(tmp_path / "x.json", {"b": 2})
        assert not (tmp_path / "x.json").exists() and capsys.readouterr().out == ""  # not yet
    assert json.loads(capsys.readouterr().out) == {"a": 1} and json.loads((tmp_path / "x.json").read_text()) == {"b": 2}


def test_null_device_leaves_no_temporary(tmp_path, monkeypatch):
    import tempfile

    (tmp_path / "t").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    for folder in (False, True):
        with atomic_output(os.devnull, folder=folder) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path / "t")
            if folder:
                open(os.path.join(tmp, "a.csv"), "w").write("x\n")
            else:
                open(tmp, "w").write("x\n")
    with pytest.raises(AdapterError, match="boom"), atomic_output(os.devnull) as tmp:
        raise AdapterError("boom")
    assert os.listdir(tmp_path / "t") == []
    assert os.stat(os.devnull).st_size == 0


def test_a_fifo_takes_no_folder_and_an_input_fifo_is_protected(tmp_path):
    from analysis.io.outputs import check_target, protect

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(AdapterError, match="is a FIFO, and this output is a folder"):
        check_target(fifo, folder=True, option="--out")
    check_target(fifo, folder=False)  # no --force needed
    with protect([fifo]), pytest.raises(AdapterError, match="is an input"):
        check_target(fifo, folder=False)
    with pytest.raises(AdapterError, match="standard output takes a file's data"):
        check_target("-", folder=True)
    check_target(os.devnull, folder=True)  # the null device discards a folder


@pytest.mark.slow
def test_report_out_to_null_device_stdout_and_fifo(tiny, tmp_path, capsys):
    from analysis.cli.report import main

    args = ["--checkpoints", str(tiny / "checkpoints"), "--no-base", "--layer", "1", "--fig-layers", "0,1",
            "--ranks", "1,2,4", "--low", "2", "--high", "4", "--progress", "on"]
    assert main([*args, "--out", os.devnull]) == 0
    cap = capsys.readouterr()
    assert "wrote" in cap.out and "modules: " in cap.err  # progress lines: standard error is not a terminal
    assert main([*args, "--out", "-"]) == 2
    assert "standard output takes a file's data" in capsys.readouterr().err
    os.mkfifo(tmp_path / "f")
    assert main([*args, "--out", str(tmp_path / "f")]) == 2
    assert "is a FIFO" in capsys.readouterr().err


def test_standard_output_without_a_binary_buffer_takes_text_only():
    import io

    from analysis.io.outputs import standard_output

    text = io.StringIO()  # a notebook's standard output: no .buffer
    with standard_output(text):
        write_json("-", {"a": [1, 2]})
        with pytest.raises(AdapterError, match="takes text only"):
            with atomic_output("-", kind="png") as tmp:
                open(tmp, "wb").write(PNG)
    assert json.loads(text.getvalue()) == {"a": [1, 2]}


@pytest.mark.parametrize("command", ["subspace", "finetune", "collection", "inspect"])
@pytest.mark.slow
def test_out_folder_to_the_null_device(inputs, tmp_path, capsys, monkeypatch, command):
    import tempfile

    (tmp_path / "t").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    args = _commands(inputs)[command]
    for _ in range(2):  # no --force: nothing at the null device can be lost
        assert _main(command)([*args, "--out", os.devnull, "--json", "-"]) == 0
        assert json.loads(capsys.readouterr().out)["command"] == command
    assert os.listdir(tmp_path / "t") == []  # the folder was made whole, then discarded
