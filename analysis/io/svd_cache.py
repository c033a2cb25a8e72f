"""A persistent cache of base weights' singular triplets, shared by every run against the same base.

The base-weight analyses (Table 7, Fig. 8, intruders) are compute-bound: the randomized SVD of a
7B-shaped W costs about 1,300 flop per byte read. The result only depends on the tensor and on the
settings, so it is kept on disk, keyed by

- the identity of the file holding the tensor: its size, its modification time (ns) and a SHA-256 of its
  header (the safetensors JSON header; the first MiB of any other file), so a file rewritten in place
  misses;
- the tensor's name (and the module it is sliced for), its shape in ΔW's orientation;
- what was computed (``kind``: a top-k randomized SVD, or one side's full basis), ``k`` and the settings
  that fix the tolerance (oversampling, iterations, seed, precision).

Entries live in the user's cache folder: ``$LORA_SUBSPACE_CACHE``, else
``$XDG_CACHE_HOME/lora-subspace-analysis``, else ``~/.cache/lora-subspace-analysis``. Each is one ``.npz``
file named by the SHA-256 of its key, written to a temporary file in the same folder and renamed into
place (atomic: two processes filling the same entry at once each write a whole file, the last rename
wins, a reader never sees half a file). An entry that does not load, whose stored key differs, or whose
arrays are not finite is ignored (a miss) and rewritten. The folder is bounded (default 2 GiB,
``$LORA_SUBSPACE_CACHE_MAX_BYTES``): after a write the least recently used entries are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile

import numpy as np

__all__ = ["SVDCache", "cache_dir", "file_identity", "tensor_file", "cached_topk_svd", "cached_full_basis",
           "cached_random_projections", "full_basis",
           "DEFAULT_MAX_BYTES"]

DEFAULT_MAX_BYTES = 2 * 2**30
_SUFFIX = ".npz"
_VERSION = 3


def cache_dir():
    """The cache folder: ``$LORA_SUBSPACE_CACHE``, ``$XDG_CACHE_HOME/lora-subspace-analysis`` or
    ``~/.cache/lora-subspace-analysis`` (not created here)."""
    explicit = os.environ.get("LORA_SUBSPACE_CACHE")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "lora-subspace-analysis")


def _header_bytes(fh, size):
    head = fh.read(8)
    if len(head) == 8 and size >= 8:
        (n,) = struct.unpack("<Q", head)
        if 0 < n <= min(size - 8, 100 * 2**20):  # a safetensors header
            return head + fh.read(n)
    return head + fh.read(2**20 - len(head))


def file_identity(path):
    """``{"size", "mtime_ns", "header_sha256"}`` of a file (its header: safetensors JSON, or the first MiB).

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


def tensor_file(base, tensor):
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


