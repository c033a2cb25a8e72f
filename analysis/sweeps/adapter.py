"""Per-module measures of one adapter (or several of one base), and of their relation to the base weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.core.adapter import Adapter, select_modules, split_name
from analysis.core.randomized import krylov_settings
from analysis.errors import InputError
from analysis.io.base import base_matrix, base_tensor_name, open_base, read_base
from analysis.io.roles import with_roles
from analysis.io.stored import StoredMatrix
from analysis.metrics.correlation import check_weight, check_weight_shape, correlation_checked, overlap_checked
from analysis.sweeps.common import progress as progress_bar
from analysis.sweeps.driver import sweep_modules
from analysis.sweeps.spectra import spectrum_row
from analysis.sweeps.svd_cache import SVDCache, cached_random_projections, cached_topk_svd, tensor_file

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    import pandas as pd

    from analysis.core.adapter import Layers
    from analysis.core.lowrank import LowRank
    from analysis.io.base import BaseWeights
    from analysis.sweeps.progress import Progress

__all__ = ["AdapterSweep", "analyse_adapter", "analyse_adapters"]


@dataclass
class AdapterSweep:
    """Per-module measures of one adapter, and of its relation to the base weights.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, d_out, d_in, r, rank, scale,
        zero, sigma1, fro, effective_rank, stable_rank, rank90, rank99,
        top1_energy``; with a base also ``w_norm, w_sigma1, proj_delta, proj_w,
        proj_random, proj_random_std, proj_random_rms, proj_random_expected, amplification,
        over_random`` (Table 7) and ``phi_w_output, phi_w_input,
        null_w_output, null_w_input``: φ(k, k) between W's top-k and ΔW's
        top-k directions (Fig. 8 at i = j = k) and its random null k / d.
    spectra : dict[str, (k,) ndarray]
        Singular values of each ΔW (scale included when known).
    correlations : dict[str, WeightCorrelation]
        Table-7 results (empty without a base).
    """

    frame: pd.DataFrame
    spectra: dict = field(default_factory=dict)
    correlations: dict = field(default_factory=dict)


def analyse_adapter(adapter: Adapter, *,
                    base: str | os.PathLike[str] | BaseWeights | Mapping[str, np.ndarray] | None = None,
                    modules: Sequence[str] | None = None, layers: set[int] | str | Layers | None = None,
                    n_random: int = 10, seed: int = 0, progress: bool | Progress = False, keep_cache: bool = False,
                    jobs: int | None = None, cache: bool | SVDCache = True,
                    tolerance: float | str | None = None) -> AdapterSweep:
    """Spectra, rank measures and (with a base) Table-7 columns for every module.

    Parameters
    ----------
    adapter : Adapter
    base : str or os.PathLike or BaseWeights or Mapping[str, ndarray], optional
        The frozen base model: a path for :func:`analysis.io.base.open_base`,
        an open reader, or a mapping ``module name -> (d_out, d_in) array``.
        Weights are read one at a time.
    modules, layers
        Filters, see :func:`select_modules`.
    n_random, seed : int
        Random subspace draws and seed for the Table-7 baselines and W's randomized SVD.
    progress : bool
        Progress bar (tqdm) on standard error.
    keep_cache : bool
        Keep each module's float64 SVD after use.
    jobs : int, optional
        Modules worked on at once (threads, BLAS pinned to one thread in each; see
        :mod:`analysis.core.threads`); default: the cores available. Memory is bounded by ``jobs`` modules
        (and, with a base, ``jobs`` + 1 base weights).
    cache : bool or SVDCache
        Read W's top singular triplets from the persistent cache, and store them there
        (:mod:`analysis.sweeps.svd_cache`); ``False``: compute them every time (``--no-cache``).
    tolerance : float or "exact", optional
        Accuracy of W's randomized SVD (:func:`~analysis.core.randomized.krylov_settings`, ``--tolerance``);
        default the randomized SVD's defaults.

    Returns
    -------
    AdapterSweep
    """
    return analyse_adapters([adapter], base=base, modules=modules, layers=layers, n_random=n_random, seed=seed,
                            progress=progress, keep_cache=keep_cache, jobs=jobs, cache=cache,
                            tolerance=tolerance)[0]


def analyse_adapters(adapters: Sequence[Adapter], *,
                     base: str | os.PathLike[str] | BaseWeights | Mapping[str, np.ndarray] | None = None,
                     modules: Sequence[str] | None = None, layers: set[int] | str | Layers | None = None,
                     n_random: int = 10, seed: int = 0, progress: bool | Progress = False,
                     keep_cache: bool = False, jobs: int | None = None, cache: bool | SVDCache = True,
                     tolerance: float | str | None = None) -> list[AdapterSweep]:
    """:func:`analyse_adapter` for several adapters of one base, reading each base weight once.

    With a base, each W is read once and its top singular triplets are
    computed once, for the largest rank any of the adapters has at that
    module, then shared (the top-k of a randomized SVD for a larger k is as
    accurate, see :func:`~analysis.core.randomized_svd`): comparing an
    r = 8 and an r = 64 adapter costs one pass over the base, not two.

    Parameters
    ----------
    adapters : sequence of Adapter
    base, modules, layers, n_random, seed, progress, keep_cache, jobs, cache, tolerance
        As for :func:`analyse_adapter`.

    Returns
    -------
    list of AdapterSweep
        One per adapter, in order.
    """
    import pandas as pd

    svd_settings = krylov_settings(tolerance)  # checked before any work
    runs = []
    for adapter in adapters:
        mods = adapter.expanded()
        runs.append(_Run(mods, select_modules(mods, modules=modules, layers=layers)))
    bar = progress_bar(None, enabled=progress, total=sum(len(r.names) for r in runs) * (2 if base is not None else 1))
    count = bar if bar is not None else False
    for run in runs:
        for name, row, spec in sweep_modules(_spectrum_columns, run.names, modules=(run.mods,), keep_cache=keep_cache,
                                             jobs=jobs, progress=count):
            run.rows[name], run.spectra[name] = row, spec
    if base is not None:
        _base_pass(runs, base, cache=cache, svd_settings=svd_settings, n_random=n_random, seed=seed,
                   keep_cache=keep_cache, jobs=jobs, count=count)
    if bar is not None:
        bar.close()
    out = []
    for run in runs:
        frame = with_roles(pd.DataFrame([run.rows[n] for n in run.names]))
        if len(frame) and frame["layer"].isna().any():
            frame["layer"] = frame["layer"].astype("Int64")
        out.append(AdapterSweep(frame=frame, spectra=run.spectra, correlations=run.correlations))
    return out


@dataclass
class _Run:
    """One adapter of :func:`analyse_adapters`: its modules, the names selected, and what the passes fill in."""

    mods: Mapping[str, LowRank]
    names: list[str]
    rows: dict = field(default_factory=dict)
    spectra: dict = field(default_factory=dict)
    correlations: dict = field(default_factory=dict)


def _spectrum_columns(name, lr):
    """Per module: the shape, rank and spectrum columns (scale-free where α is unknown), and ΔW's spectrum."""
    layer, module = split_name(name)
    row = {"name": name, "layer": layer, "module": module, "d_out": lr.shape[0], "d_in": lr.shape[1],
           "r": lr.r, "rank": lr.rank, "scale": np.nan if lr.scale is None else lr.scale, "zero": lr.is_zero}
    srow, spec = spectrum_row(lr, scale_free=True)
    row.update(srow)
    return name, row, spec


