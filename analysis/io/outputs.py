"""Writing results whole or not at all, never over an input: atomic files and folders, JSON that any tool reads.

What holds for every output written through :func:`atomic_output` (every command's ``--json``, ``--csv``,
``--plot``, ``--out`` and the adapter writers):

- **Never over an input.** Before any work a target is refused (one line, ``--force`` or not) when it is,
  holds or lies above an input of the command (:func:`protect`), the working directory or the home folder
  (compared by path and by file identity: symbolic links, bind mounts and hard links do not get round it),
  or is a mount point.
- **``--force`` replaces only what the toolkit wrote.** A file is replaced only by one of the same kind (a JSON
  file by JSON, a PNG by a PNG …); a folder only when it is empty or holds nothing but the files its manifest
  lists (the list of files a folder output holds, kept in an extended attribute of the folder, or where the
  filesystem has none in a hidden ``.lora-subspace-manifest`` file; the report keeps its own ``MANIFEST``).
- **Whole or not at all.** The output is written to a temporary ``.NAME.tmp-XXXXXXXX`` beside the target,
  its files and folders fsynced, renamed ``.NAME.new-XXXXXXXX`` once whole, then put in place: in one step
  where the system can (``rename`` for a new target, ``renameat2(RENAME_EXCHANGE)`` to swap with an existing
  one), else by moving the old one aside to ``.NAME.prev-XXXXXXXX`` first. Ctrl-C, SIGTERM and SIGHUP during
  that final step wait until it is done.
- **A dead writer blocks nothing.** The writer holds ``fcntl.flock`` on ``.NAME.lock`` (the kernel releases it
  when the process dies, however it dies); the next writer of the same target takes the lock, then cleans
  what a dead one left: a temporary is removed; an interrupted replacement is completed when the old output
  had already been moved aside and the new one is whole (``.prev`` and ``.new`` present, no target), and
  rolled back (the old one put back) when only the old one is there. Either way the user has the old output
  or the new one, never neither.
- **All outputs or none.** Inside :func:`output_set` (every command runs in one) the outputs are written to
  their temporaries as the command goes, and put in place together at the end; if one fails, those already
  put in place are rolled back.

:func:`replace_folder` is the same writer for a folder its caller owns whole (a training run's folder, which it
rewrites as the run goes): the folder is replaced whatever it holds, except the entries the caller keeps
(its ``checkpoint-N`` subfolders), which are carried into the new folder before the swap. This module (with
:mod:`analysis.io.durable`) is the package's one writer that puts a temporary in place by renaming it; the SVD
cache alone keeps its own (its entries are shared by concurrent runs without a per-entry lock, see
:mod:`analysis.sweeps.svd_cache`).

Targets that are no path to replace (:func:`~analysis.io.targets.target_type`): ``-`` writes to standard
output (the one of :func:`~analysis.io.targets.standard_output`: the commands keep their messages off it); the
null device, a FIFO or another character device is written as it is, without ``--force`` (nothing there can be
lost), with no lock and no rename (they cannot be renamed into). Their data is still made whole first, in a
temporary in the system's temporary folder, and sent when the command's outputs are put in place, before the
files (so a failed command sends nothing; a reader that went away leaves the files untouched); the null device
discards it, a folder included. Two outputs to ``-``, or to one FIFO, are refused; the null device takes any
number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import tempfile
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis import __version__
from analysis.errors import AdapterError
from analysis.io.durable import (Lock, deferred_signals, exchange, follow_umask, fsync_dir, fsync_tree, recover,
                                 remove, rename_noreplace, tag)
from analysis.io.targets import (MANIFEST_FILE, MANIFEST_XATTR, STDOUT, kind_of, check_target, data_stream,
                                 protect, standard_output, stream_label, target_type, write_manifest)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

__all__ = ["atomic_output", "replace_folder", "check_target", "output_set", "protect", "json_ready", "write_json",
           "provenance", "standard_output", "target_type", "MANIFEST_FILE", "MANIFEST_XATTR", "STDOUT"]


def json_ready(obj: Any) -> Any:
    """Recursively turn numpy scalars / arrays and NaN into JSON-safe values.

    Parameters
    ----------
    obj : object
        Dicts, lists, tuples, numpy values and plain scalars.

    Returns
    -------
    object
        The same structure with lists, Python scalars and None for NaN / Inf.
    """
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fiub":  # whole arrays at once: no per-value recursion
        if obj.dtype.kind == "f" and not np.isfinite(obj).all():
            return json_ready(obj.tolist())
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return json_ready(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------- one output

def _failed(e, label):
    where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) not in label else ""
    return AdapterError(f"writing failed{where}: {e.strerror or e}; nothing was written", path=label)


class _Output:
    """One output being written: its temporary, its lock, and how to put it in place or take it back."""

    stream = False
    record = True  # a folder records the names it holds (its manifest: what --force may replace)

    def __init__(self, shown, *, force, folder, kind, manifest, option):
        self.shown, self.force, self.folder = shown, force, folder
        self.kind, self.manifest, self.option = kind, manifest, option
        self.label = f"{option} {shown}" if option else shown
        self.real = os.path.realpath(shown)
        self.parent, self.name = os.path.split(self.real)
        self.lock = self.tmp = self.new = self.backup = None
        self.placed = False

    def check(self):
        check_target(self.shown, force=self.force, folder=self.folder, kind=self.kind, option=self.option,
                     manifest=self.manifest)

    def _sibling(self, stage):
        suffix = "" if self.folder else os.path.splitext(self.name)[1]
        return os.path.join(self.parent, f".{tag(self.name)}.{stage}-{secrets.token_hex(4)}{suffix}")

    def open(self):
        """Lock the target, clean a dead writer's leftovers, make the temporary; returns its path."""
        try:
            os.makedirs(self.parent, exist_ok=True)
        except OSError as e:
            raise AdapterError(f"cannot create its folder: {e.strerror}", path=self.label) from None
        self.lock = Lock(self.parent, self.name, self.label).acquire()
        try:
            recover(self.parent, self.name, self.label)
            self.check()  # again: what recovery put back, or what appeared before the lock
            tmp = self._sibling("tmp")
            if self.folder:
                os.mkdir(tmp, 0o700)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            self.tmp = tmp
        except OSError as e:
            self.lock.release()
            raise AdapterError(f"cannot write here: {e.strerror}", path=self.label) from None
        except BaseException:
            self.lock.release()
            raise
        return tmp

    def finish(self):
        """The writer is done: modes, manifest, fsync, then ``.new`` (whole, not yet in place)."""
        follow_umask(self.tmp)
        if self.folder and self.record:
            write_manifest(self.tmp, self.manifest)
        fsync_tree(self.tmp)
        new = self._sibling("new")
        os.rename(self.tmp, new)
        self.tmp, self.new = None, new
        fsync_dir(self.parent)

    def place(self):
        """Put the new output in place, keeping the old one (if any) as ``self.backup`` until :meth:`done`."""
        self.check()  # appeared while we worked
        if os.path.lexists(self.real):
            prev = self._sibling("prev")
            if exchange(self.new, self.real):
                prev = self.new  # the new output's old name now holds the old output (a leftover: removed)
            elif not self.folder and not os.path.isdir(self.real) and _link(self.real, prev):
                try:
                    os.replace(self.new, self.real)
                except BaseException:
                    remove(prev)
                    raise
            else:  # two renames: a kill in between is completed by the next run (see recover)
                os.rename(self.real, prev)
                fsync_dir(self.parent)
                try:
                    os.rename(self.new, self.real)
                except BaseException:
                    os.rename(prev, self.real)  # the old output back at once
                    raise
            self.backup = prev
        else:
            rename_noreplace(self.new, self.real)
        self.new = None
        self.placed = True
        fsync_dir(self.parent)

    def undo(self):
        """Take a placed output back (another output of the same command failed)."""
        if not self.placed:
            return
        if self.backup is not None:
            if os.path.isdir(self.real) and not os.path.islink(self.real):
                trash = self._sibling("tmp")
                os.rename(self.real, trash)
                os.rename(self.backup, self.real)
                remove(trash)
            else:
                os.replace(self.backup, self.real)
        else:
            remove(self.real)
        self.backup, self.placed = None, False
        fsync_dir(self.parent)

    def done(self):
        if self.backup is not None:
            remove(self.backup)
            self.backup = None
            fsync_dir(self.parent)
        self.close()

    def discard(self):
        """Remove the temporary (or the whole, unplaced new output) and release the lock."""
        for p in (self.tmp, self.new):
            if p is not None:
                remove(p)
        self.tmp = self.new = None
        self.close()

    def close(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class _OwnedFolder(_Output):
    """A folder its writer owns whole (:func:`replace_folder`): replaced whatever it holds, without a manifest,
    with the entries named in ``keep`` carried over from the folder it replaces."""

    record = False

    def __init__(self, shown, *, keep):
        super().__init__(shown, force=True, folder=True, kind=None, manifest=None, option=None)
        self.keep = tuple(keep)

    def check(self):
        check_target(self.shown, folder=True, owned=True)

    def finish(self):
        """Carry the kept entries the writer did not write itself into the temporary (hard links, so the old
        folder stays whole until the swap), then as :meth:`_Output.finish`."""
        for name in self.keep:
            if os.path.basename(name) != name or name in ("", ".", ".."):
                continue  # only entries of the folder itself
            src, dst = os.path.join(self.real, name), os.path.join(self.tmp, name)
            if os.path.lexists(src) and not os.path.lexists(dst):
                _carry(src, dst)
        super().finish()


def _carry(src, dst):
    """Copy the file or folder ``src`` to ``dst`` as hard links (a plain copy where a link cannot be made)."""
    if os.path.isdir(src) and not os.path.islink(src):
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)
    return dst


