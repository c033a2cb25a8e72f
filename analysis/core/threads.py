"""The toolkit's own threading: BLAS pinned for small factorisations, parallelism across modules.

Multithreaded BLAS gains nothing on the per-module work (d × r QRs, r × r SVDs) and its spinning
threads collapse when the cores are busy (measured: 10–17× slower than one thread with two other
CPU-bound processes running). So the sweeps run their small factorisations with BLAS limited to one
thread (:func:`blas_threads`, through ``threadpoolctl``) and get their parallelism from working on
several modules at once (:func:`map_ordered`), as many as there are cores actually available to the
process (:func:`available_cores`: CPU affinity and the cgroup CPU quota), or ``jobs`` when given
(``--jobs N`` on the commands). Large products (the randomized SVD of a base weight) may use BLAS
threads when they run alone: :func:`blas_threads` with ``None`` leaves the library's own setting.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import deque
from typing import TYPE_CHECKING

from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

__all__ = ["available_cores", "resolve_jobs", "blas_threads", "map_ordered"]

_LOCK = threading.RLock()
_DEPTH = [0]


def _cgroup_quota(root="/sys/fs/cgroup"):
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or ``None``."""
    try:
        with open(os.path.join(root, "cpu.max")) as fh:
            quota, period = (fh.read().split() + ["100000"])[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as fh:
            quota = float(fh.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as fh:
            period = float(fh.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(*, cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Cores this process may actually use: its CPU affinity, capped by the cgroup CPU quota.

    Parameters
    ----------
    cgroup_root : str
        Where the cgroup files are read (for tests).

    Returns
    -------
    int
        At least 1.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, int(n))


def resolve_jobs(jobs: int | None = None) -> int:
    """The number of modules worked on at once: ``jobs``, or :func:`available_cores` when ``None`` / 0.

    Parameters
    ----------
    jobs : int, optional

    Returns
    -------
    int
    """
    if jobs is None or (not isinstance(jobs, bool) and isinstance(jobs, int) and jobs == 0):
        return available_cores()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InputError(f"jobs must be a positive integer (or None / 0 for the available cores), got {jobs!r}")
    return jobs


@contextlib.contextmanager
def blas_threads(n: int | None = 1) -> Iterator[None]:
    """Limit the BLAS / OpenMP thread pools (numpy's, scipy's and torch's) to ``n`` threads inside the block.

    The limit is process-wide (BLAS libraries have no per-thread setting); nested and concurrent uses from
    several threads are counted, and the previous setting is restored when the outermost block ends. It
    applies to the libraries loaded when the outermost block starts: import what the block will use (e.g.
    ``scipy.linalg``, which ships its own OpenBLAS) before entering it.

    Parameters
    ----------
    n : int or None
        Threads; ``None`` changes nothing (large products that run alone keep the library's own setting).
    """
    if n is None:
        yield
        return
    with _LOCK:
        _DEPTH[0] += 1
        if _DEPTH[0] == 1:
            _State.enter(int(n))
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                _State.exit()


class _State:
    limiter = None
    torch_threads = None

    @classmethod
    def enter(cls, n):
        torch = _loaded_torch()
        cls.torch_threads = torch.get_num_threads() if torch is not None else None  # before threadpoolctl
        try:
            from threadpoolctl import threadpool_limits

            cls.limiter = threadpool_limits(limits=n)
        except Exception:  # threadpoolctl missing or a library it cannot drive: leave the setting alone
            cls.limiter = None
        if torch is not None:
            torch.set_num_threads(n)

    @classmethod
    def exit(cls):
        if cls.limiter is not None:
            cls.limiter.restore_original_limits()
            cls.limiter = None
        torch = _loaded_torch()
        if torch is not None and cls.torch_threads is not None:
            torch.set_num_threads(cls.torch_threads)
        cls.torch_threads = None


def _loaded_torch():
    import sys

    return sys.modules.get("torch")  # never imported here: only limited when the caller already uses it


def map_ordered(fn: Callable[[Any], Any], items: Iterable[Any], *, jobs: int | None = 1,
                alone_threads: int | None = 1) -> Iterator[Any]:
    """``[fn(x) for x in items]``, with up to ``jobs`` calls at once in threads, BLAS pinned to one thread.

    At most ``jobs`` calls run at once and the next item is read only when one of them is free, so memory
    stays bounded by ``jobs`` modules (a finished call keeps only its result, and at most ``4 jobs`` results
    wait for an earlier, slower call); results come back in order, lazily, as a generator. A slow module does
    not hold the other workers up (a light module after a heavy one starts as soon as a worker is free). An
    exception in ``fn`` is raised when its result is reached (the calls in flight are awaited first).

    Parameters
    ----------
    fn : callable
    items : iterable
    jobs : int or None
        1: no thread at all (the calls run in the caller's thread, in order); ``None``: the available cores.
    alone_threads : int or None
        BLAS threads when ``jobs`` is 1 (``None``: the library's own setting, for large products that may use
        every core when they run alone). With several jobs BLAS is always pinned to one thread.

    Yields
    ------
    fn(x) for each x, in order.
    """
    jobs = resolve_jobs(jobs)
    with blas_threads(1 if jobs > 1 else alone_threads):
        if jobs == 1:
            for x in items:
                yield fn(x)
            return
        from concurrent.futures import ThreadPoolExecutor

        window = 4 * jobs
        cond = threading.Condition()
        running = [0]

        def finished(_):
            with cond:
                running[0] -= 1
                cond.notify()

        def can_submit():
            return more[0] and running[0] < jobs and len(pending) < window

        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="analysis-module") as pool:
            pending: deque[Any]
            pending, it, more = deque(), iter(items), [True]
            try:
                while more[0] or pending:
                    while can_submit():
                        try:
                            x = next(it)
                        except StopIteration:
                            more[0] = False
                            break
                        with cond:
                            running[0] += 1
                        fut = pool.submit(fn, x)
                        fut.add_done_callback(finished)
                        pending.append(fut)
                    if not pending:
                        break
                    with cond:
                        cond.wait_for(lambda: pending[0].done() or can_submit())
                    if pending[0].done():
                        yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()
