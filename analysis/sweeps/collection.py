"""N × N similarity and Frobenius cosine over a collection of adapters, as Dask tasks.

The work is a Dask graph, so one call runs on the local machine (Dask's threaded scheduler, no cluster
to start) or on an existing Dask cluster (``client=`` a ``distributed.Client`` or a scheduler address):

0. one task per adapter reads its module names and ΔW shapes (a PEFT safetensors file: its header only)
   or says why the path is no adapter; the client reports bad paths at once (or skips paths that are no
   adapter, ``not_adapters="skip"``) and groups the adapters into models by their shapes
   (:mod:`analysis.sweeps.models`): adapters of different models are never compared with each other;
1. one task per adapter reads it and summarises every module (shape, stored rank, numerical rank,
   ‖ΔW‖²);
2. per model, one task per (group of modules, tile of adapters) reads those modules of those adapters
   (lazily: one module at a time from a PEFT safetensors file) and stacks, per module, their factors
   (scale folded into ``lora_B``) and their top-k singular bases on the chosen side;
3. one task per (group, tile I, tile J ≤ I) multiplies the stacks: the Gram block
   (:func:`~analysis.metrics.cosine.gram_blocks`, O((d_out + d_in) R_I R_J)) and the φ(k, k) block
   (:func:`~analysis.metrics.cosine.phi_blocks`), summed over the group's modules.

No task holds more than two tiles of one module group; no d_out × d_in matrix is formed. Workers read
adapters from paths they can see (a shared filesystem; local paths are made absolute) or from an
fsspec URL (``s3://…``, ``memory://…``), which the worker copies to a temporary folder first.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter, natural_key, select_modules, split_name
from analysis.core.allocator import reuse_freed_memory
from analysis.core.threads import available_cores, blas_threads
from analysis.errors import AdapterError, EnvironmentFault, InputError
from analysis.metrics.cosine import gram_blocks, phi_blocks
from analysis.sweeps.driver import sweep_modules
from analysis.sweeps.models import (ModelGroup, ModelGrouping, describe_models, describe_skipped, group_by_model,
                                    header_task, screen_headers)
from analysis.sweeps.sources import open_source, source_label, task_source

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    import pandas as pd
    from dask.delayed import Delayed
    from distributed import Client
    from numpy.typing import ArrayLike

    from analysis.core.adapter import Layers

__all__ = ["COLLECTION_SIDES", "MIXED_MODELS", "NOT_ADAPTERS", "CollectionResult", "collection_similarity", "compute",
           "open_source", "probe_scheduler", "source_label", "seriation_order", "summarise_adapter",
           "SCHEDULER_SECONDS"]

COLLECTION_SIDES = ("input", "output", "A", "B")  # FACTOR_SIDES of analysis.core.sides, input first
#: ``mixed_models=``: refuse adapters of several models (``"error"``) or compare each model's adapters apart.
MIXED_MODELS = ("error", "split")
#: ``not_adapters=``: a path that is no adapter (a README caught by a glob) is an error, or skipped and listed.
NOT_ADAPTERS = ("error", "skip")
#: Target bytes of one stack task's output (factors of a tile of adapters for a group of modules).
_STACK_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------------------------- execution

def compute(tasks: Sequence[Delayed], *, client: Client | str | None = None) -> list[Any]:
    """Compute a list of Dask delayed objects locally or on a cluster.

    Parameters
    ----------
    tasks : list of dask.delayed.Delayed
    client : distributed.Client or str, optional
        None: Dask's local threaded scheduler, one thread per core this process may use
        (:func:`~analysis.core.threads.available_cores`), BLAS pinned to one thread in each. A ``Client``:
        that cluster (its workers are told to keep freed memory for their next tasks:
        :func:`~analysis.core.allocator.reuse_freed_memory`).
        A string: the address of a running scheduler (``tcp://host:8786``): it must answer as a Dask scheduler
        within :data:`SCHEDULER_SECONDS` (:func:`probe_scheduler`), then a client is opened and closed.

    Returns
    -------
    list
        The results, in order.

    Raises
    ------
    AdapterError
        The address does not answer as a Dask scheduler in time (naming ``--scheduler``).
    EnvironmentFault
        The connection to the cluster is lost during the run (the command exits with code 3).
    """
    import dask

    if client is None:
        with blas_threads(1):
            return list(dask.compute(*tasks, scheduler="threads", num_workers=available_cores()))
    if isinstance(client, (str, os.PathLike)):
        from distributed import Client

        address = str(client)
        probe_scheduler(address)
        try:
            c = Client(address, timeout=f"{SCHEDULER_SECONDS:g}s")  # it answered: the client connects now
        except (OSError, TimeoutError) as e:
            raise AdapterError(f"no Dask scheduler answered within {SCHEDULER_SECONDS:g} s "
                               f"({' '.join(str(e).split())[:160]}); check the address, or leave --scheduler out "
                               "to run locally", path=f"--scheduler {address}") from None
        with c:
            return _on_client(c, tasks, address)
    return _on_client(client, tasks, getattr(getattr(client, "scheduler", None), "address", None))


#: How long a scheduler given by address has to answer as a Dask scheduler (seconds).
SCHEDULER_SECONDS = 10.0


def probe_scheduler(address: str, *, seconds: float | None = None) -> None:
    """Check that ``address`` answers as a Dask scheduler within ``seconds`` (connection, handshake and an
    ``identity`` call, all under one deadline, in a thread of its own: the client itself waits for ever on a
    socket that accepts and never answers).

    Raises
    ------
    AdapterError
        Naming ``--scheduler ADDRESS``: nothing answered, something else answered, or not in time.
    """
    import asyncio
    import threading

    seconds = SCHEDULER_SECONDS if seconds is None else float(seconds)
    out = {}

    async def ask():
        from distributed.core import rpc

        r = rpc(address, timeout=seconds)
        try:
            return await r.identity()
        finally:
            await r.close_rpc()

    def run():
        try:
            out["identity"] = asyncio.run(asyncio.wait_for(ask(), seconds))
        except BaseException as e:  # noqa: BLE001 - reported below, in the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, name="lora-scheduler-probe", daemon=True)
    t.start()
    t.join(seconds + 2.0)
    where = f"--scheduler {address}"
    if t.is_alive() or isinstance(out.get("error"), (asyncio.TimeoutError, TimeoutError)):
        raise AdapterError(f"no Dask scheduler answered within {seconds:g} s (something accepts the connection "
                           "but does not speak Dask's protocol, or nothing is there); check the address, or leave "
                           "--scheduler out to run locally", path=where)
    if "error" in out:
        e = out["error"]
        raise AdapterError(f"no Dask scheduler there ({type(e).__name__}: {' '.join(str(e).split())[:160]}); check "
                           "the address, or leave --scheduler out to run locally", path=where)
    ident = out.get("identity")
    if not isinstance(ident, dict) or ident.get("type") != "Scheduler":
        kind = ident.get("type") if isinstance(ident, dict) else type(ident).__name__
        raise AdapterError(f"expected a Dask scheduler, got a {kind} answering there; give the scheduler's address",
                           path=where)


def _lost(e):
    """Whether ``e`` says the connection to the Dask cluster was lost (rather than a task's own error)."""
    try:
        from distributed.comm.core import CommClosedError
    except ImportError:  # pragma: no cover
        CommClosedError = ()  # noqa: N806
    import asyncio
    import concurrent.futures

    if isinstance(e, CommClosedError) or isinstance(e, (asyncio.CancelledError, concurrent.futures.CancelledError)):
        return True
    name = type(e).__name__
    return name in ("FutureCancelledError", "CancelledError", "TimeoutError", "StreamClosedError") or (
        isinstance(e, OSError) and not getattr(e, "filename", None) and ("connect" in str(e).lower()
                                                                          or "closed" in str(e).lower()))


def _on_client(client, tasks, address=None):
    try:
        client.run(reuse_freed_memory)  # the workers keep freed memory for the next task's arrays (idempotent)
        return list(client.gather(client.compute(list(tasks))))
    except (AdapterError, MemoryError):
        raise
    except BaseException as e:
        if not _lost(e) or isinstance(e, KeyboardInterrupt):
            raise
        raise EnvironmentFault(f"the Dask scheduler stopped answering during the run ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:160]})", fix="check that it and its workers are "
                               "running and rerun (nothing was written)",
                               what=f"--scheduler {address}" if address else "Dask cluster") from None


def _names(ad, modules, layers):
    return select_modules(list(ad.expanded()), modules=modules, layers=layers)


def summarise_adapter(src: str | os.PathLike[str] | Adapter, *, alpha: float | None = None,
                      modules: Sequence[str] | None = None,
                      layers: set[int] | str | Layers | None = None) -> dict[str, Any]:
    """Read one adapter and summarise each module: the first task of every collection graph.

    Returns
    -------
    dict
        ``{"path": str, "modules": {name: {"shape": (d_out, d_in), "r": int, "rank": int, "norm": float,
        "norm2": float}}}`` (``norm2`` = ``norm`` ², Inf past float64's range: the cosines use ``norm``).

    Raises
    ------
    AdapterError
        A module's ‖ΔW‖ overflows float64 (naming the adapter and the module).
    """
    def one(n, lr):
        norm = float(lr.norm())
        if not np.isfinite(norm):
            raise AdapterError("expected an update whose norm float64 can hold, got ‖ΔW‖ = scale × ‖B A‖ beyond "
                               "1.8e308 (factors or scale far outside any trained adapter)",
                               path=source_label(src), key=n)
        with np.errstate(over="ignore"):
            return n, {"shape": tuple(int(x) for x in lr.shape), "r": int(lr.r), "rank": int(lr.rank),
                       "norm": norm, "norm2": norm * norm}

    with open_source(src, alpha=alpha) as ad:
        # module after module in this task's thread, BLAS threads as the task found them
        out = dict(sweep_modules(one, _names(ad, modules, layers), modules=(ad.expanded(),), jobs=1,
                                 alone_threads=None))
        if not out:
            raise AdapterError("no LoRA module left after the --modules / --layers filters", path=source_label(src))
        return {"path": str(ad.path), "modules": out}


@dataclass
class _Stack:
    """One module's updates from one tile of adapters, stacked (only the adapters that have the module).

    Every magnitude is kept relative to its adapter's largest module norm ``ref_a`` (``rel``, ``srel``), or
    without the scale (``raw``): the cosines are then formed from numbers near 1, exact in float64 whether the
    factors are near 3e38 or 1e-45 (where ‖ΔW‖² or its products would overflow or underflow).
    """

    idx: np.ndarray  # (t,) positions in the tile
    B: np.ndarray  # (d_out, R): B_a side by side, in the factors' own dtype (float32 as read: half the bytes)
    A: np.ndarray  # (R, d_in)
    off: np.ndarray  # (t + 1,)
    scale: np.ndarray  # (t,) float64 scales s_a
    U: np.ndarray  # (d, K): top-k bases side by side
    kk: np.ndarray  # (t,)
    srel: np.ndarray  # (t,) s_a / ref_a
    rel: np.ndarray  # (t,) ‖ΔW_a‖ / ref_a
    raw: np.ndarray  # (t,) ‖B_a A_a‖ (no scale)
    labels: tuple = ()  # (t,) the adapters, for messages


def _top_basis(lr, side, k):
    """(d, min(k, rank)) top singular basis on ``side`` (column signs free: φ does not see them), formed
    from :meth:`LowRank.basis_parts` for the k columns only."""
    Q, Y = lr.basis_parts(side)
    if Y is None:
        return Q[:, :k]
    return Q @ Y[:, :k]  # (d, r) @ (r, k)


def _stack_entry(n, lr, *, t, side, k, ref):
    """One module of adapter ``t`` for :func:`_stack`: ``(n, (t, B, A, s, top-k basis, s / ref, ‖ΔW‖ / ref,
    ‖B A‖))``."""
    if lr.scale is None:
        lr.norm()  # raises MissingAlphaError, naming the file and key
    U = _top_basis(lr, side, k) if not lr.is_zero else None
    norm, s = float(lr.norm()), float(lr.scale)
    raw = norm / abs(s) if s != 0 and norm > 0 else 0.0
    return n, (t, lr.lora_B, lr.lora_A, s, U, s / ref, norm / ref, raw)


def _stack(srcs, names, *, alpha, k, side, modules, layers, refs=None):
    """Task: for each module in ``names``, the stacked factors and top-k bases of the adapters in ``srcs``
    (``refs``: each adapter's largest module norm, the unit of its magnitudes)."""
    per = {n: [] for n in names}
    refs = [1.0] * len(srcs) if refs is None else [float(r) if r and np.isfinite(r) else 1.0 for r in refs]
    for t, src in enumerate(srcs):
        with open_source(src, alpha=alpha) as ad:
            mods = ad.expanded()
            one = functools.partial(_stack_entry, t=t, side=side, k=k, ref=refs[t])
            for n, entry in sweep_modules(one, [n for n in names if n in mods], modules=(mods,), jobs=1,
                                          alone_threads=None):
                per[n].append(entry)
    out = {}
    for n, items in per.items():
        if not items:
            continue
        d_out, d_in = items[0][1].shape[0], items[0][2].shape[1]
        d = d_in if side in ("input", "A") else d_out
        ranks = [it[1].shape[1] for it in items]
        ks = [0 if it[4] is None else it[4].shape[1] for it in items]
        off = np.concatenate([[0], np.cumsum(ranks)])
        koff = np.concatenate([[0], np.cumsum(ks)])
        # the factors as read (float32 for the usual files; float64 kept as float64): exact, and half the
        # bytes to hold and to send between workers; the block task widens them to float64
        dt = np.result_type(*[B.dtype for _, B, *_ in items], *[A.dtype for _, _, A, *_ in items])
        Bs = np.empty((d_out, off[-1]), dtype=dt)  # (d_out, R): B_a side by side
        As = np.empty((off[-1], d_in), dtype=dt)  # (R, d_in)
        Us = np.empty((d, koff[-1]))  # (d, K)
        for j, (_, B, A, s, U, *_) in enumerate(items):
            Bs[:, off[j]:off[j + 1]] = B
            As[off[j]:off[j + 1]] = A
            if U is not None:
                Us[:, koff[j]:koff[j + 1]] = U
        out[n] = _Stack(np.asarray([it[0] for it in items]), Bs, As, off,
                        np.asarray([it[3] for it in items], dtype=np.float64), Us, np.asarray(ks),
                        *(np.asarray([it[j] for it in items], dtype=np.float64) for j in (5, 6, 7)),
                        labels=tuple(source_label(srcs[it[0]]) for it in items))
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
        with np.errstate(over="ignore", invalid="ignore"):
            G = gram_blocks(Ba, Aa, a.off, Bb, Ab, b.off)  # (t_a, t_b): ⟨B_a A_a, B_b A_b⟩, scale 1
        if not np.isfinite(G).all():
            i, j = np.argwhere(~np.isfinite(G))[0]
            raise AdapterError(f"expected factors whose products float64 can hold, got ⟨B A, B' A'⟩ beyond 1.8e308 "
                               f"with {b.labels[j]} (factors far outside any trained adapter)", path=a.labels[i],
                               key=n)
        P = phi_blocks(a.U, a.kk, b.U, b.kk)  # (t_a, t_b)
        ix = np.ix_(a.idx, b.idx)
        # ⟨s_a B_a A_a, s_b B_b A_b⟩ / (ref_a ref_b) = G (s_a / ref_a) (s_b / ref_b): near 1, never past float64
        inner[ix] += G * a.srel[:, None] * b.srel[None, :]
        na[ix] += (a.rel ** 2)[:, None]
        nb[ix] += (b.rel ** 2)[None, :]
        ok = ~np.isnan(P)
        phis[ix] += np.where(ok, P, 0.0)
        nphi[ix] += ok
        shared[ix] += 1
        if keep:
            with np.errstate(invalid="ignore", divide="ignore"):  # cos = G / ‖B_a A_a‖ / ‖B_b A_b‖, scale signs
                C = np.clip(G / a.raw[:, None] / b.raw[None, :] * np.sign(np.outer(a.scale, b.scale)), -1.0, 1.0)
            C[(a.raw == 0)[:, None] | (b.raw == 0)[None, :]] = np.nan
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
        module -> labels of the adapters that have it, for modules not in every adapter of its model.
    models : ModelGrouping or None
        The adapters grouped into models by their module shapes (:mod:`analysis.sweeps.models`); positions
        refer to ``labels``. Pairs across models are never compared: NaN cells, ``shared`` 0.
    skipped : tuple of (str, str)
        (path, why) of the inputs skipped as no adapter (``not_adapters="skip"``); not in ``labels``.
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
    models: ModelGrouping | None = None
    skipped: tuple = ()

    @property
    def groups(self) -> tuple[ModelGroup, ...]:
        """The models (:class:`~analysis.sweeps.models.ModelGroup`), one group of everything when unknown."""
        if self.models is None:
            return (ModelGroup("A", tuple(range(len(self.labels))), {}),)
        return self.models.groups

    def spread(self, kind: str = "similarity") -> np.ndarray:
        """(N, N) standard deviation over modules of the per-module matrices (NaN-aware)."""
        arr = self._modules(kind)
        with np.errstate(invalid="ignore"), _quiet():
            return np.nanstd(arr, axis=0)

    def _modules(self, kind):
        if kind not in ("similarity", "cosine"):
            raise InputError(f"kind must be 'similarity' or 'cosine', got {kind!r}")
        arr = self.module_similarity if kind == "similarity" else self.module_cosine
        if arr is None:
            raise InputError("per-module matrices were not kept: call with keep_modules=True")
        return arr

    def order(self, kind: str = "similarity") -> np.ndarray:
        """Seriation of the adapters (hierarchical clustering, optimal leaf order) on ``kind``, model by
        model (the models in order, each seriated on its own)."""
        M = self.similarity if kind == "similarity" else self.cosine
        out = []
        for g in self.groups:
            idx = np.asarray(g.members, dtype=np.int64)
            out.extend(idx[seriation_order(M[np.ix_(idx, idx)])])
        return np.asarray(out, dtype=np.int64)

    def groups_dict(self) -> dict[str, list[dict[str, Any]]]:
        """``{"groups": [...], "not_compared": [...]}``: the models (name, adapters, module count, first
        module and its shape) and, per pair of models, why their pairs have no number (``"different
        shapes"``: the first module whose shapes differ, with one adapter of each showing it; ``"no module
        in common"``)."""
        groups = []
        for g in self.groups:
            d = {"name": g.name, "adapters": [self.labels[i] for i in g.members], "modules": len(g.shapes)}
            if g.shapes:
                n, sh = g.example()
                d.update(first_module=n, first_shape=list(sh))
            groups.append(d)
        apart = []
        for x in (self.models.apart if self.models is not None else ()):
            a, b = x["models"]
            if x["reason"] == "shape":
                apart.append({"groups": [a, b], "reason": "different shapes", "module": x["module"],
                              "shapes": {a: list(x["shape_a"]), b: list(x["shape_b"])},
                              "adapters": {a: self.labels[x["adapter_a"]], b: self.labels[x["adapter_b"]]}})
            else:
                apart.append({"groups": [a, b], "reason": "no module in common"})
        return {"groups": groups, "not_compared": apart}

    def to_dict(self) -> dict[str, Any]:
        """``{"adapters", "k", "side", "similarity", "cosine", "shared", "modules": {name: {...}}, "zero",
        "only_some", "groups", "not_compared", "skipped"}`` (see :meth:`groups_dict`)."""
        d = {"adapters": list(self.labels), "k": self.k, "side": self.side,
             "similarity": self.similarity, "cosine": self.cosine, "shared": self.shared}
        if self.module_similarity is not None:
            d["modules"] = {n: {"similarity": self.module_similarity[m],
                                "cosine": self.module_cosine[m]}  # type: ignore[index]  # kept together
                            for m, n in enumerate(self.module_names)}
        d["zero"] = [{"adapter": a, "module": m} for a, m in self.zero]
        d["only_some"] = {m: list(v) for m, v in self.only_some.items()}
        d.update(self.groups_dict())
        d["skipped"] = [{"path": p, "reason": why} for p, why in self.skipped]
        return d

    def to_frame(self) -> pd.DataFrame:
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
                s, c = self.module_similarity[m][ia, ib], self.module_cosine[m][ia, ib]  # type: ignore[index]
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


def seriation_order(matrix: ArrayLike) -> np.ndarray:
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
        raise InputError(f"expected a square matrix, got shape {M.shape}")
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
    """``{name: shape}`` over one model's summaries (the header pass grouped them: a mismatch here means a
    file changed in between)."""
    shapes, owner = {}, {}
    for lab, meta in zip(labels, metas):
        for n, m in meta["modules"].items():
            if n not in shapes:
                shapes[n], owner[n] = m["shape"], lab
            elif shapes[n] != m["shape"]:
                raise AdapterError(f"expected ΔW of shape {shapes[n]} as in {owner[n]}, got {m['shape']}: "
                                   "the adapters are not for one base model", path=lab, key=n)
    return shapes


def _refuse_mixed(grouping, labels):
    """``mixed_models="error"``: the first shape contradiction between two models, on one line."""
    x = grouping.conflicts[0]
    raise AdapterError(f"expected ΔW of shape {x['shape_a']} as in {labels[x['adapter_a']]}, got {x['shape_b']}: "
                       f"the adapters are not for one base model ({len(grouping.groups)} models by their module "
                       "shapes; to compare each model's adapters apart: mixed_models='split', or the command "
                       "without --one-model)",
                       path=labels[x["adapter_b"]], key=x["module"])


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


def collection_similarity(adapters: Sequence[str | os.PathLike[str] | Adapter], *, k: int = 1, side: str = "input",
                          alpha: float | None = None, modules: Sequence[str] | None = None,
                          layers: set[int] | str | Layers | None = None, client: Client | str | None = None,
                          tile: int | None = None, keep_modules: bool = True, group_bytes: int = _STACK_BYTES,
                          mixed_models: str = "error", not_adapters: str = "error",
                          notes: Callable[[str], object] | None = None) -> CollectionResult:
    """Similarity and Frobenius cosine matrices of every pair in a collection, per module and pooled.

    Before any other work, one cheap pass reads every adapter's module names and ΔW shapes (a PEFT
    safetensors file: its header), names the inputs that cannot be read, and groups the adapters into
    models (:func:`~analysis.sweeps.models.group_by_model`: adapters that share modules, all of equal
    shapes). Pairs within a model are compared on the modules both have; pairs across models never are
    (NaN, listed in :meth:`CollectionResult.groups_dict`).

    Parameters
    ----------
    adapters : sequence of str, os.PathLike or Adapter
        Two or more adapters (paths as the workers see them, fsspec URLs, or Adapters).
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
    mixed_models : {"error", "split"}
        Adapters of several models whose shared module names have different shapes (a Llama-7B and a
        Llama-13B adapter): ``"error"`` raises :class:`~analysis.errors.AdapterError` naming the module and
        both shapes; ``"split"`` compares each model's adapters among themselves. Models that share no
        module name are compared apart either way (their pairs have nothing in common).
    not_adapters : {"error", "skip"}
        An input that is plainly no adapter (:func:`~analysis.sweeps.models.not_an_adapter`: a README caught
        by a glob):
        ``"error"`` raises, ``"skip"`` leaves it out (listed in ``skipped``). Unreadable checkpoints
        always raise. Either way before any work.
    notes : callable, optional
        Called with one line of text as soon as it is known, before the heavy work: the inputs skipped,
        and the models when there is more than one (e.g. ``print``).

    Returns
    -------
    CollectionResult

    Raises
    ------
    AdapterError
        One line naming the first bad input (and how many more), before any work.
    """
    import dask

    srcs = list(adapters)
    if len(srcs) < 2:
        raise InputError(f"expected at least two adapters, got {len(srcs)}")
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if side not in COLLECTION_SIDES:
        raise InputError(f"side must be one of {COLLECTION_SIDES}, got {side!r}")
    if mixed_models not in MIXED_MODELS:
        raise InputError(f"mixed_models must be one of {MIXED_MODELS}, got {mixed_models!r}")
    if not_adapters not in NOT_ADAPTERS:
        raise InputError(f"not_adapters must be one of {NOT_ADAPTERS}, got {not_adapters!r}")
    tile = None if tile is None else int(tile)
    if tile is not None and tile < 1:
        raise InputError(f"tile must be a positive integer, got {tile}")
    labels = tuple(source_label(s) for s in srcs)
    tsrc = [task_source(s) for s in srcs]
    # 0. names and shapes (headers), bad paths named at once, models told apart: before any other work
    heads = compute([dask.delayed(header_task, pure=True)(s, alpha=alpha) for s in tsrc], client=client)
    keep, skipped = screen_headers(heads, labels, not_adapters=not_adapters)
    if len(keep) < 2:
        raise InputError(f"expected at least two adapters, got {len(keep)} after skipping {len(skipped)} "
                         f"that are no adapter ({', '.join(p for p, _ in skipped[:3])})")
    labels, tsrc, heads = tuple(labels[i] for i in keep), [tsrc[i] for i in keep], [heads[i] for i in keep]
    if notes is not None and skipped:
        notes(describe_skipped(skipped))
    grouping = group_by_model([h["shapes"] for h in heads])
    if grouping.conflicts and mixed_models == "error":
        _refuse_mixed(grouping, labels)
    if notes is not None and len(grouping.groups) > 1:
        notes(describe_models(grouping, labels))
    N = len(labels)
    tile = min(N, 64) if tile is None else tile
    # 1. summaries
    summ = dask.delayed(summarise_adapter, pure=True)
    metas = compute([summ(s, alpha=alpha, modules=modules, layers=layers) for s in tsrc], client=client)
    plans = [_plan(g.members, metas, labels, tile, int(group_bytes)) for g in grouping.groups]
    names = sorted({n for plan in plans for n in plan["names"]}, key=natural_key)
    zero = tuple((lab, n) for lab, meta in zip(labels, metas) for n, m in meta["modules"].items() if m["rank"] == 0)
    only_some: dict[str, list[str]] = {}
    for plan in plans:
        for n, labs in plan["only_some"].items():
            only_some.setdefault(n, []).extend(labs)
    only_some = {n: only_some[n] for n in names if n in only_some}
    # each adapter's unit of magnitude: its largest module norm (the cosines are formed from ratios to it)
    refs = [max((m["norm"] for m in meta["modules"].values()), default=0.0) or 1.0 for meta in metas]
    # 2-3. per model: stacks of tiles of its adapters, blocks between its tiles
    stack = dask.delayed(_stack, pure=True)
    block = dask.delayed(_block, pure=True)
    tasks, where = [], []
    for plan in plans:
        tiles = plan["tiles"]
        for g in plan["module_groups"]:
            st = [stack([tsrc[i] for i in t], g, alpha=alpha, k=k, side=side, modules=modules, layers=layers,
                        refs=[refs[i] for i in t])
                  for t in tiles]
            for I in range(len(tiles)):
                for J in range(I + 1):
                    tasks.append(block(st[I], st[J], len(tiles[I]), len(tiles[J]), g, keep_modules))
                    where.append((tiles[I], tiles[J]))
    results = compute(tasks, client=client)
    return _assemble(results, where, N, names, keep_modules, labels, k, side, zero, only_some, grouping, skipped)


def _plan(members, metas, labels, tile, group_bytes):
    """One model's work: its modules (after the filters), tiles of its adapters, groups of its modules."""
    labs = [labels[i] for i in members]
    ms = [metas[i] for i in members]
    shapes = _check_shapes(ms, labs)
    names = sorted(shapes, key=natural_key)
    rmax = {}
    for meta in ms:
        for n, m in meta["modules"].items():
            rmax[n] = max(rmax.get(n, 1), m["r"])
    only_some = {n: [lab for lab, meta in zip(labs, ms) if n in meta["modules"]] for n in names
                 if sum(n in meta["modules"] for meta in ms) < len(ms)}
    tiles = [list(members[i:i + tile]) for i in range(0, len(members), tile)]
    return {"names": names, "only_some": only_some, "tiles": tiles,
            "module_groups": _groups(names, shapes, rmax, min(tile, len(members)), group_bytes)}


def _assemble(results, where, N, names, keep_modules, labels, k, side, zero, only_some, grouping, skipped):
    """The N × N matrices from the block tasks' results (cells of pairs never compared stay NaN)."""
    acc = {key: np.zeros((N, N)) for key in ("inner", "na", "nb", "phi", "nphi", "shared")}
    msim = np.full((len(names), N, N), np.nan) if keep_modules else None
    mcos = np.full((len(names), N, N), np.nan) if keep_modules else None
    pos = {n: m for m, n in enumerate(names)}
    for (ti, tj), res in zip(where, results):
        ri, rj = np.asarray(ti), np.asarray(tj)
        off = ti is not tj
        for key in acc:
            acc[key][np.ix_(ri, rj)] += res[key]  # summed over the module groups
            if off:
                tr = res[key].T if key not in ("na", "nb") else res["nb" if key == "na" else "na"].T
                acc[key][np.ix_(rj, ri)] += tr
        if keep_modules:
            for n, (ia, ib, P, C) in res["modules"].items():
                m = pos[n]
                msim[m][np.ix_(ri[ia], rj[ib])] = P
                mcos[m][np.ix_(ri[ia], rj[ib])] = C
                if off:
                    msim[m][np.ix_(rj[ib], ri[ia])] = P.T
                    mcos[m][np.ix_(rj[ib], ri[ia])] = C.T
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(acc["nphi"] > 0, acc["phi"] / acc["nphi"], np.nan)
        den = np.sqrt(acc["na"]) * np.sqrt(acc["nb"])  # each sum relative to its adapter's largest module: near 1
        cos = np.where(den > 0, acc["inner"] / den, np.nan)
    return CollectionResult(labels, np.clip(sim, 0.0, 1.0), np.clip(cos, -1.0, 1.0), acc["shared"].astype(np.int64),
                            tuple(names), msim, mcos, k, side, zero, only_some, grouping, skipped)
