"""A persistent cache of what the sweeps compute from base weights (their singular triplets, random projections,
the report's null draws), shared by every run against the same base. It lives with the code that computes (io only
reads and writes files).

The base-weight analyses (Table 7, Fig. 8, intruders) are compute-bound: the randomized SVD of a
7B-shaped W costs about 1,300 flop per byte read. The result only depends on the tensor and on the
settings, so it is kept on disk, keyed by

- the **content** of the tensor: a 128-bit hash of its stored bytes (xxHash XXH3, or BLAKE2b where the
  ``xxhash`` package is missing), with its stored format and shape in ΔW's orientation: two files with the
  same name, size and modification time but other values never share an entry, and a tensor copied or
  moved keeps its entries;
- what was computed (``kind``: a top-k randomized SVD, or one side's full basis), ``k`` and the settings
  that fix the tolerance (oversampling, iterations, seed, precision).

The hash reads the tensor's bytes through a read-only mapping of the file (or where they already are in
memory): on a cache hit it is one more pass over bytes the analysis then reads once for its product with W.
Measured on a 4096 × 11008 bf16 tensor (90 MB, page cache warm, one thread): 6 ms for the hash against 21 ms
for reading the bytes into an array and 53 ms for the warm path's product (XXH3 at about 14 GB/s; BLAKE2b, the
fallback, 120 ms).

Entries live in their own subfolder, ``svd-cache``, of the user's cache folder (``$LORA_SUBSPACE_CACHE``,
else ``$XDG_CACHE_HOME/lora-subspace-analysis``, else ``~/.cache/lora-subspace-analysis``), marked as the
cache's own by a ``CACHEDIR.TAG``; the cache lists, trims and clears only the entries it names there
(``<64 hex digits>.npz``) and never touches anything else. A ``svd-cache`` subfolder that holds other files
and no such tag is not used (the cache is off for the run, with a note). Each entry is one ``.npz`` file named
by the SHA-256 of its key, written to a temporary file in the same folder (locked with ``flock`` while it is
written, so that a writer killed midway leaves a temporary the next writer removes) and renamed into place:
two processes filling the same entry at once each write a whole file, the last rename wins, a reader never
sees half a file. Each entry carries its key and a checksum of its arrays; an entry that does not load, whose
key or checksum differs, or whose arrays are not finite is a miss, and is rewritten. The folder is bounded
(default 2 GiB, ``$LORA_SUBSPACE_CACHE_MAX_BYTES``): after a write the least recently used entries are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import struct
import sys
import time
import weakref
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.bases import full_basis
from analysis.core.lowrank import FactoredSVD
from analysis.core.randomized import randomized_svd, work_dtype
from analysis.errors import AdapterError, InputError
from analysis.io.stored import FORMATS, StoredMatrix
from analysis.metrics.correlation import as_array, frobenius, random_projections
from analysis.metrics.stability import null_store

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import Any, TypeGuard

    from analysis.io.base import BaseWeights

__all__ = ["SVDCache", "cache_dir", "content_hash", "file_identity", "tensor_file", "cached_topk_svd",
           "cached_draws", "cached_full_basis", "cached_random_projections", "cached_stability_nulls",
           "DEFAULT_MAX_BYTES", "SUBFOLDER"]

DEFAULT_MAX_BYTES = 2 * 2**30
#: The cache's own subfolder of :func:`cache_dir`.
SUBFOLDER = "svd-cache"
_SUFFIX = ".npz"
_VERSION = 4
_ENTRY = re.compile(r"^[0-9a-f]{64}\.npz$")
_TMP = re.compile(r"^\.tmp-[0-9a-f]{16}\.npz$")
#: Seconds a temporary may stay unlocked before it counts as a dead writer's (create and lock are two steps).
TMP_GRACE = 60.0
_TAG_TMP = re.compile(r"^\.tag-[0-9a-f]{16}$")
_TAG_NAME = "CACHEDIR.TAG"
_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by lora-subspace-analysis (singular triplets of base\n"
        "# weights). For information about cache directory tags see https://bford.info/cachedir/\n")
_HASH_BLOCK = 4 << 20
_NOTED: set[str] = set()  # folders refused (noted once per process)


def cache_dir() -> str:
    """The cache folder: ``$LORA_SUBSPACE_CACHE``, ``$XDG_CACHE_HOME/lora-subspace-analysis`` or
    ``~/.cache/lora-subspace-analysis`` (not created here; the entries go in its ``svd-cache`` subfolder)."""
    explicit = os.environ.get("LORA_SUBSPACE_CACHE")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "lora-subspace-analysis")


def _hasher():
    """A streaming 128-bit hash: XXH3 (``xxhash``), else BLAKE2b; and its name."""
    try:
        import xxhash

        return xxhash.xxh3_128(), "xxh3_128"
    except ImportError:  # pragma: no cover - xxhash is a dependency
        return hashlib.blake2b(digest_size=16), "blake2b_128"


def _header_bytes(fh, size):
    head = fh.read(8)
    if len(head) == 8 and size >= 8:
        (n,) = struct.unpack("<Q", head)
        if 0 < n <= min(size - 8, 100 * 2**20):  # a safetensors header
            return head + fh.read(n)
    return head + fh.read(2**20 - len(head))


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size", "mtime_ns", "header_sha256"}`` of a file (its header: safetensors JSON, or the first MiB).

    Not part of the cache key any more (entries are keyed by content, see :func:`content_hash`); kept for
    callers that want a cheap identity of a file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
    """
    st = os.stat(path)
    with open(path, "rb") as fh:
        digest = hashlib.sha256(_header_bytes(fh, st.st_size)).hexdigest()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "header_sha256": digest}


