"""``core.forked.Forked``: a function run in a forked child, its value or its error brought back."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from analysis.core.forked import Forked, ForkedError, can_fork
from analysis.errors import AdapterError

pytestmark = pytest.mark.skipif(not can_fork(), reason="no fork on this platform")


def test_value_comes_back_and_the_child_really_is_another_process():
    big = np.arange(1_000_000, dtype=np.float64)  # inherited, not pickled on the way in
    with Forked(lambda: (os.getpid(), float(big.sum()), {"a": big[:3]})) as job:
        assert job.forked
        pid, total, extra = job.result()
    assert pid != os.getpid() and total == float(big.sum())
    np.testing.assert_array_equal(extra["a"], big[:3])


def test_the_childs_error_is_raised_again_with_its_type_and_where_it_came_from():
    def bad():
        raise AdapterError("expected a matrix, got a vector", path="x.safetensors", key="w")

    with pytest.raises(AdapterError, match=r"x\.safetensors: key 'w': expected a matrix") as err:
        Forked(bad, name="the base pass").result()
    notes = getattr(err.value, "__notes__", None)  # Python 3.11+
    assert notes is None or any("the base pass" in n and "Traceback" in n for n in notes)


def test_an_error_that_does_not_pickle_and_a_dead_child_are_forked_errors():
    class Local(Exception):  # a local class: does not pickle
        pass

    def local():
        raise Local("only here")

    with pytest.raises(ForkedError, match="Local: only here"):
        Forked(local).result()

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ForkedError, match=r"died \(exit code -9\)"):
        Forked(die, name="dying").result()

    with pytest.raises(ForkedError, match="could not be sent back"):
        Forked(lambda: (lambda: 1)).result()  # a lambda does not pickle


def test_a_child_past_its_timeout_is_terminated():
    job = Forked(lambda: time.sleep(60), name="sleeping")
    proc = job._proc
    with pytest.raises(ForkedError, match="sleeping did not finish within 0.5 s"):
        job.result(timeout=0.5)
    assert proc is not None and not proc.is_alive()


def test_close_terminates_a_running_child_and_disabled_runs_here():
    job = Forked(lambda: time.sleep(60))
    proc = job._proc
    t = time.perf_counter()
    job.close()
    assert time.perf_counter() - t < 10 and proc is not None and not proc.is_alive()
    here = Forked(lambda: os.getpid(), enabled=False)
    assert not here.forked and here.result() == os.getpid()


def test_dask_in_the_child_after_dask_ran_here():
    """dask's threaded scheduler keeps a thread pool for the process; in a forked child its threads are gone and a
    computation given to it would wait for ever (the report's collection hung so in the test session)."""
    dask = pytest.importorskip("dask")

    def total():
        return int(dask.compute(*[dask.delayed(lambda i: i * i)(i) for i in range(8)])[0] + 1)

    assert total() == 1  # the pool now exists here
    with Forked(lambda: sum(dask.compute(*[dask.delayed(lambda i: i * i)(i) for i in range(8)]))) as job:
        assert job.result(timeout=60) == sum(i * i for i in range(8))


@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_parent(tmp_path):
    """The parent killed with SIGKILL (no clean-up runs): the child does not go on working for nobody."""
    import subprocess
    import sys

    pidfile = tmp_path / "child.pid"
    code = ("import os, time\nfrom analysis.core.forked import Forked\n"
            f"job = Forked(lambda: (open({str(pidfile)!r}, 'w').write(str(os.getpid())), time.sleep(120)))\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its parent by 5 s")