class SVDCache:
    """Singular triplets of base weights on disk, keyed by file identity, tensor and settings.

    Parameters
    ----------
    folder : str, optional
        Default :func:`cache_dir`.
    max_bytes : int, optional
        Size bound of the folder (default ``$LORA_SUBSPACE_CACHE_MAX_BYTES`` or 2 GiB).
    enabled : bool
        ``False``: every ``get`` misses and ``put`` writes nothing (``--no-cache``).

    Attributes
    ----------
    hits, misses, writes : int
        Counters of this instance.
    """

    def __init__(self, folder=None, *, max_bytes=None, enabled=True):
        self.folder = os.fspath(folder) if folder is not None else cache_dir()
        if max_bytes is None:
            max_bytes = int(os.environ.get("LORA_SUBSPACE_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.enabled = bool(enabled)
        self.hits = self.misses = self.writes = 0
        self._ids = {}  # path -> file identity (computed once per file and instance)

    def identity(self, path):
        """:func:`file_identity` of ``path``, memoised for this instance."""
        path = os.fspath(path)
        if path not in self._ids:
            self._ids[path] = file_identity(path)
        return self._ids[path]

    def key(self, path, tensor, **settings):
        """The key of one entry: the file's identity, the tensor name and the settings (JSON-able)."""
        return {"version": _VERSION, "file": self.identity(path), "tensor": str(tensor),
                **{k: settings[k] for k in sorted(settings)}}

    def _path(self, key):
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
        return os.path.join(self.folder, hashlib.sha256(text.encode()).hexdigest() + _SUFFIX), text

    def get(self, key):
        """The arrays stored under ``key`` (a dict ``name -> ndarray``), or ``None`` on a miss.

        A file that does not load, holds another key or non-finite values is a miss (and is rewritten by
        the next :meth:`put`).
        """
        if not self.enabled:
            return None
        path, text = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["__key__"]) != text:
                    raise ValueError("key mismatch")
                out = {k: np.array(z[k]) for k in z.files if k != "__key__"}
            if not all(np.isfinite(v).all() for v in out.values() if v.dtype.kind == "f"):
                raise ValueError("non-finite values")
        except Exception:  # missing, truncated, corrupt, another key: a miss
            self.misses += 1
            return None
        try:
            os.utime(path)  # least recently used goes first
        except OSError:
            pass
        self.hits += 1
        return out

    def put(self, key, arrays):
        """Store ``arrays`` (``name -> ndarray``) under ``key``: atomically, then trim the folder.

        Failures to write (read-only or full disk) are ignored: the cache only saves time.
        """
        if not self.enabled:
            return False
        path, text = self._path(key)
        tmp = None
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=_SUFFIX)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, __key__=np.array(text), **{k: np.asarray(v) for k, v in arrays.items()})
            os.replace(tmp, path)
            tmp = None
        except OSError:
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.writes += 1
        self._trim(keep=path)
        return True

    def _trim(self, keep=None):
        try:
            entries = []
            with os.scandir(self.folder) as it:
                for e in it:
                    if e.name.endswith(_SUFFIX) and not e.name.startswith(".tmp-"):
                        st = e.stat()
                        entries.append((st.st_mtime_ns, st.st_size, e.path))
        except OSError:
            return
        total = sum(s for _, s, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                os.unlink(p)
            except OSError:
                pass
            total -= size

    def clear(self):
        """Remove every entry of the folder."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for n in names:
            if n.endswith(_SUFFIX):
                try:
                    os.unlink(os.path.join(self.folder, n))
                except OSError:
                    pass

    def __repr__(self):
        return (f"SVDCache(folder={self.folder!r}, max_bytes={self.max_bytes}, enabled={self.enabled}, "
                f"hits={self.hits}, misses={self.misses}, writes={self.writes})")


def _settings_ok(got, names, shapes):
    return got is not None and all(n in got and got[n].shape == s for n, s in zip(names, shapes))


def cached_topk_svd(cache, file, tensor, W, k, *, seed=0, oversample=None, n_iter=8, norm=False):
    """:func:`~analysis.core.randomized_svd` of ``W`` (top ``k``), read from / written to ``cache``.

    The entry also holds ‖W‖_F (float64), so that with the cache warm W is needed in one product only.

    Parameters
    ----------
    cache : SVDCache or None
        ``None`` (or ``file`` ``None``): computed, nothing stored.
    file : str or None
        The file holding the tensor (its identity is part of the key).
    tensor : str
        Name of the tensor (and module) in the key.
    W : (d_out, d_in) ndarray or StoredMatrix
        Widened only on a miss.
    k, seed, oversample, n_iter
        As for :func:`~analysis.core.randomized_svd`; part of the key.
    norm : bool
        Also return ‖W‖_F.

    Returns
    -------
    FactoredSVD, or (FactoredSVD, float) with ``norm``
    """
    from analysis.core.lowrank import FactoredSVD
    from analysis.core.randomized import randomized_svd, work_dtype
    from analysis.metrics.correlation import as_array, frobenius

    key = None
    m, n = W.shape
    if cache is not None and cache.enabled and file is not None:
        key = cache.key(file, tensor, kind="randomized_svd", shape=[int(m), int(n)], k=int(k), seed=int(seed),
                        oversample=oversample, n_iter=int(n_iter), work_dtype=np.dtype(work_dtype(W)).name)
        got = cache.get(key)
        if _settings_ok(got, ("U", "S", "V", "fro"), ((m, k), (k,), (n, k), ())):
            svd = FactoredSVD(got["U"], got["S"], got["V"])
            return (svd, float(got["fro"])) if norm else svd
    Wd = as_array(W)
    svd = randomized_svd(Wd, k, seed=seed, oversample=oversample, n_iter=n_iter)
    fro = frobenius(Wd)
    if key is not None:
        cache.put(key, {"U": svd.U, "S": svd.S, "V": svd.V, "fro": np.float64(fro)})
    return (svd, fro) if norm else svd


def cached_random_projections(cache, file, tensor, W, k, *, n_random=10, seed=0):
    """:func:`~analysis.metrics.correlation.random_projections` of ``W``, read from / written to ``cache``."""
    from analysis.core.randomized import work_dtype
    from analysis.metrics.correlation import as_array, random_projections

    if cache is None or not cache.enabled or file is None:
        return random_projections(as_array(W), k, n_random=n_random, seed=seed)
    key = cache.key(file, tensor, kind="random_projections", shape=[int(s) for s in W.shape], k=int(k),
                    n_random=int(n_random), seed=int(seed), work_dtype=np.dtype(work_dtype(W)).name)
    got = cache.get(key)
    if _settings_ok(got, ("P",), ((int(n_random),),)):
        return got["P"]
    P = random_projections(as_array(W), k, n_random=n_random, seed=seed)
    cache.put(key, {"P": P})
    return P


def full_basis(W, *, side="left"):
    """All singular vectors of ``W`` on one side, and its singular values, float64.

    When ``side`` is W's smaller (or equal) dimension d, from the symmetric eigendecomposition of the d × d
    Gram matrix (LAPACK ``syevd``, about 2.5× faster than the SVD here); its vectors are exact to
    ~eps · κ² (κ = σ₁ / σ_d), so when κ > 1e4 the SVD is used instead (a condition estimate from the Gram
    matrix's Cholesky factor skips the eigendecomposition when κ is clearly past that). Otherwise LAPACK's
    thin SVD.

    Returns
    -------
    X : (d, n) ndarray of float64
        n = min(d_out, d_in); left (d = d_out) or right (d = d_in) singular vectors, by decreasing σ.
    S : (n,) ndarray of float64
    """
    from scipy.linalg import LinAlgError, cho_factor, lapack

    Wd = np.asarray(W, dtype=np.float64)
    m, n = Wd.shape
    if (side == "left" and m <= n) or (side == "right" and n <= m):
        G = Wd @ Wd.T if side == "left" else Wd.T @ Wd  # (d, d)
        try:  # κ(G) = κ(W)² estimated from a Cholesky factor (d³/3 flops): past 1e8, straight to the SVD
            c, _ = cho_factor(G, check_finite=False)
            rcond, info = lapack.dpocon(c, np.abs(G).sum(axis=0).max())
            well = info == 0 and rcond >= 1e-8 / G.shape[0]
        except LinAlgError:
            well = False
        if well:
            lam, X = np.linalg.eigh(G)  # ascending
            lam, X = lam[::-1], np.ascontiguousarray(X[:, ::-1])
            S = np.sqrt(np.clip(lam, 0.0, None))
            if S[0] > 0 and S[-1] >= 1e-4 * S[0]:
                return X, S
    U, S, Vt = np.linalg.svd(Wd, full_matrices=False)  # (m, q), (q,), (q, n)
    return np.ascontiguousarray(U if side == "left" else Vt.T), S


def cached_full_basis(cache, file, tensor, W, *, side="left"):
    """:func:`full_basis` of ``W``, read from / written to ``cache``.

    Returns
    -------
    X : (d, n) ndarray of float64
    S : (n,) ndarray of float64
    """
    m, n = W.shape
    d, q = (m if side == "left" else n), min(m, n)
    key = None
    if cache is not None and cache.enabled and file is not None:
        key = cache.key(file, tensor, kind="full_basis", side=side, shape=[int(m), int(n)], method="gram_or_svd")
        got = cache.get(key)
        if _settings_ok(got, ("X", "S"), ((d, q), (q,))):
            return got["X"], got["S"]
    X, S = full_basis(W, side=side)
    if key is not None:
        cache.put(key, {"X": X, "S": S})
    return X, S
