"""Saving figures: a 256-colour palette PNG, and many figures rendered at once in forked worker processes.

Rendering (layout, drawing, PNG encoding) is pure-Python work under the GIL: threads do not speed it up, and the
report spends most of its writing time there. :class:`FigureJobs` starts ``jobs`` forked workers
(:class:`~analysis.core.forked.Forked`), which inherit the computed data (nothing is pickled) and build and save
the figures one after another while the caller does other work; :meth:`FigureJobs.wait` renders what is left
alongside them and joins them. Where ``fork`` is not
available, or with one job, the figures are rendered in the calling process, in order; the files are the same
bytes either way.
"""

from __future__ import annotations

import gc
import io
import multiprocessing
from typing import TYPE_CHECKING, Any

from analysis.core.allocator import release_freed_memory
from analysis.core.forked import Forked, add_note, can_fork

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from matplotlib.figure import Figure

__all__ = ["save_png", "FigureTask", "FigureJobs", "render_figures"]

#: One figure to render: the path it is saved to and the function that builds it.
FigureTask = tuple[str, "Callable[[], Figure]"]


def save_png(fig: Figure, path: str, *, dpi: int = 100) -> None:
    """Save ``fig`` as a 256-colour palette PNG.

    Line art, text and colour maps lose nothing visible and take a third of the RGBA size; no dithering, so flat
    areas stay flat.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str
    dpi : int
    """
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                   dither=Image.Dither.NONE).save(path, format="PNG", optimize=True)


def _render_one(path: str, build: Callable[[], Figure]) -> None:
    try:
        save_png(build(), path)
    except Exception as e:
        add_note(e, f"while rendering {path}")
        raise
    gc.collect()  # a figure is a web of cycles: free it before the next one, and give its buffers back
    release_freed_memory()


def _render(tasks: Sequence[FigureTask], after: Callable[[str], Any] | None = None) -> list[Any]:
    out: list[Any] = []
    for path, build in tasks:
        _render_one(path, build)
        if after is not None:
            out.append(after(path))
    return out


def _pull(tasks: Sequence[FigureTask], counter: Any, after: Callable[[str], Any] | None = None) -> list[Any]:
    """Render the tasks not yet taken, one at a time: the next index comes from the shared ``counter``."""
    out: list[Any] = []
    while True:
        with counter.get_lock():
            i = counter.value
            counter.value = i + 1
        if i >= len(tasks):
            return out
        path, build = tasks[i]
        _render_one(path, build)
        if after is not None:
            out.append(after(path))


class FigureJobs:
    """Figures rendering in forked workers while the caller goes on; :meth:`wait` helps, then joins them.

    The workers take the figures one at a time, in order, from a shared counter (a long figure does not hold up
    the others); the caller, in :meth:`wait`, takes what is left alongside them.

    Parameters
    ----------
    tasks : sequence of (path, build)
        ``build()`` returns the Figure saved to ``path`` (:func:`save_png`).
    jobs : int
        Worker processes (at most one per task); 1, or no ``fork`` on this platform: the figures are rendered
        here, before the constructor returns.
    after : callable, optional
        ``after(path)``, called where a figure was saved, right after it (in its worker): what it returns (it
        must pickle) comes back from :meth:`wait`, e.g. an encoding of the file made while the caller is busy.

    Notes
    -----
    Use as a context manager: leaving the block early (an error, Ctrl-C) terminates the workers. An error in a
    figure is raised by :meth:`wait` (see :class:`~analysis.core.forked.Forked`).
    """

    def __init__(self, tasks: Sequence[FigureTask], *, jobs: int, after: Callable[[str], Any] | None = None) -> None:
        self._tasks = list(tasks)
        self._after = after
        n = min(int(jobs), len(self._tasks))
        self._workers: list[Forked[list[Any]]] = []
        self._counter: Any = None
        self._done: list[Any] = []
        if n <= 1 or not can_fork():
            self._done = _render(self._tasks, after)
            return
        release_freed_memory()  # what the heap keeps from earlier work would be the workers' too
        self._counter = multiprocessing.get_context("fork").Value("q", 0)
        for k in range(n):
            self._workers.append(Forked(lambda: _pull(self._tasks, self._counter, after),
                                        name=f"figure worker {k + 1}"))

    def wait(self) -> list[Any]:
        """Render the figures no worker has taken yet, then wait for every worker; raise the first failure.

        Returns
        -------
        list
            What ``after`` returned for each figure (in no set order); empty without ``after``.
        """
        workers, self._workers = self._workers, []
        done, self._done = self._done, []
        try:
            if self._counter is not None:
                done += _pull(self._tasks, self._counter, self._after)
            for w in workers:
                done += w.result()
        finally:
            for w in workers:
                w.close()
        return done

    def close(self) -> None:
        """Terminate the workers still running."""
        for w in self._workers:
            w.close()
        self._workers = []

    def __enter__(self) -> FigureJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def render_figures(tasks: Sequence[FigureTask], *, jobs: int = 1,
                   after: Callable[[str], Any] | None = None) -> list[Any]:
    """Render and save every figure of ``tasks``, in ``jobs`` forked workers.

    Parameters
    ----------
    tasks : sequence of (path, build)
    jobs : int
    after : callable, optional
        As for :class:`FigureJobs`.

    Returns
    -------
    list
        What ``after`` returned for each figure (in no set order); empty without ``after``.
    """
    with FigureJobs(tasks, jobs=jobs, after=after) as running:
        return running.wait()
