"""A function run in a forked child process while the caller goes on: the second core for GIL-bound work.

The toolkit's per-module work is many small numpy calls: threads (:mod:`analysis.core.threads`) keep one core
busy and the other mostly waiting for the GIL. Two independent stages (the report's pairs and its base pass;
figures) run truly at once when one of them runs in a child made by ``fork``: it inherits every computed object
(nothing is pickled on the way in), and only its return value is pickled back through a pipe. An exception
raised in the child is raised again in the caller (the same type and message when it pickles, so a bad input
stays a bad input); one that does not pickle becomes :class:`ForkedError` carrying the child's traceback.

Where ``fork`` is not available (Windows, or ``enabled=False``), the function runs in the caller when the result
is asked for: the same value, one core.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = ["Forked", "ForkedError", "can_fork", "add_note"]

T = TypeVar("T")


class ForkedError(RuntimeError):
    """The child failed with an exception that could not be sent back, or died (killed, out of memory)."""


def can_fork() -> bool:
    """Whether this platform starts processes by ``fork``."""
    return "fork" in multiprocessing.get_all_start_methods()


def add_note(err: BaseException, text: str) -> None:
    """``err.add_note(text)`` where Python has it (3.11+; shown under its traceback); nothing on 3.10."""
    note = getattr(err, "add_note", None)
    if note is not None:
        note(text)


def _after_fork() -> None:
    """Drop the thread pools the parent made before the fork: their threads do not exist in the child, so a task
    given to them would never run (dask's threaded scheduler keeps one for the process). On Linux, ask to be
    sent SIGTERM when the parent dies (a parent killed with SIGKILL leaves no child working for nobody)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    threaded = sys.modules.get("dask.threaded")
    if threaded is not None:
        setattr(threaded, "default_pool", None)  # noqa: B010 - a module's global
        getattr(threaded, "pools", {}).clear()
        setattr(threaded, "pools_lock", threading.Lock())  # noqa: B010


def _child(fn: Callable[[], object], conn: Connection) -> None:
    try:
        _after_fork()
        value: object = ("ok", fn())
    except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        try:
            pickle.loads(pickle.dumps(e))
            value = ("raise", e, tb)
        except Exception:  # noqa: BLE001 - an exception that does not round-trip: its text
            value = ("error", f"{type(e).__name__}: {e}", tb)
    try:
        try:
            conn.send(value)
        except (pickle.PicklingError, TypeError, AttributeError) as e:  # the value itself does not pickle
            conn.send(("error", f"the result could not be sent back ({type(e).__name__}: {e})", ""))
    except BaseException:  # noqa: BLE001 - the parent is gone: nobody to tell, and no traceback printed
        os._exit(1)
    os._exit(0)


class Forked(Generic[T]):
    """``fn()`` running in a forked child from construction; :meth:`result` waits for its value.

    Parameters
    ----------
    fn : callable
        Takes no argument; its return value must pickle.
    enabled : bool
        False (or no ``fork`` here): ``fn`` runs in this process, in :meth:`result`.
    name : str
        What runs, for error messages.

    Notes
    -----
    Use as a context manager: leaving the block before :meth:`result` (an error, Ctrl-C) terminates the child.
    Changes ``fn`` makes to objects are the child's own; only the return value comes back.
    """

    def __init__(self, fn: Callable[[], T], *, enabled: bool = True, name: str = "a task") -> None:
        self._fn, self.name = fn, name
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        if enabled and can_fork():
            ctx = multiprocessing.get_context("fork")
            recv, send = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(target=_child, args=(fn, send), daemon=True)
            # the inherited objects out of the child's garbage collector: a collection there would write to
            # every object's header and copy the page it lies on (the memory the fork shares would double)
            gc.freeze()
            try:
                self._proc.start()
            finally:
                gc.unfreeze()
            send.close()
            self._conn = recv

    @property
    def forked(self) -> bool:
        """Whether ``fn`` runs in a child process."""
        return self._proc is not None

    def result(self, timeout: float | None = None) -> T:
        """``fn()``'s value: received from the child (after it ends), or computed here when not forked.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the child; past them it is terminated and :class:`ForkedError` raised.

        Raises
        ------
        Exception
            What ``fn`` raised, or :class:`ForkedError`.
        """
        if self._proc is None or self._conn is None:
            return self._fn()
        proc, conn = self._proc, self._conn
        if timeout is not None and not conn.poll(timeout):
            self.close()
            raise ForkedError(f"{self.name} did not finish within {timeout:g} s in a child process")
        try:
            msg = conn.recv()
        except EOFError:
            msg = None
        finally:
            conn.close()
            proc.join()
            self._proc = self._conn = None
        if msg is None:
            msg = ("error", f"the process died (exit code {proc.exitcode})", "")
        if msg[0] == "ok":
            return msg[1]
        if msg[0] == "raise":
            err = msg[1]
            add_note(err, f"raised in a child process ({self.name}):\n{msg[2]}")
            raise err
        raise ForkedError(f"{self.name} failed in a child process: {msg[1]}" + (f"\n{msg[2]}" if msg[2] else ""))

    def close(self) -> None:
        """Terminate the child if it still runs (its result is dropped)."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()
            self._proc.join()
            if self._conn is not None:
                self._conn.close()
            self._proc = self._conn = None

    def __enter__(self) -> Forked[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