def _hash_array(h, x):
    """Feed the bytes of ``x`` to ``h`` in its logical (row-major) order, without a copy where it is laid so."""
    x = np.asarray(x)
    if x.flags.c_contiguous:
        h.update(memoryview(x.reshape(-1)).cast("B"))
    elif x.ndim == 2 and x.T.flags.c_contiguous:  # a transposed view: the row order of xᵀ, marked
        h.update(b"T")
        h.update(memoryview(x.T.reshape(-1)).cast("B"))
    else:
        step = max(1, _HASH_BLOCK // max(1, x[0].nbytes if x.ndim > 1 and len(x) else 1))
        for i in range(0, len(x), step):
            h.update(memoryview(np.ascontiguousarray(x[i:i + step]).reshape(-1)).cast("B"))


def content_hash(W: np.ndarray | StoredMatrix) -> str:
    """A 128-bit hash of a tensor's stored values, with its format and shape (hex text).

    Parameters
    ----------
    W : ndarray or StoredMatrix
        A StoredMatrix not yet read is hashed from its file, through a read-only mapping of its bytes (4 MiB
        at a time); anything else from memory.

    Returns
    -------
    str
        ``"<hash name>:<32 hex digits>"``.
    """
    h, name = _hasher()
    if isinstance(W, StoredMatrix):
        h.update(f"{W.fmt}|{tuple(W.shape)}|".encode())
        if W._bits is None and W._region is not None:
            itemsize = np.dtype(FORMATS[W.fmt]).itemsize
            _hash_region(h, W.path, W._region, int(np.prod(W.shape)) * itemsize, key=W.key)
        else:
            _hash_array(h, W.bits)
    else:
        x = np.asarray(W)
        h.update(f"{x.dtype.str}|{tuple(x.shape)}|".encode())
        _hash_array(h, x)
    return f"{name}:{h.hexdigest()}"


def _hash_region(h, path, offset, length, *, key=None):
    """Feed ``length`` bytes of ``path`` from ``offset`` to ``h``: through a read-only mapping of the region
    (no copy: about twice as fast as reading into a buffer), else by positioned reads into one buffer."""
    import mmap

    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise AdapterError(f"cannot read the tensor: {e.strerror}", path=path, key=key) from None
    if offset + length > size:
        raise AdapterError(f"expected {length} bytes of the tensor at offset {offset}, the file has {size} "
                           "(truncated file?)", path=path, key=key)
    if length == 0:
        return
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        with open(path, "rb") as fh:
            m = mmap.mmap(fh.fileno(), offset + length - start, offset=start, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        m = None
    if m is not None:
        try:
            with contextlib.suppress(AttributeError, OSError):
                m.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(m)
            try:
                for i in range(offset - start, offset - start + length, _HASH_BLOCK):
                    h.update(view[i:min(i + _HASH_BLOCK, offset - start + length)])
            finally:
                view.release()
        finally:
            m.close()
        return
    buf = bytearray(min(_HASH_BLOCK, length))
    done = 0
    with open(path, "rb", buffering=0) as fh:
        while done < length:
            n = min(len(buf), length - done)
            view = memoryview(buf)[:n]
            got = os.preadv(fh.fileno(), [view], offset + done)
            if got != n:
                raise AdapterError(f"expected {length} bytes of the tensor, got {done + got} (truncated file?)",
                                   path=path, key=key)
            h.update(view)
            done += n


def tensor_file(base: BaseWeights | Mapping[str, np.ndarray], tensor: str) -> str | None:
    """The file holding base tensor ``tensor`` (module name, without ``.weight``), or ``None`` if unknown.

    Parameters
    ----------
    base : BaseWeights or Mapping
    tensor : str
    """
    keys = getattr(base, "_keys", None)  # SafetensorsBase: tensor key -> shard file
    if isinstance(keys, dict) and tensor + ".weight" in keys:
        return keys[tensor + ".weight"]
    path = getattr(base, "path", None)
    if path and os.path.isfile(path):
        return path
    return None


def _checksum(arrays):
    """A hash of named arrays (names, dtypes, shapes and bytes), hex text."""
    h, name = _hasher()
    for k in sorted(arrays):
        v = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{v.dtype.str}|{v.shape}|".encode())
        h.update(memoryview(v.reshape(-1)).cast("B") if v.size else b"")
    return f"{name}:{h.hexdigest()}"


def _flock(fd, *, block):
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))


