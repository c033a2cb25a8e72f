"""Issue 23, dead writers: a lock a dead writer cannot hold, SIGTERM / SIGHUP handled like Ctrl-C, a dead writer's
temporary cleaned by the next run, an interrupted replacement completed or rolled back where the one-step swap is
missing (kill -9 at chosen and at random points)."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from analysis import AdapterError, load_adapter
from analysis.io.outputs import atomic_output, write_json

from conftest import make_peft_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _beside(path):
    """What lies beside ``path`` under its name: the target, its lock, temporaries."""
    d, name = os.path.split(str(path))
    return sorted(n for n in os.listdir(d) if n == name or n.startswith(f".{name}.") or n == name + ".lock")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    make_peft_adapter(root / "A", r=4, seed=1)
    make_peft_adapter(root / "B", r=2, seed=2)
    return root / "A", root / "B"


# ---------------------------------------------------------------------------- dead writers, signals

_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from analysis.cli.common import run
    from analysis.io.outputs import atomic_output

    class A:
        debug = False

    def body(args):
        with atomic_output(sys.argv[1], folder=True, force=True) as tmp:
            open(tmp + "/big.bin", "wb").write(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(60)

    sys.exit(run(body, A()))
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.slow
def test_a_killed_writer_blocks_nothing_and_leaves_nothing_after_the_next_run(tmp_path, pair, sig):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    if sig == signal.SIGKILL:
        assert p.returncode == -9 and len(_beside(out)) == 2  # its lock and its temporary are left
    else:
        assert p.returncode == 128 + sig and _beside(out) == []  # handled like Ctrl-C
        assert len(err.strip().splitlines()) == 1 and signal.Signals(sig).name in err
    res = subprocess.run([sys.executable, "-m", "analysis.resize", str(pair[0]), "--rank", "2", "--out", str(out),
                          "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert _beside(out) == ["out"] and {lr.r for lr in load_adapter(out).values()} == {2}


def test_a_stale_lock_of_an_earlier_version_is_removed(tmp_path):
    (tmp_path / "x.json.lock").write_text("999999999\n")  # no such process
    write_json(tmp_path / "x.json", {"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["x.json"]


_NO_SWAP = textwrap.dedent("""
    import os, signal, sys, time
    from analysis.io import durable
    durable._RENAMEAT2[:] = [None]  # a filesystem without renameat2: two renames
    real = os.rename
    mode = sys.argv[3]

    def rename(a, b, **kw):
        real(a, b, **kw)
        if mode == "kill-between" and os.path.basename(str(b)).startswith(".out.prev-"):
            os.kill(os.getpid(), signal.SIGKILL)  # the old output moved aside, the new one not yet in place
        if mode == "report":
            print("renamed", os.path.basename(str(b)), flush=True)
            time.sleep(0.5)

    os.rename = rename
    from analysis.cli.resize import main
    sys.exit(main([sys.argv[1], "--rank", sys.argv[2], "--out", os.environ["OUT"], "--force", "--quiet"]))
""")


def _resize_no_swap(src, rank, out, mode):
    return subprocess.Popen([sys.executable, "-c", _NO_SWAP, str(src), str(rank), mode], cwd=ROOT,
                            env={**os.environ, "OUT": str(out)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _ranks(out):
    return {lr.r for lr in load_adapter(out).values()}


@pytest.mark.slow
def test_an_interrupted_replacement_without_the_one_step_swap_is_completed(tmp_path, pair):
    out = tmp_path / "out"
    assert _resize_no_swap(pair[0], 1, out, "plain").wait() == 0 and _ranks(out) == {1}
    p = _resize_no_swap(pair[0], 3, out, "kill-between")
    assert p.wait() == -9
    assert not out.exists() and [n for n in _beside(out) if ".prev-" in n] and [n for n in _beside(out) if ".new-" in n]
    with pytest.raises(AdapterError, match="already exists"):  # the next writer of out finishes the replacement
        with atomic_output(out, folder=True):
            pass
    assert _ranks(out) == {3} and _beside(out) == ["out"]


def test_an_interrupted_replacement_with_only_the_old_output_is_rolled_back(tmp_path, capfd):
    out = tmp_path / "out"
    with atomic_output(out, folder=True) as tmp:
        open(os.path.join(tmp, "old.csv"), "w").write("old\n")
    os.rename(out, tmp_path / ".out.prev-0123abcd")  # a kill after moving it aside; its new output never whole
    (tmp_path / ".out.tmp-89abcdef").mkdir()
    with pytest.raises(AdapterError, match="already exists"):
        with atomic_output(out, folder=True):
            pass
    assert "restored the previous output" in capfd.readouterr().err
    assert os.listdir(out) == ["old.csv"] and _beside(out) == ["out"]


@pytest.mark.slow
def test_kills_at_random_points_leave_the_old_or_the_new_output(tmp_path, pair):
    """SIGKILL after a random number of the replacement's renames (none, tmp -> new, old -> prev, new -> target),
    on a filesystem without the one-step swap: the next writer always finds one whole output, old or new."""
    out = tmp_path / "out"
    assert _resize_no_swap(pair[0], 1, out, "plain").wait() == 0
    rng = random.Random(23)
    seen = set()
    for step in (0, 1, 2, 3, *(rng.randint(0, 3) for _ in range(2))):
        before = _ranks(out)
        rank = 3 if before != {3} else 2
        p = _resize_no_swap(pair[0], rank, out, "report")
        for _ in range(step):
            while not p.stdout.readline().startswith("renamed"):  # (the command's own lines)
                pass
        p.kill()
        p.wait()
        left = {n.split(".")[2].split("-")[0] for n in _beside(out) if n.startswith(".out.")}
        seen.add((out.exists(), frozenset(left)))
        with pytest.raises(AdapterError):  # the next writer of out cleans up (then finds out, no --force)
            with atomic_output(out, folder=True):
                pass
        assert _ranks(out) in (before, {rank}) and _beside(out) == ["out"]
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert {cfg["r"]} == _ranks(out)  # weights and config of one writer
    assert (False, frozenset({"lock", "new", "prev"})) in seen  # the two-rename window was hit
