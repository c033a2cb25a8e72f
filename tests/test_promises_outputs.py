"""Issue 23, outputs: never over an input, the working directory or the home folder; --force only over what the
toolkit wrote; all outputs or none (two options naming one path refused before the work); fsync.
(Dead writers and interrupted replacements: tests/test_promises_kills.py.)"""

import errno
import json
import os

import pytest

from analysis import AdapterError
from analysis.io.outputs import MANIFEST_FILE, atomic_output, check_target, output_set, protect, write_json

from conftest import make_peft_adapter



def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _beside(path):
    """What lies beside ``path`` under its name: the target, its lock, temporaries."""
    d, name = os.path.split(str(path))
    return sorted(n for n in os.listdir(d) if n == name or n.startswith(f".{name}.") or n == name + ".lock")


def _tree(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    make_peft_adapter(root / "A", r=4, seed=1)
    make_peft_adapter(root / "B", r=2, seed=2)
    return root / "A", root / "B"


@pytest.fixture
def work(tmp_path, pair):
    """A working directory holding copies of the two adapters and a note of the user's."""
    import shutil

    for p in pair:
        shutil.copytree(p, tmp_path / p.name)
    (tmp_path / "notes.txt").write_text("mine\n")
    return tmp_path


# ---------------------------------------------------------------------------- never over an input

@pytest.mark.parametrize("case", ["cwd", "holds-inputs", "input-file", "input-folder", "link-into-input", "hard-link",
                                  "home", "root"])
def test_outputs_never_destroy_inputs_the_cwd_or_home(work, monkeypatch, capsys, case):
    from analysis.cli.subspace import main

    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work / "home"))
    (work / "home").mkdir()
    if case == "link-into-input":
        os.symlink(work / "A", work / "linkA")
    if case == "hard-link":
        os.link(work / "A" / "adapter_config.json", work / "cfg.json")
    before = _tree(work)
    opts = {"cwd": ["--out", "."], "holds-inputs": ["--out", str(work)],
            "input-file": ["--json", "A/adapter_model.safetensors"], "input-folder": ["--json", "A"],
            "link-into-input": ["--json", "linkA/adapter_config.json"], "hard-link": ["--json", "cfg.json"],
            "home": ["--out", str(work / "home")], "root": ["--out", "/"]}[case]
    assert main(["A", "B", *opts, "--force"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert opts[0] in line and "--force does not change this" in line
    assert _tree(work) == before  # nothing written, nothing removed


def test_report_folder_over_the_checkpoints_is_refused(work):
    from analysis.report.write import check_report_target

    with protect([work / "A"]):
        with pytest.raises(AdapterError, match="holds an input"):
            check_report_target(work, force=True)


# ---------------------------------------------------------------------------- --force: only the toolkit's own

@pytest.mark.slow
def test_force_replaces_only_what_the_toolkit_wrote(work, monkeypatch, capsys):
    from analysis.cli.rank import main as rank
    from analysis.cli.subspace import main as subspace

    monkeypatch.chdir(work)
    assert subspace(["A", "B", "--out", "figs"]) == 0
    first = _tree(work / "figs")
    assert subspace(["A", "B", "--out", "figs", "--force", "--figure-layer", "0"]) == 0  # its own: replaced
    assert "phi_layer0.png" in os.listdir(work / "figs") and "phi_layer1.png" in first
    (work / "figs" / "mine.txt").write_text("a file the user put there")
    assert subspace(["A", "B", "--out", "figs", "--force"]) == 2
    assert "mine.txt" in _one_line(capsys.readouterr().err)
    assert (work / "figs" / "mine.txt").read_text() == "a file the user put there"
    (work / "results").mkdir()
    (work / "results" / "experiment_results.npz").write_bytes(b"PK\x03\x04 the user's")
    assert subspace(["A", "B", "--out", "results", "--force"]) == 2  # a folder the toolkit never wrote
    assert "experiment_results.npz" in _one_line(capsys.readouterr().err)
    for existing, ok in (("notes.txt", False), ("old.json", True)):  # a file of another kind, one of JSON
        if existing == "old.json":
            (work / existing).write_text('{"a": 1}\n')
        assert rank(["A", "B", "--json", existing, "--force", "--trials", "5"]) == (0 if ok else 2)
        if not ok:
            assert "not a JSON file" in _one_line(capsys.readouterr().err)
            assert (work / existing).read_text() == "mine\n"
    assert json.loads((work / "old.json").read_text())["command"] == "rank"
    (work / "fig.png").write_bytes(b"GIF89a not a png")
    assert rank(["A", "B", "--plot", "fig.png", "--force", "--trials", "5"]) == 2
    assert (work / "fig.png").read_bytes() == b"GIF89a not a png"


def test_folder_manifest_falls_back_to_a_hidden_file(tmp_path, monkeypatch):
    def no_xattr(*a, **k):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_xattr)
    monkeypatch.setattr(os, "getxattr", no_xattr)
    for i in range(2):
        with atomic_output(tmp_path / "out", folder=True, force=True) as tmp:
            open(os.path.join(tmp, f"f{i}.csv"), "w").write("a\n")
    assert sorted(os.listdir(tmp_path / "out")) == [MANIFEST_FILE, "f1.csv"]
    (tmp_path / "out" / "other.txt").write_text("x")
    with pytest.raises(AdapterError, match="other.txt"):
        check_target(tmp_path / "out", force=True, folder=True)


@pytest.mark.slow
def test_symlinked_out_is_written_through_the_link(work, monkeypatch, capsys):
    from analysis.cli.subspace import main

    monkeypatch.chdir(work)
    assert main(["A", "B", "--out", "real_figs"]) == 0
    os.symlink(work / "real_figs", work / "figs")
    assert main(["A", "B", "--out", "figs", "--force", "--figure-layer", "0"]) == 0
    assert "figures:" in capsys.readouterr().out
    assert os.path.islink(work / "figs") and "phi_layer0.png" in os.listdir(work / "real_figs")
    assert _beside(work / "real_figs") == ["real_figs"] and _beside(work / "figs") == ["figs"]


def test_a_mount_point_is_refused():
    mounts = [p for p in ("/dev/shm", "/proc", "/sys", "/dev") if os.path.ismount(p)]
    if not mounts:
        pytest.skip("no mount point to try")
    with pytest.raises(AdapterError, match="mount point"):
        check_target(mounts[0], force=True, folder=True)


# ---------------------------------------------------------------------------- all outputs or none

def test_two_options_naming_one_path_refused_before_work(work, monkeypatch, capsys):
    from analysis.cli.rank import main as rank
    from analysis.cli.subspace import main as subspace

    monkeypatch.chdir(work)
    import analysis.sweeps.advice as adv

    monkeypatch.setattr(adv, "prefix_stability", lambda *a, **k: pytest.fail("computed before the refusal"))
    assert rank(["A", "B", "--json", "x.out", "--csv", "./x.out"]) == 2
    assert "two outputs" in _one_line(capsys.readouterr().err)
    monkeypatch.undo()
    monkeypatch.chdir(work)
    assert subspace(["A", "B", "--out", "figs", "--json", "figs/s.json"]) == 2
    assert "inside the --out folder" in _one_line(capsys.readouterr().err)
    assert not os.path.exists(work / "x.out") and not os.path.exists(work / "figs")


def test_a_failing_output_takes_the_others_with_it(work, monkeypatch, capsys):
    from matplotlib.figure import Figure

    from analysis.cli.rank import main as rank

    monkeypatch.chdir(work)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    assert rank(["A", "B", "--json", "a.json", "--csv", "a.csv", "--plot", "a.png", "--trials", "5"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "nothing was written" in line
    assert not [n for n in os.listdir(work) if n.startswith(("a.", ".a."))]  # a.json was not kept


def test_a_failing_placement_rolls_the_placed_ones_back(tmp_path, monkeypatch):
    from analysis.io import outputs

    (tmp_path / "one.json").write_text('{"old": 1}\n')
    real = outputs._Output.place

    def place(self):
        if self.name == "two.json":
            raise OSError(errno.EIO, "Input/output error", self.real)
        real(self)

    monkeypatch.setattr(outputs._Output, "place", place)
    with pytest.raises(AdapterError, match="two.json.*nothing was written"):
        with output_set():
            write_json(tmp_path / "one.json", {"new": 1}, force=True)
            write_json(tmp_path / "new.json", {"new": 1})
            write_json(tmp_path / "two.json", {"new": 2})
    assert sorted(os.listdir(tmp_path)) == ["one.json"]
    assert json.loads((tmp_path / "one.json").read_text()) == {"old": 1}


def test_written_outputs_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_output(tmp_path / "out", folder=True) as tmp:
        for n in ("a.csv", "b.csv"):
            open(os.path.join(tmp, n), "w").write("x\n")
    names = {os.path.basename(p) for p in synced}
    assert {"a.csv", "b.csv", tmp_path.name} <= names  # each file, the folder's entries, the parent's
