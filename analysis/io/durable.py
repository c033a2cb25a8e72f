"""The mechanics of putting an output in place durably: a lock a dead writer cannot hold, the cleaning of what a
dead writer left (finishing or undoing its replacement), one-step renames, fsync, and signals held during the
final renames (see :mod:`analysis.io.outputs` for the contract these serve).

Names beside a target ``NAME`` (``XXXXXXXX``: 8 random hex digits; a file keeps ``NAME``'s suffix):

- ``.NAME.lock``: ``fcntl.flock``-ed by the writer for as long as it writes (the kernel releases it when the
  process dies, however it dies); removed when the writer is done.
- ``.NAME.tmp-XXXXXXXX``: being written; a dead writer's is removed by the next writer.
- ``.NAME.new-XXXXXXXX``: whole and fsynced, not yet in place.
- ``.NAME.prev-XXXXXXXX``: the previous output, moved aside while the new one is put in place.

With the lock held, :func:`recover` looks at what a dead writer left: with no ``NAME`` but ``.prev`` and
``.new``, the replacement had begun and the new output is whole: it is **completed** (``.new`` becomes
``NAME``); with no ``NAME`` and only ``.prev``, it is **rolled back** (``.prev`` becomes ``NAME``); everything
else is removed. A note on standard error says which.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from analysis.errors import AdapterError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Lock", "recover", "tidy", "exchange", "rename_noreplace", "fsync_dir", "fsync_tree", "follow_umask",
           "deferred_signals", "remove", "tag"]


def tag(name: str) -> str:
    """The name used for the lock and temporaries of target ``name`` (shortened when very long)."""
    if len(os.fsencode(name)) <= 200:
        return name
    import hashlib

    return "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def _leftover_re(name):
    return re.compile(r"^\." + re.escape(tag(name)) + r"\.(tmp|new|prev|old)-[a-z0-9_]{8}(\.[^/]*)?$")


class Lock:
    """``fcntl.flock`` on ``.NAME.lock`` beside the target, held until :meth:`release` (or the process dies)."""

    path: str
    label: str | os.PathLike[str]
    fd: int | None

    def __init__(self, parent: str, name: str, label: str | os.PathLike[str]) -> None:
        self.path = os.path.join(parent, f".{tag(name)}.lock")
        self.label, self.fd = label, None

    def acquire(self) -> Lock:
        import fcntl

        for _ in range(100):
            try:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                except PermissionError:  # a dead writer's lock of another user: reading is enough for flock
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise AdapterError(f"cannot write here: {e.strerror}", path=self.label) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise AdapterError("another process is writing it now (it holds the lock "
                                   f"{os.path.basename(self.path)}); wait for it to finish", path=self.label) from None
            except OSError:  # a filesystem without locks: go on unlocked
                self.fd = fd
                return self
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)  # a finishing writer removed that lock file meanwhile: take the new one
        raise AdapterError("could not take the write lock", path=self.label)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def _note(text):
    print(f"note: {text}", file=sys.stderr, flush=True)


def remove(p: str | os.PathLike[str]) -> None:
    """Remove a file or a folder tree, quietly."""
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(p)


def _pid_dead(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def tidy(path: str | os.PathLike[str], label: str | os.PathLike[str] | None = None) -> None:
    """Clean what a dead writer of ``path`` left, if anything (taking its lock for the time; a live writer's
    leftovers are left alone). Called before a target is judged, so that no refusal leaves them behind."""
    parent, name = os.path.split(os.path.realpath(os.path.abspath(os.fspath(path))))
    rx = _leftover_re(name)
    try:
        found = any(rx.match(n) for n in os.listdir(parent)) or os.path.isfile(os.path.join(parent, name + ".lock"))
    except OSError:
        return
    if not found:
        return
    try:
        lock = Lock(parent, name, label or path).acquire()
    except AdapterError:  # a live writer: its pieces are its own
        return
    try:
        recover(parent, name, label or path)
    finally:
        lock.release()


def recover(parent: str, name: str, label: str | os.PathLike[str]) -> None:
    """Clean what a dead writer of ``parent/name`` left (called with its lock held); finish or undo its swap."""
    rx = _leftover_re(name)
    try:
        found = [n for n in os.listdir(parent) if rx.match(n)]
    except OSError:
        found = []
    target = os.path.join(parent, name)
    legacy_lock = target + ".lock"  # the lock of earlier versions: a PID, left behind by a killed writer
    with contextlib.suppress(OSError, ValueError):
        if os.path.isfile(legacy_lock) and os.path.getsize(legacy_lock) < 32:
            with open(legacy_lock) as fh:
                pid = int(fh.read().strip())
            if _pid_dead(pid):
                os.remove(legacy_lock)
    if not found:
        return
    by: dict[str, list[tuple[int, str]]] = {}
    for n in found:
        p = os.path.join(parent, n)
        with contextlib.suppress(OSError):
            by.setdefault(rx.match(n).group(1), []).append((os.lstat(p).st_mtime_ns, p))
    latest = {k: max(v)[1] for k, v in by.items()}
    if not os.path.lexists(target):
        try:
            if "prev" in latest and "new" in latest:
                os.rename(latest["new"], target)
                _note(f"{label}: completed the replacement that an interrupted run had begun (its new output "
                      "was whole); the previous output is removed")
            elif "prev" in latest:
                os.rename(latest["prev"], target)
                _note(f"{label}: restored the previous output, which an interrupted replacement had moved aside")
            elif "old" in latest and os.path.lexists(os.path.join(latest["old"], name)):  # earlier versions
                os.rename(os.path.join(latest["old"], name), target)
                _note(f"{label}: restored the previous output, which an interrupted replacement had moved aside")
        except OSError as e:
            raise AdapterError(f"cannot finish the replacement an interrupted run left ({e.strerror}); its pieces "
                               f"are {', '.join(sorted(os.path.basename(p) for p in latest.values()))} beside it",
                               path=label) from None
    for items in by.values():
        for _, p in items:
            if os.path.lexists(p):
                remove(p)
    fsync_dir(parent)


# ---------------------------------------------------------------------------- durable renames

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_RENAMEAT2: list[Any] = []  # the ctypes function, or None where there is none


def _renameat2(a, b, flags):
    """``renameat2(a, b, flags)``; True on success, False where the system or filesystem cannot."""
    if not _RENAMEAT2:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _RENAMEAT2.append(fn)
        except (OSError, AttributeError):
            _RENAMEAT2.append(None)
    fn = _RENAMEAT2[0]
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # not here (an older kernel, NFS, most FUSE filesystems)
    raise OSError(err, os.strerror(err), b)


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Rename ``a`` to ``b``, refusing (``FileExistsError``) if ``b`` exists: in one step where the system can
    (``renameat2(RENAME_NOREPLACE)``), else checked just before ``os.rename``."""
    if _renameat2(a, b, _RENAME_NOREPLACE):
        return
    if os.path.lexists(b):
        raise FileExistsError(errno.EEXIST, "appeared while this command worked", b)
    os.rename(a, b)


def _fsync_path(p, directory=False):
    try:
        fd = os.open(p, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_dir(p: str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        _fsync_path(p, directory=True)


def fsync_tree(p: str | os.PathLike[str]) -> None:
    """fsync every file and folder of ``p`` (a file or a folder)."""
    if not os.path.isdir(p):
        _fsync_path(p)
        return
    for root, dirs, files in os.walk(p, topdown=False):
        for f in files:
            if not os.path.islink(os.path.join(root, f)):
                _fsync_path(os.path.join(root, f))
        _fsync_path(root, directory=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (and what a folder holds) the modes a plain ``open`` / ``mkdir`` would: 666 / 777 less the umask."""
    mask = _umask()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
        os.chmod(path, 0o777 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block is done (main thread only), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending, old = [], {}

    def hold(signum, frame):
        pending.append(signum)

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        s = getattr(signal, name, None)
        if s is None:
            continue
        with contextlib.suppress(ValueError, OSError, TypeError):
            prev = signal.getsignal(s)
            if prev is not None:
                signal.signal(s, hold)
                old[s] = prev
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


