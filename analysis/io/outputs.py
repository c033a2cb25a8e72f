"""Writing results whole or not at all: atomic files and folders, JSON that any tool reads."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile

import numpy as np

from analysis.errors import AdapterError

__all__ = ["atomic_output", "check_target", "json_ready", "write_json", "provenance"]


def json_ready(obj):
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


# ---------------------------------------------------------------------------- whole or not at all

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(path):
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


def _exchange(a, b):
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def check_target(path, *, force=False):
    """Refuse, before any work, to write where something already is, unless ``force``.

    Parameters
    ----------
    path : str or os.PathLike
    force : bool

    Raises
    ------
    AdapterError
        If ``path`` exists (a file, or a folder that is not empty) and ``force`` is false.
    """
    path = os.fspath(path)
    if force or not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
        return  # an empty folder holds nothing to lose
    raise AdapterError("already exists; choose another path or pass --force to replace it", path=path)


@contextlib.contextmanager
def _locked(path):
    lock = path + ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise AdapterError(f"another process is writing it now (lock file {lock}; remove it if no such process "
                           "is running)", path=path) from None
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)


@contextlib.contextmanager
def atomic_output(path, *, force=False, folder=False):
    """Write ``path`` whole or not at all: yield a temporary path beside it, then rename it into place.

    The temporary path is a folder when ``folder``, else a file name with ``path``'s suffix (so that
    writers that read the format from it, like ``savefig``, work). On success the result takes the umask's
    modes and is renamed into place in one step (an existing target, allowed only with ``force``, is
    swapped with it in one step where the system can, else replaced by two renames); on any failure,
    Ctrl-C included, the temporary path is removed and nothing at ``path`` changes. A second process
    writing the same ``path`` at the same time is refused (a ``path.lock`` file beside it).

    Parameters
    ----------
    path : str or os.PathLike
    force : bool
        Replace an existing ``path``.
    folder : bool

    Yields
    ------
    str
        Where to write.

    Raises
    ------
    AdapterError
        ``path`` exists without ``force``, another process is writing it, or writing failed (full disk,
        no permission): one line naming ``path`` and the reason.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    check_target(path, force=force)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise AdapterError(f"cannot create its folder: {e.strerror}", path=path) from None
    with _locked(path):
        name = os.path.basename(path)
        try:
            if folder:
                tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", suffix=os.path.splitext(name)[1], dir=parent)
                os.close(fd)
        except OSError as e:
            raise AdapterError(f"cannot write here: {e.strerror}", path=path) from None
        try:
            yield tmp
            _follow_umask(tmp)
            if os.path.lexists(path):
                check_target(path, force=force)  # appeared while we worked
                if folder and os.path.isdir(path) and _exchange(tmp, path):
                    shutil.rmtree(tmp)  # tmp now holds the old folder
                elif folder:
                    old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
                    os.rename(path, os.path.join(old, name))
                    os.rename(tmp, path)
                    shutil.rmtree(old)
                else:
                    os.replace(tmp, path)
            else:
                os.rename(tmp, path)
        except OSError as e:
            _remove(tmp)
            where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) != path else ""
            raise AdapterError(f"writing failed{where}: {e.strerror or e}; nothing was written", path=path) from None
        except BaseException:
            _remove(tmp)
            raise


def _remove(p):
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(p)


def _dumps(obj, level=0):
    """JSON text with one key per line in objects and every array on one line (the C encoder writes the arrays:
    an indented dump goes through the pure-Python encoder, seconds for a 70B-sized pair)."""
    if isinstance(obj, dict) and obj:
        pad = "\n" + " " * (level + 1)
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{" + ",".join(items) + "\n" + " " * level + "}"
    return json.dumps(obj, separators=(", ", ": "))


def write_json(path, obj, *, force=True):
    """Write ``obj`` as JSON (numpy values converted, a final newline), whole or not at all.

    Parameters
    ----------
    path : str or os.PathLike
    obj : object
    force : bool
        Replace an existing file (the commands pass their ``--force``).
    """
    text = _dumps(json_ready(obj)) + "\n"
    with atomic_output(path, force=force) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


def provenance(command, *, inputs, settings):
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
    from analysis import __version__

    return {"tool": "lora-subspace-analysis", "version": __version__, "command": command,
            "inputs": dict(inputs), "settings": dict(settings)}