def _base_pass(runs, base, *, cache, svd_settings, n_random, seed, keep_cache, jobs, count):
    """The base columns of every adapter's modules in one pass over the base: each W read once (``jobs`` at a
    time) and its top singular triplets computed once for every module on it."""
    opened = None
    if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
        base = opened = open_base(base)
    store = cache if isinstance(cache, SVDCache) else SVDCache(enabled=bool(cache))
    try:
        users = {}  # base tensor -> [(adapter index, module name)]
        for i, run in enumerate(runs):
            for name in run.names:
                users.setdefault(base_tensor_name(name, run.mods[name]), []).append((i, name))
        weights = _Weights(base, store, users, svd_settings, n_random, seed)
        for done in sweep_modules(weights.columns, read_base(base, list(users), stored=True),
                                  modules=lambda item: [runs[i].mods[n] for i, n in users[item[0]]],
                                  keep_cache=keep_cache, jobs=jobs, progress=count, steps=len):
            for i, name, c, upd in done:
                runs[i].correlations[name] = c
                runs[i].rows[name].update(upd)
    finally:
        if opened is not None:
            opened.close()


@dataclass(frozen=True)
class _Weights:
    """The per-weight work of :func:`_base_pass`: Table 7 and Fig. 8 columns of the modules on one base W."""

    base: Any
    store: SVDCache
    users: dict  # base tensor -> [(adapter index, module name)]
    svd_settings: dict
    n_random: int
    seed: int

    def columns(self, item, *lrs):
        """``[(adapter index, name, WeightCorrelation, columns)]`` of every module on the base weight ``item``
        (``(tensor name, W)``: a StoredMatrix from a reader, widened where used, or a mapping's array)."""
        bname, W_raw = item
        entries = self.users[bname]
        svds = {}  # (module name, shape) -> (W, top-k triplets for the largest k any adapter needs, ‖W‖_F)
        out = []
        for (i, name), lr in zip(entries, lrs):
            key = (name, lr.shape)
            if key not in svds:
                W = self.checked(W_raw, lr, name)
                k_all = max(max(m.rank, 1) for (_, n), m in zip(entries, lrs) if (n, m.shape) == key)
                svds[key] = (W, *cached_topk_svd(self.store, tensor_file(self.base, bname), f"{bname}|{name}", W,
                                                 k_all, seed=self.seed, norm=True, **self.svd_settings))
            W, w_svd, w_norm = svds[key]
            out.append((i, name, *self.module(bname, name, W, lr, w_svd, w_norm)))
        return out

    def checked(self, W_raw, lr, name):
        """W in ΔW's orientation, checked once: its shape (a StoredMatrix: NaN / Inf are checked by the product
        that uses it), or shape, finite values and working precision (an array)."""
        W = base_matrix(W_raw, lr, name=name, path=getattr(self.base, "path", None))
        if isinstance(W, StoredMatrix):
            check_weight_shape(W, lr, name)
            return W
        return check_weight(W, lr, name)

    def module(self, bname, name, W, lr, w_svd, w_norm):
        """Table 7 (:func:`~analysis.metrics.correlation.correlation_checked`) and the φ(k, k) of Fig. 8
        (:func:`~analysis.metrics.correlation.overlap_checked`) for one module, from W's top triplets."""
        n_random, seed = self.n_random, self.seed
        k = max(lr.rank, 1)
        rp = None
        if lr.rank:
            rp = cached_random_projections(self.store, tensor_file(self.base, bname), f"{bname}|{name}", W, lr.rank,
                                           n_random=n_random, seed=seed)
        if n_random < 1:
            raise InputError(f"n_random must be >= 1, got {n_random}")
        # W checked once (self.checked): the metrics' halves for a checked W
        c = correlation_checked(W, lr, n_random=n_random, seed=seed, w_svd=w_svd, name=name, random_proj=rp,
                                w_norm=w_norm)
        upd = dict(w_norm=c.w_norm, w_sigma1=float(w_svd.S[0]), proj_delta=c.proj_delta, proj_w=c.proj_w,
                   proj_random=c.proj_random, proj_random_std=c.proj_random_std, proj_random_rms=c.proj_random_rms,
                   proj_random_expected=c.proj_random_expected, amplification=c.amplification,
                   over_random=c.over_random)
        for side in ("output", "input"):
            ov = overlap_checked(W, lr, side=side, n_w=k, seed=seed, w_svd=w_svd, name=name)
            upd[f"phi_w_{side}"] = float(ov.phi[-1, -1]) if not ov.zero else np.nan
            upd[f"null_w_{side}"] = k / ov.d
        return c, upd
