"""Where a collection task reads an adapter from: a path, an fsspec URL or an Adapter, opened inside the task.

:func:`open_source` opens one source in a task (a local PEFT file lazily, each file once per process; a URL
copied to a temporary folder); :func:`task_source` is what a task receives for a source (a local path made
absolute, since workers' working folders differ); :func:`source_label` names a source as the user gave it.
Used by the collection sweeps (:mod:`analysis.sweeps.collection`, :mod:`analysis.sweeps.models`,
:mod:`analysis.sweeps.trajectory`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from typing import Any

from analysis.core.adapter import Adapter
from analysis.errors import AdapterError
from analysis.io import load_adapter
from analysis.io.lazy import LazyAdapter

__all__ = ["open_source", "source_label", "task_source"]


def source_label(src: str | os.PathLike[str] | Adapter) -> str:
    """The name of an adapter source as the user gave it (a path, a URL, or an Adapter's path)."""
    if isinstance(src, Adapter):
        return str(src.path)
    return os.fspath(src) if isinstance(src, os.PathLike) else str(src)


def task_source(src: str | os.PathLike[str] | Adapter) -> str | Adapter:
    """What a task receives: an Adapter as is, a URL as is, a local path made absolute (workers' cwd differ)."""
    if isinstance(src, Adapter):
        return src
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"expected adapter paths, URLs or analysis.Adapter objects, got {type(src).__name__}")
    s = os.fspath(src)
    if "://" in s and not s.startswith("file://"):
        return s
    s = s[len("file://"):] if s.startswith("file://") else s
    return os.path.abspath(s) if os.path.exists(s) else s


class _Opened:
    """An adapter opened in a task, and the temporary copy of a URL to remove afterwards."""

    def __init__(self, adapter, tmp=None):
        self.adapter, self.tmp = adapter, tmp

    def __enter__(self):
        return self.adapter

    def __exit__(self, *exc):
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def open_source(src: str | os.PathLike[str] | Adapter, *, alpha: float | None = None) -> _Opened:
    """Open one adapter source in a task: an Adapter, a local path (read lazily where the format allows)
    or an fsspec URL (copied to a temporary folder, read eagerly, the copy removed on exit).

    Returns
    -------
    context manager yielding an Adapter
    """
    if isinstance(src, Adapter):
        return _Opened(src.with_alpha(alpha) if alpha is not None else src)
    s = str(src)
    if "://" in s:
        import fsspec

        tmp = tempfile.mkdtemp(prefix="lora-collection-")
        try:
            fs, root = fsspec.core.url_to_fs(s)
            if not fs.exists(root):
                raise AdapterError("no such file or folder", path=s)
            if fs.isdir(root):
                local = os.path.join(tmp, "adapter")
                os.makedirs(local)
                for f in fs.ls(root, detail=False):
                    if fs.isfile(f):
                        fs.get(f, os.path.join(local, os.path.basename(f.rstrip("/"))))
            else:
                local = os.path.join(tmp, os.path.basename(root.rstrip("/")))
                fs.get(root, local)
            ad = load_adapter(local, alpha=alpha)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ad.path = s
        return _Opened(ad, tmp)
    return _Opened(_lazy_cached(s, alpha))


#: Opened lazy adapters of this process (a worker opens each file once, not once per task): the reader holds
#: the header and one loader per module, never the factors. Keyed by path, size and mtime.
_OPENED: OrderedDict[Any, Any] = OrderedDict()
_OPENED_MAX = 512
_OPENED_LOCK = threading.Lock()


def _lazy_cached(path, alpha):
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), alpha, st.st_size, st.st_mtime_ns)
    except OSError:
        return load_adapter(path, alpha=alpha, lazy=True)  # raises the reader's one-line error
    if os.path.isdir(path):  # a folder: its files' identities too (an adapter rewritten in place)
        key += tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path) if e.is_file())
    with _OPENED_LOCK:
        ad = _OPENED.get(key)
        if ad is not None:
            _OPENED.move_to_end(key)
            return ad
    ad = load_adapter(path, alpha=alpha, lazy=True)
    if not isinstance(ad, LazyAdapter):  # an eager reader (loralib, kohya): holds the factors, not cached
        return ad
    with _OPENED_LOCK:
        _OPENED[key] = ad
        while len(_OPENED) > _OPENED_MAX:
            _OPENED.popitem(last=False)
    return ad