class _StreamOutput:
    """One output to ``-``, the null device, a FIFO or a character device: made whole in a temporary of the
    system's temporary folder, then sent (or, to the null device, discarded). Same interface as :class:`_Output`."""

    stream = True

    def __init__(self, given, where, *, folder, kind, option):
        self.given, self.where, self.folder, self.option = given, where, folder, option
        self.shown = STDOUT if where == "stdout" else os.path.abspath(os.fspath(given))
        self.suffix = f".{kind}" if kind else ("" if where == "stdout" else os.path.splitext(self.shown)[1])
        self.kind = kind or kind_of(self.shown)
        self.label = stream_label(self.shown, where, option)
        self.real = "<standard output>" if where == "stdout" else os.path.realpath(self.shown)
        self.tmp = None
        self.placed = False

    def check(self):
        check_target(self.given, folder=self.folder, kind=self.kind, option=self.option)

    def open(self):
        """The temporary the writer fills (a folder when ``folder``; a file named with the kind written, else
        with the target's suffix, so that writers reading the format from the name work)."""
        try:
            if self.folder:
                self.tmp = tempfile.mkdtemp(prefix="lora-subspace-out-")
            else:
                fd, self.tmp = tempfile.mkstemp(prefix="lora-subspace-out-", suffix=self.suffix)
                os.close(fd)
        except OSError as e:
            raise AdapterError(f"cannot make a temporary in {tempfile.gettempdir()}: {e.strerror}",
                               path=self.label) from None
        return self.tmp

    def finish(self):
        pass

    def place(self):
        """Send the data: to standard output, into the FIFO or device; the null device gets nothing."""
        if self.where == "stdout":
            _send(self.tmp, data_stream(), self.label)
        elif self.where == "stream" and not self.folder:
            with open(self.tmp, "rb") as src, open(self.shown, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        self.placed = True

    def undo(self):
        pass  # sent data cannot be taken back (the streams are sent first, before any file is placed)

    def done(self):
        self.discard()

    def discard(self):
        if self.tmp is not None:
            remove(self.tmp)
            self.tmp = None

    def close(self):
        pass

    def failed(self, e):
        """The error for ``e`` raised while sending (a reader of standard output gone: as it is)."""
        if isinstance(e, BrokenPipeError) and self.where == "stdout":
            return e  # the runner stops quietly, as Unix tools do (``… | head``)
        if isinstance(e, OSError):
            reason = "the reader went away" if isinstance(e, BrokenPipeError) else (e.strerror or str(e))
            return AdapterError(f"writing failed: {reason}; no file output was written", path=self.label)
        return e


def _send(path, stream, label):
    """Copy the file ``path`` to the open ``stream`` (its binary buffer where it has one)."""
    stream.flush()
    buf = getattr(stream, "buffer", None)
    with open(path, "rb") as src:
        if buf is not None:
            shutil.copyfileobj(src, buf, 1 << 20)
            buf.flush()
        else:  # a text-only stream (a notebook's): the data must be UTF-8 text
            try:
                text = src.read().decode("utf-8")
            except UnicodeDecodeError:
                raise AdapterError("this standard output takes text only, and the data is binary: give a file "
                                   "name", path=label) from None
            stream.write(text)
    stream.flush()


def _new_output(path, *, force, folder, kind, manifest, option):
    """The :class:`_Output` or :class:`_StreamOutput` for ``path``."""
    where = target_type(path)
    if where != "path":
        return _StreamOutput(path, where, folder=folder, kind=kind, option=option)
    return _Output(os.path.abspath(os.fspath(path)), force=force, folder=folder, kind=kind, manifest=manifest,
                   option=option)


def _link(a, b):
    try:
        os.link(a, b)
        return True
    except OSError:
        return False


def _place_all(outputs):
    """Put every output in place, or none: on a failure the placed ones are taken back.

    Streams (``-``, FIFOs, devices) are sent first, where Ctrl-C still stops a send that blocks (a FIFO nobody
    reads); then the files are put in place with the signals held.
    """
    for o in outputs:
        if o.stream:
            try:
                o.place()
            except BaseException as e:
                for other in outputs:
                    other.discard()
                    other.close()
                err = o.failed(e)
                if err is e:
                    raise
                raise err from None
    files = [o for o in outputs if not o.stream]
    with deferred_signals():
        placed = []
        try:
            for o in files:
                o.place()
                placed.append(o)
        except BaseException as e:
            for o in reversed(placed):
                with contextlib.suppress(OSError):
                    o.undo()
            for o in outputs:
                o.discard()
            if isinstance(e, OSError):
                raise _failed(e, files[len(placed)].label) from None
            raise
        for o in outputs:
            o.done()


# ---------------------------------------------------------------------------- all outputs or none

_state = threading.local()


class _OutputSet:
    def __init__(self):
        self.outputs, self.targets = [], {}

    def claim(self, out):
        if getattr(out, "where", None) == "null":
            return  # the null device takes any number of outputs
        if out.real in self.targets:
            one = "share standard output" if out.real == "<standard output>" else "name one path"
            raise AdapterError(f"is also the target of {self.targets[out.real]}; two outputs of one command cannot "
                               f"{one}", path=out.label)
        self.targets[out.real] = out.label

    def discard(self):
        for o in self.outputs:
            o.discard()
        self.outputs = []

    def commit(self):
        outs, self.outputs = self.outputs, []
        if outs:
            _place_all(outs)


@contextlib.contextmanager
def output_set() -> Iterator[None]:
    """Write every output of the block together: each :func:`atomic_output` inside (in this thread, not nested
    in another) is written to its temporary as the block goes and put in place when the block ends; if the
    block raises, or one output cannot be put in place, none is (those already placed are taken back).

    Nested calls join the outer set.
    """
    if getattr(_state, "outputs", None) is not None:
        yield
        return
    current = _OutputSet()
    _state.outputs = current
    try:
        yield
    except BaseException:
        _state.outputs = None
        current.discard()
        raise
    _state.outputs = None
    current.commit()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, force: bool = False, folder: bool = False, kind: str | None = None,
                  manifest: str | None = None, option: str | None = None) -> Iterator[str]:
    """Write ``path`` whole or not at all, never over an input: yield a temporary path beside it, then put it
    in place (see the module docstring for what holds). ``-`` writes to standard output; the null device, a
    FIFO or a character device is written as it is, without ``force`` (see the module docstring).

    The temporary path is a folder when ``folder``, else a file name with ``path``'s suffix (so that
    writers that read the format from it, like ``savefig``, work). On success the result takes the umask's
    modes, is fsynced, and is put in place; on any failure, Ctrl-C included, the temporary is removed and
    nothing at ``path`` changes. Inside :func:`output_set` the result is put in place when the set ends.

    Parameters
    ----------
    path : str or os.PathLike
        A file or folder path, ``-`` (standard output), the null device, a FIFO or a character device.
    force : bool
        Replace an existing output of the toolkit's (see :func:`check_target`).
    folder : bool
    kind : str, optional
        The kind of file written (default: from the suffix), for :func:`check_target`.
    manifest : str, optional
        A folder's own list of its files (see :func:`check_target`).
    option : str, optional
        The command-line option naming the target, for messages.

    Yields
    ------
    str
        Where to write.

    Raises
    ------
    AdapterError
        See :func:`check_target`; another process is writing ``path``; or writing failed (full disk, no
        permission): one line naming ``path`` and the reason.
    """
    out = _new_output(path, force=force, folder=folder, kind=kind, manifest=manifest, option=option)
    out.check()
    deferred = getattr(_state, "outputs", None) if getattr(_state, "depth", 0) == 0 else None
    if deferred is not None:
        deferred.claim(out)
    with _written(out, deferred) as tmp:
        yield tmp