class SVDCache:
    """Singular triplets of base weights on disk, keyed by the tensor's content and the settings.

    Parameters
    ----------
    folder : str, optional
        The user's cache folder (default :func:`cache_dir`); entries go in its :data:`SUBFOLDER`.
    max_bytes : int, optional
        Size bound of the entries (default ``$LORA_SUBSPACE_CACHE_MAX_BYTES`` or 2 GiB).
    enabled : bool
        ``False``: every ``get`` misses and ``put`` writes nothing (``--no-cache``).

    Attributes
    ----------
    root : str
        Where the entries are.
    hits, misses, writes : int
        Counters of this instance.
    refused : str or None
        Why the cache is off although enabled (its folder holds files it did not write), or None.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None, *, max_bytes: int | None = None,
                 enabled: bool = True) -> None:
        self.folder = os.fspath(folder) if folder is not None else cache_dir()
        self.root = os.path.join(self.folder, SUBFOLDER)
        if max_bytes is None:
            max_bytes = int(os.environ.get("LORA_SUBSPACE_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))
        if max_bytes < 0:
            raise InputError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.enabled = bool(enabled)
        self.hits = self.misses = self.writes = 0
        self.refused = None
        self._ready = False
        # (file, offset, fmt, shape, size, mtime) of a stored tensor -> content hash
        self._hashes: dict[tuple[Any, ...], str] = {}
        # id(W) -> (weak reference to W, content hash) for tensors in memory
        self._by_id: dict[int, tuple[Any, str]] = {}

    # -- the folder ----------------------------------------------------------------------------------------
    def _owned(self, create):
        """Whether :attr:`root` is the cache's own folder (creating it, tagged, when ``create``)."""
        if self._ready:
            return True
        if self.refused is not None:
            return False
        tag = os.path.join(self.root, _TAG_NAME)
        try:
            with open(tag, encoding="utf-8") as fh:
                if "lora-subspace-analysis" in fh.read(4096):
                    self._ready = True
                    return True
        except (OSError, UnicodeDecodeError):
            pass
        if not os.path.isdir(self.root):
            if not create:
                return False
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError:
                return False
        try:  # the cache's own names (entries, temporaries, a tag being written) do not make it foreign
            present = [n for n in os.listdir(self.root)
                       if n != _TAG_NAME and not (_ENTRY.match(n) or _TMP.match(n) or _TAG_TMP.match(n))]
        except OSError:
            return False
        if present:
            self.refused = (f"{self.root} holds files the SVD cache did not write ({', '.join(sorted(present)[:3])}"
                            f"{' …' if len(present) > 3 else ''}) and no {_TAG_NAME} of its own: the cache is off; "
                            "point LORA_SUBSPACE_CACHE at another folder")
            if self.root not in _NOTED:
                _NOTED.add(self.root)
                print(f"note: {self.refused}", file=sys.stderr, flush=True)
            return False
        if not create:
            return False
        try:
            tmp = os.path.join(self.root, f".tag-{secrets.token_hex(8)}")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(_TAG)
            os.replace(tmp, tag)
        except OSError:
            return False
        self._ready = True
        return True

    def content(self, W: np.ndarray | StoredMatrix) -> str:
        """:func:`content_hash` of ``W``, memoised for this instance when W is a tensor of a file."""
        region = getattr(W, "_region", None)
        if region is not None and getattr(W, "_bits", None) is None:
            try:
                st = os.stat(W.path)  # type: ignore[union-attr, arg-type]  # a StoredMatrix of a file
            except OSError:
                return content_hash(W)
            memo = (os.path.abspath(W.path), region, W.fmt,  # type: ignore[union-attr, arg-type]
                    tuple(W.shape), st.st_size, st.st_mtime_ns, st.st_ino)
            if memo not in self._hashes:
                self._hashes[memo] = content_hash(W)
            return self._hashes[memo]
        got = self._by_id.get(id(W))  # the same array asked again (the triplets, then the projections)
        if got is not None and got[0]() is W:
            return got[1]
        h = content_hash(W)
        try:
            if len(self._by_id) > 64:
                self._by_id = {k: v for k, v in self._by_id.items() if v[0]() is not None}
            self._by_id[id(W)] = (weakref.ref(W), h)
        except TypeError:  # not weakly referable: not memoised
            pass
        return h

    def key(self, W: np.ndarray | StoredMatrix, **settings: Any) -> dict[str, Any]:
        """The key of one entry: the tensor's content (:func:`content_hash`) and the settings (JSON-able)."""
        return {"version": _VERSION, "content": self.content(W), **{k: settings[k] for k in sorted(settings)}}

    def _path(self, key):
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
        return os.path.join(self.root, hashlib.sha256(text.encode()).hexdigest() + _SUFFIX), text

    # -- entries -------------------------------------------------------------------------------------------
    def get(self, key: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key`` (a dict ``name -> ndarray``), or ``None`` on a miss.

        A file that does not load, holds another key, fails its checksum or holds non-finite values is a miss
        (and is rewritten by the next :meth:`put`).
        """
        if not self.enabled or not self._owned(create=False):
            if self.enabled:
                self.misses += 1
            return None
        path, text = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["__key__"]) != text:
                    raise ValueError("key mismatch")
                out = {k: np.array(z[k]) for k in z.files if k not in ("__key__", "__sum__")}
                if str(z["__sum__"]) != _checksum(out):
                    raise ValueError("checksum mismatch")
            if not all(np.isfinite(v).all() for v in out.values() if v.dtype.kind == "f"):
                raise ValueError("non-finite values")
        except Exception:  # missing, truncated, corrupt, edited, another key: a miss
            self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used goes first
        self.hits += 1
        return out

    def put(self, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bool:
        """Store ``arrays`` (``name -> ndarray``) under ``key``: atomically, then trim the folder.

        Failures to write (read-only or full disk, a folder that is not the cache's own) are ignored: the
        cache only saves time.
        """
        if not self.enabled or not self._owned(create=True):
            return False
        path, text = self._path(key)
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        tmp = os.path.join(self.root, f".tmp-{secrets.token_hex(8)}{_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError:
            return False
        try:
            with os.fdopen(fd, "wb") as fh:
                with contextlib.suppress(OSError):
                    _flock(fh.fileno(), block=True)  # held while written: a dead writer's is unlocked
                np.savez(fh, __key__=np.array(text), __sum__=np.array(_checksum(arrays)),
                         **arrays)  # type: ignore[arg-type]
                fh.flush()
                os.replace(tmp, path)
                tmp = None  # type: ignore[assignment]  # written: nothing to remove
        except OSError:
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self.writes += 1
        self._trim(keep=path)
        return True

    def _own_entries(self):
        """``[(mtime_ns, size, path)]`` of the entries (names the cache gives) in its folder; removes the
        temporaries of writers that died (their lock is free)."""
        entries = []
        try:
            with os.scandir(self.root) as it:
                for e in it:
                    if _ENTRY.match(e.name):
                        with contextlib.suppress(OSError):
                            st = e.stat(follow_symlinks=False)
                            entries.append((st.st_mtime_ns, st.st_size, e.path))
                    elif _TMP.match(e.name):
                        self._drop_dead_tmp(e.path)
                    elif _TAG_TMP.match(e.name):  # a tag a killed process was writing
                        with contextlib.suppress(OSError):
                            if e.stat().st_mtime < time.time() - 60:
                                os.unlink(e.path)
        except OSError:
            pass
        return entries

    @staticmethod
    def _drop_dead_tmp(path):
        """Remove a temporary whose writer died: unlocked and older than :data:`TMP_GRACE` seconds (a live writer
        creates its temporary, then locks it: in between it is unlocked but new)."""
        try:
            if os.stat(path).st_mtime > time.time() - TMP_GRACE:
                return
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            _flock(fd, block=False)
        except OSError:  # a live writer holds it
            os.close(fd)
            return
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)

    def _trim(self, keep=None):
        entries = self._own_entries()
        total = sum(s for _, s, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            with contextlib.suppress(OSError):
                os.unlink(p)
            total -= size

    def clear(self) -> None:
        """Remove every entry of the cache (and nothing else)."""
        if not self._owned(create=False):
            return
        for _, _, p in self._own_entries():
            with contextlib.suppress(OSError):
                os.unlink(p)

    def __repr__(self):
        return (f"SVDCache(folder={self.folder!r}, max_bytes={self.max_bytes}, enabled={self.enabled}, "
                f"hits={self.hits}, misses={self.misses}, writes={self.writes})")


def _settings_ok(got: dict[str, np.ndarray] | None, names: Sequence[str],
                 shapes: Sequence[tuple[int, ...]]) -> TypeGuard[dict[str, np.ndarray]]:
    return got is not None and all(n in got and got[n].shape == s for n, s in zip(names, shapes))


def cached_topk_svd(cache: SVDCache | None, file: str | None, tensor: str, W: np.ndarray | StoredMatrix, k: int, *,
                    seed: int = 0, oversample: int | None = None, n_iter: int = 8,
                    norm: bool = False) -> FactoredSVD | tuple[FactoredSVD, float]:
    """:func:`~analysis.core.randomized_svd` of ``W`` (top ``k``), read from / written to ``cache``.

    The entry also holds ‖W‖_F (float64), so that with the cache warm W is needed in one product only.

    Parameters
    ----------
    cache : SVDCache or None
        ``None``: computed, nothing stored.
    file : str or None
        The file holding the tensor (unused: entries are keyed by the tensor's content; kept for callers).
    tensor : str
        Name of the tensor (unused in the key, likewise).
    W : (d_out, d_in) ndarray or StoredMatrix
        Hashed for the key; widened only on a miss.
    k, seed, oversample, n_iter
        As for :func:`~analysis.core.randomized_svd`; part of the key.
    norm : bool
        Also return ‖W‖_F.

    Returns
    -------
    FactoredSVD, or (FactoredSVD, float) with ``norm``
    """
    key = None
    m, n = W.shape
    if cache is not None and cache.enabled:
        key = cache.key(W, kind="randomized_svd", shape=[int(m), int(n)], k=int(k), seed=int(seed),
                        oversample=oversample, n_iter=int(n_iter),
                        work_dtype=np.dtype(work_dtype(W)).name)  # type: ignore[arg-type]  # W.dtype only
        got = cache.get(key)
        if _settings_ok(got, ("U", "S", "V", "fro"), ((m, k), (k,), (n, k), ())):
            svd = FactoredSVD(got["U"], got["S"], got["V"])
            return (svd, float(got["fro"])) if norm else svd
    Wd = as_array(W)
    svd = randomized_svd(Wd, k, seed=seed, oversample=oversample, n_iter=n_iter)
    fro = frobenius(Wd)
    if key is not None:
        cache.put(key, {"U": svd.U, "S": svd.S, "V": svd.V,  # type: ignore[union-attr]  # key set: cache given
                        "fro": np.float64(fro)})
    return (svd, fro) if norm else svd


def cached_random_projections(cache: SVDCache | None, file: str | None, tensor: str, W: np.ndarray | StoredMatrix,
                              k: int, *, n_random: int = 10, seed: int = 0) -> np.ndarray:
    """:func:`~analysis.metrics.correlation.random_projections` of ``W``, read from / written to ``cache``."""
    if cache is None or not cache.enabled:
        return random_projections(as_array(W), k, n_random=n_random, seed=seed)
    key = cache.key(W, kind="random_projections", shape=[int(s) for s in W.shape], k=int(k),
                    n_random=int(n_random), seed=int(seed),
                    work_dtype=np.dtype(work_dtype(W)).name)  # type: ignore[arg-type]  # W.dtype only
    got = cache.get(key)
    if _settings_ok(got, ("P",), ((int(n_random),),)):
        return got["P"]
    P = random_projections(as_array(W), k, n_random=n_random, seed=seed)
    cache.put(key, {"P": P})
    return P


def cached_full_basis(cache: SVDCache | None, file: str | None, tensor: str, W: np.ndarray | StoredMatrix, *,
                      side: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """:func:`~analysis.core.bases.full_basis` of ``W``, read from / written to ``cache``.

    Returns
    -------
    X : (d, n) ndarray of float64
    S : (n,) ndarray of float64
    """
    m, n = W.shape
    d, q = (m if side == "left" else n), min(m, n)
    key = None
    if cache is not None and cache.enabled:
        key = cache.key(W, kind="full_basis", side=side, shape=[int(m), int(n)], method="gram_or_svd")
        got = cache.get(key)
        if _settings_ok(got, ("X", "S"), ((d, q), (q,))):
            return got["X"], got["S"]
    X, S = full_basis(W, side=side)
    if key is not None:
        cache.put(key, {"X": X, "S": S})  # type: ignore[union-attr]  # key set: cache given
    return X, S


def cached_draws(draw: Callable[[int, int], np.ndarray], *, kind: str, data: np.ndarray | None = None,
                 cache: SVDCache | None = None, **settings: Any) -> Callable[[int, int], np.ndarray]:
    """``draw(n, seed)`` of a seeded null, read from / written to the cache: the same draws, computed once.

    Parameters
    ----------
    draw : callable
        ``draw(n, seed) -> (n,) ndarray``, deterministic in its arguments.
    kind : str
        What is drawn (part of the key).
    data : ndarray, optional
        The array the draws depend on (W's singular values …), keyed by its content.
    cache : SVDCache, optional
        Default: the user's cache (:func:`cache_dir`); a disabled cache computes every time.
    **settings
        Everything else the draws depend on (shapes, k …), JSON-able.

    Returns
    -------
    callable
        ``draw(n, seed)`` with the same results.
    """
    cache = SVDCache() if cache is None else cache
    base = cache.content(np.asarray(data, dtype=np.float64)) if data is not None else None

    def cached(n, seed):
        if not cache.enabled:
            return draw(n, seed)
        key = {"version": _VERSION, "kind": str(kind), "content": base, "n": int(n), "seed": int(seed),
               **{k: settings[k] for k in sorted(settings)}}
        got = cache.get(key)
        if got is not None and got.get("draws") is not None and got["draws"].shape == (int(n),):
            return got["draws"]
        out = np.asarray(draw(n, seed), dtype=np.float64)
        cache.put(key, {"draws": out})
        return out

    return cached


@contextlib.contextmanager
def cached_stability_nulls(cache: SVDCache | None = None) -> Iterator[None]:
    """Inside the block, the prefix-stability nulls (:func:`~analysis.metrics.stability.random_max_cos2`, about a
    second each at k = 64) are read from / written to the cache (:func:`~analysis.metrics.stability.null_store`).

    Parameters
    ----------
    cache : SVDCache, optional
        Default: the user's cache (:func:`cache_dir`); a disabled cache draws every time.
    """
    cache = SVDCache() if cache is None else cache
    if not cache.enabled:
        yield
        return

    def key_of(key):
        kind, d, k, trials, seed = key
        return {"version": _VERSION, "kind": str(kind), "d": int(d), "k": int(k), "trials": int(trials),
                "seed": int(seed)}

    def get(key):
        got = cache.get(key_of(key))
        k = int(key[2])
        if got is None or any(got.get(n) is None or got[n].shape != (k,) for n in ("mean", "sd")):
            return None
        return got["mean"], got["sd"]

    def put(key, value):
        cache.put(key_of(key), {"mean": np.asarray(value[0], dtype=np.float64),
                                "sd": np.asarray(value[1], dtype=np.float64)})

    with null_store(get, put):
        yield
