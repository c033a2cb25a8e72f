"""N × N similarity and Frobenius cosine over a collection of adapters, as Dask tasks.

The work is a Dask graph, so one call runs on the local machine (Dask's threaded scheduler, no cluster
to start) or on an existing Dask cluster (``client=`` a ``distributed.Client`` or a scheduler address):

1. one task per adapter reads it and summarises every module (shape, stored rank, numerical rank,
   ‖ΔW‖²); the client checks that modules of one name have one shape;
2. one task per (group of modules, tile of adapters) reads those modules of those adapters (lazily:
   one module at a time from a PEFT safetensors file) and stacks, per module, their factors
   (scale folded into ``lora_B``) and their top-k singular bases on the chosen side;
3. one task per (group, tile I, tile J ≤ I) multiplies the stacks: the Gram block
   (:func:`~analysis.metrics.cosine.gram_blocks`, O((d_out + d_in) R_I R_J)) and the φ(k, k) block
   (:func:`~analysis.metrics.cosine.phi_blocks`), summed over the group's modules.

No task holds more than two tiles of one module group; no d_out × d_in matrix is formed. Workers read
adapters from paths they can see (a shared filesystem; local paths are made absolute) or from an
fsspec URL (``s3://…``, ``memory://…``), which the worker copies to a temporary folder first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from analysis.core.adapter import Adapter, natural_key, select_modules, split_name
from analysis.errors import AdapterError
from analysis.metrics.cosine import gram_blocks, phi_blocks

__all__ = ["COLLECTION_SIDES", "CollectionResult", "collection_similarity", "compute", "open_source",
           "source_label", "seriation_order", "summarise_adapter"]

COLLECTION_SIDES = ("input", "output", "A", "B")
#: Target bytes of one stack task's output (factors of a tile of adapters for a group of modules).
_STACK_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------------------------- execution

def compute(tasks, *, client=None):
    """Compute a list of Dask delayed objects locally or on a cluster.

    Parameters
    ----------
    tasks : list of dask.delayed.Delayed
    client : distributed.Client or str, optional
        None: Dask's local threaded scheduler, one thread per core this process may use
        (:func:`~analysis.core.threads.available_cores`), BLAS pinned to one thread in each. A ``Client``:
        that cluster (its workers are told to keep freed memory for their next tasks:
        :func:`~analysis.core.allocator.reuse_freed_memory`).
        A string: the address of a running scheduler (``tcp://host:8786``); a client is opened and closed.

    Returns
    -------
    list
        The results, in order.
    """
    import dask

    if client is None:
        from analysis.core.threads import available_cores, blas_threads

        with blas_threads(1):
            return list(dask.compute(*tasks, scheduler="threads", num_workers=available_cores()))
    if isinstance(client, (str, os.PathLike)):
        from distributed import Client

        with Client(str(client), timeout="30s") as c:
            return _on_client(c, tasks)
    return _on_client(client, tasks)


def _on_client(client, tasks):
    from analysis.core.allocator import reuse_freed_memory

    client.run(reuse_freed_memory)  # the workers keep freed memory for the next task's arrays (idempotent)
    return list(client.gather(client.compute(list(tasks))))


def source_label(src):
    """The name of an adapter source as the user gave it (a path, a URL, or an Adapter's path)."""
    if isinstance(src, Adapter):
        return str(src.path)
    return os.fspath(src) if isinstance(src, os.PathLike) else str(src)


def _task_source(src):
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


def open_source(src, *, alpha=None):
    """Open one adapter source in a task: an Adapter, a local path (read lazily where the format allows)
    or an fsspec URL (copied to a temporary folder, read eagerly, the copy removed on exit).

    Returns
    -------
    context manager yielding an Adapter
    """
    from analysis.io import load_adapter

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
_OPENED = OrderedDict()
_OPENED_MAX = 512
_OPENED_LOCK = threading.Lock()


def _lazy_cached(path, alpha):
    from analysis.io import load_adapter
    from analysis.io.lazy import LazyAdapter

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


def _names(ad, modules, layers):
    return select_modules(list(ad.expanded()), modules=modules, layers=layers)


def summarise_adapter(src, *, alpha=None, modules=None, layers=None):
    """Read one adapter and summarise each module: the first task of every collection graph.

    Returns
    -------
    dict
        ``{"path": str, "modules": {name: {"shape": (d_out, d_in), "r": int, "rank": int, "norm2": float}}}``.
    """
    with open_source(src, alpha=alpha) as ad:
        mods = ad.expanded()
        out = {}
        for n in _names(ad, modules, layers):
            lr = mods[n]
            out[n] = {"shape": tuple(int(x) for x in lr.shape), "r": int(lr.r), "rank": int(lr.rank),
                      "norm2": float(lr.norm()) ** 2}
            lr.clear_cache()
        if not out:
            raise AdapterError("no LoRA module left after the --modules / --layers filters", path=source_label(src))
        return {"path": str(ad.path), "modules": out}


@dataclass
class _Stack:
    """One module's updates from one tile of adapters, stacked (only the adapters that have the module)."""

    idx: np.ndarray  # (t,) positions in the tile
    B: np.ndarray  # (d_out, R): B_a side by side, in the factors' own dtype (float32 as read: half the bytes)
    A: np.ndarray  # (R, d_in)
    off: np.ndarray  # (t + 1,)
    scale: np.ndarray  # (t,) float64 scales s_a
    U: np.ndarray  # (d, K): top-k bases side by side
    kk: np.ndarray  # (t,)
    norm2: np.ndarray  # (t,)


def _top_basis(lr, side, k):
    """(d, min(k, rank)) top singular basis on ``side`` (column signs free: φ does not see them), formed
    from :meth:`LowRank.basis_parts` for the k columns only."""
    Q, Y = lr.basis_parts(side)
    if Y is None:
        return Q[:, :k]
    return Q @ Y[:, :k]  # (d, r) @ (r, k)


def _stack(srcs, names, *, alpha, k, side, modules, layers):
    """Task: for each module in ``names``, the stacked factors and top-k bases of the adapters in ``srcs``."""
    per = {n: [] for n in names}
    for t, src in enumerate(srcs):
        with open_source(src, alpha=alpha) as ad:
            mods = ad.expanded()
            for n in names:
                if n not in mods:
                    continue
                lr = mods[n]
                if lr.scale is None:
                    lr.norm()  # raises MissingAlphaError, naming the file and key
                U = _top_basis(lr, side, k) if not lr.is_zero else None
                per[n].append((t, lr.lora_B, lr.lora_A, lr.scale, U, float(lr.norm()) ** 2))
                lr.clear_cache()
    out = {}
    for n, items in per.items():
        if not items:
            continue
        d_out, d_in = items[0][1].shape[0], items[0][2].shape[1]
        d = d_in if side in ("input", "A") else d_out
        ranks = [B.shape[1] for _, B, _, _, _, _ in items]
        ks = [0 if U is None else U.shape[1] for *_, U, _ in items]
        off = np.concatenate([[0], np.cumsum(ranks)])
        koff = np.concatenate([[0], np.cumsum(ks)])
        # the factors as read (float32 for the usual files; float64 kept as float64): exact, and half the
        # bytes to hold and to send between workers; the block task widens them to float64
        dt = np.result_type(*[B.dtype for _, B, *_ in items], *[A.dtype for _, _, A, *_ in items])
        Bs = np.empty((d_out, off[-1]), dtype=dt)  # (d_out, R): B_a side by side
        As = np.empty((off[-1], d_in), dtype=dt)  # (R, d_in)
        Us = np.empty((d, koff[-1]))  # (d, K)
        for j, (_, B, A, s, U, _) in enumerate(items):
            Bs[:, off[j]:off[j + 1]] = B
            As[off[j]:off[j + 1]] = A
            if U is not None:
                Us[:, koff[j]:koff[j + 1]] = U
        out[n] = _Stack(np.asarray([it[0] for it in items]), Bs, As, off,
                        np.asarray([it[3] for it in items], dtype=np.float64), Us, np.asarray(ks),
                        np.asarray([it[5] for it in items]))
    return out


def _block(si, sj, ti, tj, names, keep):
    """Task: Gram and φ(k, k) blocks between two tiles, per module, summed over the group's modules."""
    inner = np.zeros((ti, tj))
    na = np.zeros((ti, tj))
    nb = np.zeros((ti, tj))
    phis = np.zeros((ti, tj))
    nphi = np.zeros((ti, tj), dtype=np.int64)
    shared = np.zeros((ti, tj), dtype=np.int64)
    per = {}
    for n in names:
        a, b = si.get(n), sj.get(n)
        if a is None or b is None:
            continue
        Ba, Aa = a.B.astype(np.float64), a.A.astype(np.float64)  # exact widening of the stored factors
        Bb, Ab = (Ba, Aa) if b is a else (b.B.astype(np.float64), b.A.astype(np.float64))
        G = gram_blocks(Ba, Aa, a.off, Bb, Ab, b.off)  # (t_a, t_b), scale 1
        G *= np.outer(a.scale, b.scale)  # ⟨s_a B_a A_a, s_b B_b A_b⟩ = s_a s_b ⟨B_a A_a, B_b A_b⟩
        P = phi_blocks(a.U, a.kk, b.U, b.kk)  # (t_a, t_b)
        ix = np.ix_(a.idx, b.idx)
        inner[ix] += G
        na[ix] += a.norm2[:, None]
        nb[ix] += b.norm2[None, :]
        ok = ~np.isnan(P)
        phis[ix] += np.where(ok, P, 0.0)
        nphi[ix] += ok
        shared[ix] += 1
        if keep:
            with np.errstate(invalid="ignore", divide="ignore"):
                C = np.clip(G / np.sqrt(np.outer(a.norm2, b.norm2)), -1.0, 1.0)
            C[(a.norm2 == 0)[:, None] | (b.norm2 == 0)[None, :]] = np.nan
            per[n] = (a.idx, b.idx, P, C)
    return {"inner": inner, "na": na, "nb": nb, "phi": phis, "nphi": nphi, "shared": shared, "modules": per}


# ---------------------------------------------------------------------------------------------- result

@dataclass(frozen=True, eq=False)
class CollectionResult:
    """Similarity and cosine matrices of a collection of adapters.

    Attributes
    ----------
    labels : tuple of str
        The adapters as given (paths or URLs).
    similarity : (N, N) ndarray
        Mean over shared modules of φ(k, k) between the top-k singular directions (k capped by both
        ranks); NaN where no shared module has two non-zero updates. Diagonal 1.
    cosine : (N, N) ndarray
        Pooled Frobenius cosine: Σ_m ⟨ΔWa, ΔWb⟩ / √(Σ_m ‖ΔWa‖² · Σ_m ‖ΔWb‖²) over shared modules.
    shared : (N, N) int ndarray
        Number of modules each pair shares.
    module_names : tuple of str
        Every module of the collection (natural order).
    module_similarity, module_cosine : (M, N, N) ndarray or None
        Per module (NaN where an adapter lacks the module or its update is zero); None with
        ``keep_modules=False``.
    k : int
    side : str
    zero : tuple of (str, str)
        (adapter, module) pairs whose update is exactly zero (reported, never turned into a similarity).
    only_some : dict
        module -> labels of the adapters that have it, for modules not in every adapter.
    """

    labels: tuple
    similarity: np.ndarray
    cosine: np.ndarray
    shared: np.ndarray
    module_names: tuple
    module_similarity: np.ndarray | None
    module_cosine: np.ndarray | None
    k: int
    side: str
    zero: tuple = ()
    only_some: dict = field(default_factory=dict)

    def spread(self, kind="similarity"):
        """(N, N) standard deviation over modules of the per-module matrices (NaN-aware)."""
        arr = self._modules(kind)
        with np.errstate(invalid="ignore"), _quiet():
            return np.nanstd(arr, axis=0)

    def _modules(self, kind):
        if kind not in ("similarity", "cosine"):
            raise ValueError(f"kind must be 'similarity' or 'cosine', got {kind!r}")
        arr = self.module_similarity if kind == "similarity" else self.module_cosine
        if arr is None:
            raise ValueError("per-module matrices were not kept: call with keep_modules=True")
        return arr

    def order(self, kind="similarity"):
        """Seriation of the adapters (hierarchical clustering, optimal leaf order) on ``kind``."""
        return seriation_order(self.similarity if kind == "similarity" else self.cosine)

    def to_dict(self):
        """``{"adapters", "k", "side", "similarity", "cosine", "shared", "modules": {name: {...}}, "zero"}``."""
        d = {"adapters": list(self.labels), "k": self.k, "side": self.side,
             "similarity": self.similarity, "cosine": self.cosine, "shared": self.shared}
        if self.module_similarity is not None:
            d["modules"] = {n: {"similarity": self.module_similarity[m], "cosine": self.module_cosine[m]}
                            for m, n in enumerate(self.module_names)}
        d["zero"] = [{"adapter": a, "module": m} for a, m in self.zero]
        d["only_some"] = {m: list(v) for m, v in self.only_some.items()}
        return d

    def to_frame(self):
        """Tidy DataFrame, one row per pair a ≤ b: the pooled values (module ``"all"``) and, when kept,
        one row per shared module: ``a, b, module, layer, similarity, cosine``."""
        import pandas as pd

        n = len(self.labels)
        ia, ib = np.triu_indices(n)
        rows = {"a": [self.labels[i] for i in ia], "b": [self.labels[j] for j in ib], "module": ["all"] * len(ia),
                "layer": [None] * len(ia), "similarity": self.similarity[ia, ib], "cosine": self.cosine[ia, ib]}
        frames = [pd.DataFrame(rows)]
        if self.module_similarity is not None:
            for m, name in enumerate(self.module_names):
                s, c = self.module_similarity[m][ia, ib], self.module_cosine[m][ia, ib]
                keep = ~(np.isnan(s) & np.isnan(c))
                frames.append(pd.DataFrame({"a": [self.labels[i] for i in ia[keep]],
                                            "b": [self.labels[j] for j in ib[keep]], "module": name,
                                            "layer": split_name(name)[0], "similarity": s[keep],
                                            "cosine": c[keep]}))
        return pd.concat(frames, ignore_index=True)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def seriation_order(matrix):
    """An order of the rows that puts similar items next to each other.

    Average-linkage clustering on the distance 1 − M (M symmetrised, NaN counted as no similarity),
    leaves in optimal order (Bar-Joseph et al., 2001).

    Parameters
    ----------
    matrix : (N, N) array_like
        A similarity in [-1, 1] or [0, 1].

    Returns
    -------
    (N,) int ndarray
    """
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    M = np.asarray(matrix, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {M.shape}")
    n = M.shape[0]
    if n < 3:
        return np.arange(n)
    M = np.nan_to_num((M + M.T) / 2, nan=0.0)
    D = np.clip(1.0 - M, 0.0, None)
    np.fill_diagonal(D, 0.0)
    y = squareform(D, checks=False)
    Z = linkage(y, method="average")
    return leaves_list(optimal_leaf_ordering(Z, y))


# ---------------------------------------------------------------------------------------------- driver

def _check_shapes(metas, labels):
    shapes, owner = {}, {}
    for lab, meta in zip(labels, metas):
        for n, m in meta["modules"].items():
            if n not in shapes:
                shapes[n], owner[n] = m["shape"], lab
            elif shapes[n] != m["shape"]:
                raise AdapterError(f"expected ΔW of shape {shapes[n]} as in {owner[n]}, got {m['shape']}: "
                                   "the adapters are not for one base model", path=lab, key=n)
    return shapes


def _groups(names, shapes, rmax, tile, limit=_STACK_BYTES):
    """Module groups sized so that one stack (a tile of adapters, a group of modules) is about ``limit`` bytes."""
    out, cur, size = [], [], 0
    for n in names:
        b = tile * sum(shapes[n]) * rmax.get(n, 1) * 8
        if cur and size + b > limit:
            out.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += b
    if cur:
        out.append(cur)
    return out


def collection_similarity(adapters, *, k=1, side="input", alpha=None, modules=None, layers=None, client=None,
                          tile=None, keep_modules=True, group_bytes=_STACK_BYTES):
    """Similarity and Frobenius cosine matrices of every pair in a collection, per module and pooled.

    Parameters
    ----------
    adapters : sequence of str, os.PathLike or Adapter
        Two or more adapters of one base model (paths as the workers see them, fsspec URLs, or Adapters).
    k : int
        Prefix of the singular directions compared (φ(k, k)); capped per pair by both ranks.
    side : {"input", "output", "A", "B"}
        Basis compared: right / left singular vectors of ΔW, or the paper's bases of lora_A / lora_B.
    alpha : float, optional
        Scale numerator for formats that do not store it (loralib); needed for the cosine.
    modules, layers
        Filters, as for :func:`analysis.core.adapter.select_modules`.
    client : distributed.Client or str, optional
        Run on this Dask cluster (or scheduler address); default: locally, Dask's threaded scheduler.
    tile : int, optional
        Adapters per block (default min(N, 64)): a block task multiplies two tiles' stacked factors.
    group_bytes : int
        Target size of one stack task's output (float64 factors of a tile for a group of modules): it sets
        how many modules a task takes, and with ``tile`` the memory a task needs (default 64 MiB).
    keep_modules : bool
        Keep the (M, N, N) per-module matrices (turn off for very large N: only pooled matrices).

    Returns
    -------
    CollectionResult
    """
    import dask

    srcs = list(adapters)
    if len(srcs) < 2:
        raise ValueError(f"expected at least two adapters, got {len(srcs)}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if side not in COLLECTION_SIDES:
        raise ValueError(f"side must be one of {COLLECTION_SIDES}, got {side!r}")
    labels = tuple(source_label(s) for s in srcs)
    tsrc = [_task_source(s) for s in srcs]
    N = len(srcs)
    tile = min(N, 64) if tile is None else int(tile)
    if tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile}")
    summ = dask.delayed(summarise_adapter, pure=True)
    metas = compute([summ(s, alpha=alpha, modules=modules, layers=layers) for s in tsrc], client=client)
    shapes = _check_shapes(metas, labels)
    names = sorted(shapes, key=natural_key)
    rmax = {}
    for meta in metas:
        for n, m in meta["modules"].items():
            rmax[n] = max(rmax.get(n, 1), m["r"])
    zero = tuple((lab, n) for lab, meta in zip(labels, metas) for n, m in meta["modules"].items() if m["rank"] == 0)
    only_some = {n: [lab for lab, meta in zip(labels, metas) if n in meta["modules"]] for n in names
                 if sum(n in meta["modules"] for meta in metas) < N}
    tiles = [list(range(i, min(i + tile, N))) for i in range(0, N, tile)]
    groups = _groups(names, shapes, rmax, tile, int(group_bytes))
    stack = dask.delayed(_stack, pure=True)
    block = dask.delayed(_block, pure=True)
    tasks, where = [], []
    for g in groups:
        st = [stack([tsrc[i] for i in t], g, alpha=alpha, k=k, side=side, modules=modules, layers=layers)
              for t in tiles]
        for I in range(len(tiles)):
            for J in range(I + 1):
                tasks.append(block(st[I], st[J], len(tiles[I]), len(tiles[J]), g, keep_modules))
                where.append((I, J))
    results = compute(tasks, client=client)
    acc = {key: np.zeros((N, N)) for key in ("inner", "na", "nb", "phi", "nphi", "shared")}
    msim = np.full((len(names), N, N), np.nan) if keep_modules else None
    mcos = np.full((len(names), N, N), np.nan) if keep_modules else None
    pos = {n: m for m, n in enumerate(names)}
    for (I, J), res in zip(where, results):
        ri, rj = np.asarray(tiles[I]), np.asarray(tiles[J])
        for key in acc:
            acc[key][np.ix_(ri, rj)] += res[key]  # summed over the module groups
            if I != J:
                tr = res[key].T if key not in ("na", "nb") else res["nb" if key == "na" else "na"].T
                acc[key][np.ix_(rj, ri)] += tr
        if keep_modules:
            for n, (ia, ib, P, C) in res["modules"].items():
                m = pos[n]
                msim[m][np.ix_(ri[ia], rj[ib])] = P
                mcos[m][np.ix_(ri[ia], rj[ib])] = C
                if I != J:
                    msim[m][np.ix_(rj[ib], ri[ia])] = P.T
                    mcos[m][np.ix_(rj[ib], ri[ia])] = C.T
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(acc["nphi"] > 0, acc["phi"] / acc["nphi"], np.nan)
        den = np.sqrt(acc["na"] * acc["nb"])
        cos = np.where(den > 0, acc["inner"] / den, np.nan)
    return CollectionResult(labels, np.clip(sim, 0.0, 1.0), np.clip(cos, -1.0, 1.0), acc["shared"].astype(np.int64),
                            tuple(names), msim, mcos, k, side, zero, only_some)

