"""Progress of long work on standard error: a bar on a terminal, plain lines elsewhere, nothing when asked.

A :class:`Progress` reports *tasks*: stages a caller names (``with progress.stage("pairs"):``) and counters a
sweep advances (one step per module, :meth:`Progress.track`). Tasks nest: a counter opened inside a stage is
shown under the stage's name (``pairs / modules``). Three modes:

- ``"bar"``: a tqdm bar per open task (a terminal; in a notebook, its widget);
- ``"lines"``: plain lines for a log, a notebook's output or CI. A task is shown once it has run ``delay``
  seconds (``0``: from its start): a first line (what it is doing, how far: ``n of N``, elapsed), then at most
  one line every ``interval`` seconds for the whole reporter (the innermost open task's), and a last line
  when it ends (``done``). A task that ends before ``delay`` prints nothing; a task that fails prints no last
  line (the error says what happened). For example::

      pairs: running, 2.0 s
      pairs / modules: 31 of 60, 12.0 s
      pairs / modules: 60 of 60, done in 23.5 s
      pairs: done in 24.1 s

- ``"off"``: nothing (a false :class:`Progress`).

Library functions take ``progress=`` as ``False`` (nothing), ``True`` (bars, as before) or a :class:`Progress`
(the command's), and turn it into a reporter with :func:`as_progress`; ``None`` there means the reporter of the
command running now, if any (:meth:`Progress.active`), so that code several calls below a command reports
without a parameter threaded through.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import TYPE_CHECKING

from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any, TextIO

__all__ = ["Progress", "Task", "as_progress", "PROGRESS_MODES", "LINE_DELAY", "LINE_INTERVAL"]

#: The reporter's modes.
PROGRESS_MODES = ("off", "bar", "lines")
#: Seconds a task runs before its first line, for ``--progress auto`` when standard error is not a terminal.
LINE_DELAY = 2.0
#: At most one line every this many seconds (besides each task's first and last).
LINE_INTERVAL = 10.0

_TICK = 0.5  # how often the ticker looks at the open tasks
_ACTIVE: list[Progress] = []  # reporters of the commands running now, innermost last


def _elapsed(seconds):
    """``12.3 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, m = divmod(int(round(seconds)) // 60, 60)
    return f"{h} h {m:02d} min"


class Task:
    """One stage or counter of a :class:`Progress`: advance it with :meth:`update`, end it with :meth:`close`.

    Attributes
    ----------
    name : str
        What it is doing (``"pairs"``, ``"modules"``).
    path : str
        ``name`` under the names of the tasks open around it (``"pairs / modules"``).
    total : int or None
        How many steps it has (None: unknown); may be set while it runs.
    count : int
        Steps done.
    """

    def __init__(self, owner: Progress, name: str, *, total: int | None, counter: bool, path: str) -> None:
        self.owner, self.name, self.total, self.counter, self.path = owner, name, total, counter, path
        self.count = 0
        self.start = time.monotonic()
        self.shown = False
        self.closed = False
        self.bar = None

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        self.count += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self, *, failed: bool = False) -> None:
        """End the task (its last line unless ``failed``); closing twice does nothing."""
        self.owner._close(self, failed=failed)

    def status(self, *, last: bool = False) -> str:
        """The line shown for this task now."""
        seconds = time.monotonic() - self.start
        el = _elapsed(seconds)
        just = seconds < 0.05 and not last  # shown at its start (``--progress on``)
        if self.counter or self.count or self.total is not None:
            done = f"{self.count} of {self.total}" if self.total is not None else f"{self.count}"
            if last:
                return f"{self.path}: {done}, done in {el}"
            return f"{self.path}: {done}" if just else f"{self.path}: {done}, {el}"
        if last:
            return f"{self.path}: done in {el}"
        return f"{self.path}: started" if just else f"{self.path}: running, {el}"

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(failed=kind is not None)
        return False


