"""Issue 24, item 5: one atomic writer. ``replace_folder`` (a folder its caller owns, such as a training run's,
rewritten with its ``checkpoint-N`` subfolders kept) is :mod:`analysis.io.outputs`' writer, and nothing else in
the package puts a temporary in place by renaming it (the SVD cache's own locked writer aside)."""

import os
import re

import pytest

from analysis import AdapterError
from analysis.io.outputs import MANIFEST_FILE, MANIFEST_XATTR, replace_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_folder(root):
    """A training run's folder: a finished adapter and two checkpoints."""
    run = root / "run"
    for step in (0, 2):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"step %d" % step)
        (run / f"checkpoint-{step}" / "manifest.json").write_text(f'{{"step": {step}}}')
    (run / "adapter_model.safetensors").write_bytes(b"old final")
    (run / "manifest.json").write_text('{"old": true}')
    (run / "stray.txt").write_text("not kept")
    return run


def _xattr(path):
    try:
        return os.getxattr(path, MANIFEST_XATTR)
    except OSError:
        return None


def test_the_folder_is_replaced_and_the_kept_entries_carried_over(tmp_path):
    run = _run_folder(tmp_path)
    ino = os.stat(run / "checkpoint-2" / "adapter_model.safetensors").st_ino
    with replace_folder(run, keep=["checkpoint-0", "checkpoint-2", "checkpoint-9"]) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and sorted(os.listdir(run))[0] == "adapter_model.safetensors"
        with open(os.path.join(tmp, "manifest.json"), "w") as fh:
            fh.write('{"new": true}')
    assert sorted(os.listdir(run)) == ["checkpoint-0", "checkpoint-2", "manifest.json"]
    assert (run / "manifest.json").read_text() == '{"new": true}'
    assert (run / "checkpoint-2" / "adapter_model.safetensors").read_bytes() == b"step 2"
    assert os.stat(run / "checkpoint-2" / "adapter_model.safetensors").st_ino == ino  # linked, not copied
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no temporary, lock or previous folder left
    assert _xattr(run) is None and not (run / MANIFEST_FILE).exists()  # an owned folder records no manifest


def test_a_kept_name_the_writer_wrote_is_the_writer_s(tmp_path):
    run = _run_folder(tmp_path)
    with replace_folder(run, keep=["checkpoint-2"]) as tmp:
        os.mkdir(os.path.join(tmp, "checkpoint-2"))
        with open(os.path.join(tmp, "checkpoint-2", "manifest.json"), "w") as fh:
            fh.write('{"step": "rewritten"}')
    assert sorted(os.listdir(run / "checkpoint-2")) == ["manifest.json"]
    assert (run / "checkpoint-2" / "manifest.json").read_text() == '{"step": "rewritten"}'


def test_a_failed_writer_leaves_the_old_folder_whole(tmp_path):
    run = _run_folder(tmp_path)
    before = {p: (run / p).read_bytes() for p in ("manifest.json", "adapter_model.safetensors", "stray.txt",
                                                    "checkpoint-2/adapter_model.safetensors")}
    with pytest.raises(RuntimeError, match="writer died"):
        with replace_folder(run, keep=["checkpoint-0", "checkpoint-2"]) as tmp:
            with open(os.path.join(tmp, "manifest.json"), "w") as fh:
                fh.write("{")
            raise RuntimeError("writer died")
    assert {p: (run / p).read_bytes() for p in before} == before
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_new_folder_and_its_parents_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "run"
    with replace_folder(target, keep=["checkpoint-0"]) as tmp:
        open(os.path.join(tmp, "x"), "w").close()
    assert sorted(os.listdir(target)) == ["x"]
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_file_where_the_folder_goes_is_refused(tmp_path):
    (tmp_path / "run").write_text("a file")
    with pytest.raises(AdapterError, match="is a file, and this output is a folder"):
        with replace_folder(tmp_path / "run"):
            pass
    assert (tmp_path / "run").read_text() == "a file"


def test_a_dead_writer_s_temporary_is_removed(tmp_path):
    run = _run_folder(tmp_path)
    dead = tmp_path / ".run.tmp-0123abcd"
    dead.mkdir()
    (dead / "half").write_text("half-written")
    with replace_folder(run, keep=["checkpoint-0"]) as tmp:
        open(os.path.join(tmp, "manifest.json"), "w").close()
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_one_place_puts_temporaries_in_place():
    """Only io/outputs (with io/durable, its mechanics) renames a temporary into place; the SVD cache keeps its own
    locked writer (concurrent runs share its entries, the last rename wins)."""
    allowed = {os.path.join("analysis", "io", "outputs.py"), os.path.join("analysis", "io", "durable.py"),
               os.path.join("analysis", "sweeps", "svd_cache.py")}
    rx = re.compile(r"\bos\.(replace|rename|renames)\(|\bshutil\.move\(")
    found = []
    for root, _, files in os.walk(os.path.join(ROOT, "analysis")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, ROOT)
                with open(path, encoding="utf-8") as fh:
                    found += [f"{rel}:{i}" for i, line in enumerate(fh, 1)
                              if rx.search(line) and rel not in allowed]
    assert not found, found