@contextlib.contextmanager
def replace_folder(path: str | os.PathLike[str], *, keep: Iterable[str] = ()) -> Iterator[str]:
    """Write the folder ``path`` whole, replacing the folder there whatever it holds except the entries named in
    ``keep``, which are carried into the new one: for a folder its caller owns (a training run's, which keeps
    its ``checkpoint-N`` subfolders when the final adapter is written over it).

    The same writer as :func:`atomic_output` (a temporary folder beside ``path``, a lock a dead writer cannot
    hold, fsync, the swap in one step where the system can), with three differences: an existing folder is
    replaced without ``force`` and whatever it holds (no manifest is read, none is written: see
    :func:`check_target`'s ``owned``); the kept entries the writer did not write itself are hard-linked (copied
    where a link cannot be made) into the temporary once the writer is done, so the old folder stays whole until
    the new one is in place; and the folder is put in place when the block ends, also inside
    :func:`output_set` (what it keeps must be on disk when the next one is written).

    Parameters
    ----------
    path : str or os.PathLike
        The folder (created with its parents when missing).
    keep : iterable of str
        Names of entries of the existing folder (files or folders directly inside it) that survive the
        replacement; a name the writer wrote itself takes the writer's version.

    Yields
    ------
    str
        The temporary folder to write into.

    Raises
    ------
    AdapterError
        ``path`` is a file, an input of the command, the working directory, the home folder or a mount point;
        another process is writing it; or writing failed (full disk, no permission).

    Examples
    --------
    >>> import os, tempfile
    >>> run = os.path.join(tempfile.mkdtemp(), "run")
    >>> os.makedirs(os.path.join(run, "checkpoint-2"))
    >>> with replace_folder(run, keep=["checkpoint-2"]) as tmp:
    ...     with open(os.path.join(tmp, "manifest.json"), "w") as fh:
    ...         _ = fh.write("{}")
    >>> sorted(os.listdir(run))
    ['checkpoint-2', 'manifest.json']
    """
    if target_type(path) != "path":
        raise AdapterError("expected a folder path (not standard output, a device or a FIFO)", path=os.fspath(path))
    out = _OwnedFolder(os.path.abspath(os.fspath(path)), keep=keep)
    out.check()
    with _written(out, None) as tmp:
        yield tmp