class Progress:
    """Where long work reports how far it is (see the module docstring).

    Parameters
    ----------
    mode : {"off", "bar", "lines"}
    stream : file-like, optional
        Where it writes (default: standard error when the first task opens).
    delay : float
        ``"lines"``: seconds a task runs before it is shown (0: from its start).
    interval : float
        ``"lines"``: at least this many seconds between two lines, besides each task's first and last.
    notebook : bool
        ``"bar"``: tqdm's notebook widget where there is one (``tqdm.auto``), else the text bar.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("lines", stream=out)
    >>> with p.stage("pairs"):
    ...     for _ in p.track(range(3), desc="modules"):
    ...         pass
    >>> print(out.getvalue().replace("0.0 s", "T"), end="")
    pairs: started
    pairs / modules: 0 of 3
    pairs / modules: 3 of 3, done in T
    pairs: done in T
    """

    def __init__(self, mode: str = "off", *, stream: TextIO | None = None, delay: float = 0.0,
                 interval: float = LINE_INTERVAL, notebook: bool = False) -> None:
        if mode not in PROGRESS_MODES:
            raise InputError(f"mode must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
        if not delay >= 0 or not interval >= 0:
            raise InputError(f"delay and interval must be >= 0 seconds, got {delay!r} and {interval!r}")
        self.mode, self.stream, self.delay, self.interval, self.notebook = mode, stream, delay, interval, notebook
        self._open: list[Task] = []  # open tasks, outermost first
        self._lock = threading.RLock()
        self._last_line = -float("inf")  # when the last line was written
        self._ticker = None
        self._stop = threading.Event()

    @classmethod
    def for_stream(cls, setting: str = "auto", *, quiet: bool = False, stream: TextIO | None = None) -> Progress:
        """The reporter a command wants: ``--progress auto|on|off`` and ``--quiet``.

        ``off`` or ``quiet``: nothing. ``auto``: a bar when ``stream`` (default standard error) is a terminal,
        else lines for the tasks that run :data:`LINE_DELAY` seconds or more. ``on``: a bar on a terminal, else
        lines for every task from its start.
        """
        if setting not in ("auto", "on", "off"):
            raise InputError(f"setting must be auto, on or off, got {setting!r}")
        if quiet or setting == "off":
            return cls("off")
        stream = stream if stream is not None else sys.stderr
        try:
            tty = bool(stream.isatty())
        except (AttributeError, ValueError, OSError):
            tty = False
        if tty:
            return cls("bar", stream=stream)
        return cls("lines", stream=stream, delay=LINE_DELAY if setting == "auto" else 0.0)

    def __bool__(self):
        return self.mode != "off"

    def __repr__(self):
        return f"Progress({self.mode!r})"

    # ------------------------------------------------------------------ tasks

    def stage(self, name: str, *, total: int | None = None) -> Task:
        """A named stage of the work, as a context manager yielding its :class:`Task`.

        Parameters
        ----------
        name : str
            What it does, in a few words (``"pairs"``, ``"base pass"``, ``"figures"``).
        total : int, optional
            Its number of steps, when it counts them (:meth:`Task.update`).
        """
        return self._task(name, total=total, counter=False)

    def counter(self, *, total: int | None = None, desc: str = "modules") -> Task:
        """A :class:`Task` counting steps (``update()``, ``close()``), as a tqdm bar is used by hand."""
        return self._task(desc, total=total, counter=True)

    def track(self, iterable: Iterable[Any], *, total: int | None = None, desc: str = "modules") -> Iterator[Any]:
        """``iterable``, counting one step per item (the task ends with the iteration).

        Parameters
        ----------
        iterable : iterable
        total : int, optional
            Its length (default ``len(iterable)`` where it has one).
        desc : str
            What is counted.

        Returns
        -------
        iterator
        """
        if not self:
            return iter(iterable)
        if total is None:
            with contextlib.suppress(TypeError):
                total = len(iterable)  # type: ignore[arg-type]  # TypeError: no length
        return self._iterate(self.counter(total=total, desc=desc), iterable)

    @staticmethod
    def _iterate(task, iterable):
        ok = False
        try:
            for item in iterable:
                task.update()
                yield item
            ok = True
        finally:
            task.close(failed=not ok)

    def _task(self, name, *, total, counter):
        with self._lock:
            path = " / ".join([t.name for t in self._open] + [str(name)])
            task = Task(self, str(name), total=total, counter=counter, path=path)
            if self.mode == "off":
                task.closed = True  # nothing to track
                return task
            self._open.append(task)
            if self.mode == "bar":
                task.bar = self._bar(task)
            elif self.delay == 0:
                self._show(task)
            self._ensure_ticker()
        return task

    def _bar(self, task):
        if self.notebook:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm

        kw = {"file": self.stream} if self.stream is not None else {}
        if task.counter:
            return tqdm(total=task.total, desc=task.path, unit="mod", leave=False, **kw)
        return tqdm(total=task.total, desc=task.path, leave=False,
                    bar_format="{desc}: {elapsed}" if task.total is None else None, **kw)

    def _close(self, task, *, failed):
        with self._lock:
            if task.closed:
                return
            task.closed = True
            for inner in [t for t in self._open[self._open.index(task) + 1:]] if task in self._open else []:
                self._close(inner, failed=True)  # a counter left open inside (an exception went through it)
            if task in self._open:
                self._open.remove(task)
            if task.bar is not None:
                task.bar.close()
                task.bar = None
            elif task.shown and not failed:
                self._write(task.status(last=True))

    def close(self) -> None:
        """End every open task (no last lines) and stop the ticker."""
        with self._lock:
            for task in list(self._open):
                self._close(task, failed=True)
        self._stop.set()

    # ------------------------------------------------------------------ lines

    def _write(self, line):
        stream = self.stream if self.stream is not None else sys.stderr
        self._last_line = time.monotonic()
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):  # standard error closed: progress is not worth a failure
            pass

    def _show(self, task):
        task.shown = True
        self._write(task.status())

    def _tick(self):
        """Called by the ticker: show the tasks that reached ``delay``, and the periodic line."""
        now = time.monotonic()
        with self._lock:
            if self.mode == "bar":
                for t in self._open:
                    if t.bar is not None:
                        with contextlib.suppress(Exception):
                            t.bar.refresh()
                return
            for t in self._open:
                if not t.shown and now - t.start >= self.delay:
                    self._show(t)
            shown = [t for t in self._open if t.shown]
            if shown and now - self._last_line >= self.interval:
                self._write(shown[-1].status())

    def _ensure_ticker(self):
        if self._ticker is not None and self._ticker.is_alive():
            return
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._run_ticker, args=(self._stop,), name="progress", daemon=True)
        self._ticker.start()

    def _run_ticker(self, stop):
        while not stop.wait(_TICK):
            with self._lock:
                if not self._open:
                    self._ticker = None
                    return
                self._tick()

    # ------------------------------------------------------------------ the command's reporter

    @contextlib.contextmanager
    def activate(self) -> Iterator[Progress]:
        """Make this the reporter :func:`as_progress` gives for ``None`` inside the block (the commands do)."""
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            with contextlib.suppress(ValueError):
                _ACTIVE.remove(self)
            self.close()

    @staticmethod
    def active() -> Progress | None:
        """The reporter of the command running now, or None."""
        return _ACTIVE[-1] if _ACTIVE else None


_OFF = Progress("off")


def as_progress(progress: bool | Progress | None = None) -> Progress:
    """A :class:`Progress` from what a function was given as ``progress=``.

    Parameters
    ----------
    progress : bool, Progress or None
        ``False``: nothing; ``True``: bars (tqdm; the notebook widget in a notebook); a :class:`Progress`:
        itself; ``None``: the reporter of the command running now (:meth:`Progress.active`), else nothing.

    Returns
    -------
    Progress
    """
    if isinstance(progress, Progress):
        return progress
    if progress is None:
        return Progress.active() or _OFF
    return Progress("bar", notebook=True) if progress else _OFF
