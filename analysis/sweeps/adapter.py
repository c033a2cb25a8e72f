"""Per-module measures of one adapter (or several of one base), and of their relation to the base weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter, select_modules, split_name
from analysis.sweeps.common import progress as progress_bar
from analysis.sweeps.spectra import spectrum_row
from analysis.io.roles import with_roles

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence
    from typing import Any

    import pandas as pd

    from analysis.core.adapter import Layers
    from analysis.io.base import BaseWeights
    from analysis.sweeps.progress import Progress
    from analysis.sweeps.svd_cache import SVDCache

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

    from analysis.core.randomized import krylov_settings
    from analysis.core.threads import map_ordered
    from analysis.io.base import base_matrix, base_tensor_name, open_base, read_base
    from analysis.sweeps.svd_cache import SVDCache, cached_random_projections, cached_topk_svd, tensor_file
    from analysis.io.stored import StoredMatrix
    from analysis.metrics.correlation import check_weight_shape, check_weight, correlation_checked, overlap_checked

    svd_settings = krylov_settings(tolerance)  # checked before any work
    runs: list[tuple[Any, ...]] = []  # per adapter: (modules, selected names, rows, spectra, correlations)
    for adapter in adapters:
        mods = adapter.expanded()
        names = select_modules(mods, modules=modules, layers=layers)
        runs.append((mods, names, {}, {}, {}))
    bar = progress_bar(None, enabled=progress, total=sum(len(r[1]) for r in runs) * (2 if base is not None else 1))

    def spectrum(item):
        i, name = item
        lr = runs[i][0][name]
        layer, module = split_name(name)
        row = {"name": name, "layer": layer, "module": module, "d_out": lr.shape[0], "d_in": lr.shape[1],
               "r": lr.r, "rank": lr.rank, "scale": np.nan if lr.scale is None else lr.scale,
               "zero": lr.is_zero}
        srow, spec = spectrum_row(lr, scale_free=True)
        row.update(srow)
        if not keep_cache:
            lr.clear_cache()
        return i, name, row, spec

    items = [(i, name) for i, r in enumerate(runs) for name in r[1]]
    for i, name, row, spec in map_ordered(spectrum, items, jobs=jobs):
        runs[i][2][name], runs[i][3][name] = row, spec
        if bar is not None:
            bar.update()
    if base is not None:
        opened = None
        if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
            base = opened = open_base(base)
        store = cache if isinstance(cache, SVDCache) else SVDCache(enabled=bool(cache))
        try:
            by_base: dict[str, list[tuple[int, str]]] = {}  # base tensor -> [(adapter index, module name)]
            for i, (mods, names, *_) in enumerate(runs):
                for name in names:
                    by_base.setdefault(base_tensor_name(name, mods[name]), []).append((i, name))

            def one_weight(item):
                bname, W_raw = item  # a StoredMatrix from a reader (widened where used), or a mapping's array
                svds = {}  # (module name, shape) -> (W, top-k triplets for the largest k any adapter needs, ‖W‖_F)
                out = []
                for i, name in by_base[bname]:
                    mods = runs[i][0]
                    lr = mods[name]
                    key = (name, lr.shape)
                    if key not in svds:
                        W = base_matrix(W_raw, lr, name=name, path=getattr(base, "path", None))
                        if isinstance(W, StoredMatrix):
                            check_weight_shape(W, lr, name)  # NaN / Inf: checked by the product that uses W
                        else:
                            W = check_weight(W, lr, name)
                        k_all = max(max(runs[j][0][n].rank, 1) for j, n in by_base[bname]
                                    if (n, runs[j][0][n].shape) == key)
                        svds[key] = (W, *cached_topk_svd(store, tensor_file(base, bname), f"{bname}|{name}", W,
                                                         k_all, seed=seed, norm=True, **svd_settings))
                    W, w_svd, w_norm = svds[key]
                    k = max(lr.rank, 1)
                    rp = None
                    if lr.rank:
                        rp = cached_random_projections(store, tensor_file(base, bname), f"{bname}|{name}", W,
                                                       lr.rank, n_random=n_random, seed=seed)
                    if n_random < 1:
                        raise ValueError(f"n_random must be >= 1, got {n_random}")
                    # W checked once above (shape; finite and working precision for an array, in its product for a
                    # StoredMatrix): the metrics' private halves
                    c = correlation_checked(W, lr, n_random=n_random, seed=seed, w_svd=w_svd, name=name, random_proj=rp,
                                     w_norm=w_norm)
                    upd = dict(w_norm=c.w_norm, w_sigma1=float(w_svd.S[0]), proj_delta=c.proj_delta,
                               proj_w=c.proj_w, proj_random=c.proj_random, proj_random_std=c.proj_random_std,
                               proj_random_rms=c.proj_random_rms, proj_random_expected=c.proj_random_expected,
                               amplification=c.amplification, over_random=c.over_random)
                    for side in ("output", "input"):
                        ov = overlap_checked(W, lr, side=side, n_w=k, seed=seed, w_svd=w_svd, name=name)
                        upd[f"phi_w_{side}"] = float(ov.phi[-1, -1]) if not ov.zero else np.nan
                        upd[f"null_w_{side}"] = k / ov.d
                    if not keep_cache:
                        lr.clear_cache()
                    out.append((i, name, c, upd))
                return out

            for done in map_ordered(one_weight, read_base(base, list(by_base), stored=True), jobs=jobs):
                for i, name, c, upd in done:
                    runs[i][4][name] = c
                    runs[i][2][name].update(upd)
                    if bar is not None:
                        bar.update()
        finally:
            if opened is not None:
                opened.close()
    if bar is not None:
        bar.close()
    out = []
    for _, names, rows, spectra, corr in runs:
        frame = with_roles(pd.DataFrame([rows[n] for n in names]))
        if len(frame) and frame["layer"].isna().any():
            frame["layer"] = frame["layer"].astype("Int64")
        out.append(AdapterSweep(frame=frame, spectra=spectra, correlations=corr))
    return out