@contextlib.contextmanager
def _written(out, deferred):
    """Open ``out``'s temporary, yield it, finish it and put it in place (or hand it to ``deferred``, an
    :func:`output_set`'s); on any failure the temporary is removed and nothing changes."""
    tmp = out.open()
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield tmp
    except OSError as e:
        _state.depth -= 1
        out.discard()
        raise _failed(e, out.label) from None
    except BaseException:
        _state.depth -= 1
        out.discard()
        raise
    _state.depth -= 1
    try:
        out.finish()
    except OSError as e:
        out.discard()
        raise _failed(e, out.label) from None
    except BaseException:
        out.discard()
        raise
    if deferred is not None:
        deferred.outputs.append(out)
    else:
        _place_all([out])


# ---------------------------------------------------------------------------- JSON

def _dumps(obj, level=0):
    """JSON text with one key per line in objects and every array on one line (the C encoder writes the arrays:
    an indented dump goes through the pure-Python encoder, seconds for a 70B-sized pair)."""
    if isinstance(obj, dict) and obj:
        pad = "\n" + " " * (level + 1)
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{" + ",".join(items) + "\n" + " " * level + "}"
    return json.dumps(obj, separators=(", ", ": "))


def write_json(path: str | os.PathLike[str], obj: Any, *, force: bool = False, option: str | None = None) -> None:
    """Write ``obj`` as JSON (numpy values converted, a final newline), whole or not at all.

    Parameters
    ----------
    path : str or os.PathLike
    obj : object
    force : bool
        Replace an existing JSON file (the commands pass their ``--force``); default: refuse it, like every
        writer of the toolkit.
    option : str, optional
        The option naming ``path`` (``--json``), for messages.
    """
    text = _dumps(json_ready(obj)) + "\n"
    with atomic_output(path, force=force, kind="json", option=option) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


def provenance(command: str, *, inputs: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """What a ``--json`` file records first: the tool, its version, the inputs as given and every setting.

    Parameters
    ----------
    command : str
        The ``python -m analysis.X`` name (``"subspace"``).
    inputs : Mapping
        Paths and model names exactly as the user gave them (no absolute or resolved paths).
    settings : Mapping
        Every option that changes a number (sides, k, seeds, trials, tolerance …). No timings: two runs
        on the same inputs write the same bytes.

    Returns
    -------
    dict
    """
    return {"tool": "lora-subspace-analysis", "version": __version__, "command": command,
            "inputs": dict(inputs), "settings": dict(settings)}
