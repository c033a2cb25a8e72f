"""Subspace similarity of every module two adapters share, into a tidy DataFrame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter, natural_key, select_modules, split_name
from analysis.core.threads import map_ordered
from analysis.errors import MissingAlphaError
from analysis.metrics.pair import SIDES, module_similarities
from analysis.metrics.spectrum import near_tie, top_ratio
from analysis.sweeps.common import progress as progress_bar
from analysis.io.roles import with_roles

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from analysis.core.adapter import Layers
    from analysis.sweeps.progress import Progress

__all__ = ["PairSweep", "compare_adapters"]


def _maybe(f):
    try:
        return f()
    except MissingAlphaError:
        return np.nan


@dataclass
class PairSweep:
    """Similarity of every module two adapters share.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per shared module: ``name, layer, module, d_out, d_in, r_a,
        r_b, rank_a, rank_b, fro_a, fro_b, zero_a, zero_b`` and, per side
        ``s`` compared, ``phi11_s``, ``shared_dims_s``, ``ties_s`` and the
        principal-angle summaries ``min_angle_deg_s``, ``median_angle_deg_s``,
        ``max_angle_deg_s``, ``mean_cos2_s`` (mean cos² θ over the min(k1, k2)
        angles between the full spans, = φ(k1, k2)); ``top_ratio_a_s``,
        ``top_ratio_b_s`` (σ₂ / σ₁ of the singular values that order side ``s``
        in each adapter, NaN below rank 2) and ``near_tie_s`` (either adapter's
        top two within :data:`~analysis.metrics.spectrum.NEAR_TIE_GAP`, see
        :func:`~analysis.metrics.spectrum.near_tie`: φ(1, 1) on that side is
        not meaningful alone; False when an update is zero).
    results : dict[str, dict[str, SimilarityResult]]
        ``results[name][side]``: the full φ grids.
    only_a, only_b : list of str
        Modules present in only one adapter (not compared).
    mismatched : list of str
        Shared names whose ΔW shapes differ (not compared).
    """

    frame: pd.DataFrame
    results: dict = field(default_factory=dict)
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)


def compare_adapters(a: Adapter, b: Adapter, *, sides: Sequence[str] = SIDES, modules: Sequence[str] | None = None,
                     layers: set[int] | str | Layers | None = None, progress: bool | Progress = False,
                     keep_cache: bool = False, jobs: int | None = None) -> PairSweep:
    """Compare every module two adapters share, on the chosen bases.

    Parameters
    ----------
    a, b : Adapter
    sides : sequence of {"A", "B", "input", "output"}
        Bases compared (see :func:`~analysis.metrics.module_similarity`).
    modules, layers
        Filters, see :func:`~analysis.core.adapter.select_modules`.
    progress : bool
        Show a progress bar (tqdm) on standard error.
    keep_cache : bool
        Keep each module's float64 SVD after use (default: drop it, so memory
        stays bounded by one module at a time).
    jobs : int, optional
        Modules compared at once (threads; BLAS pinned to one thread in each, see
        :mod:`analysis.core.threads`); default: the cores available to the process. Memory is bounded by
        ``jobs`` modules of each adapter.

    Returns
    -------
    PairSweep
    """
    import pandas as pd

    for s in sides:
        if s not in SIDES:
            raise ValueError(f"side must be among {SIDES}, got {s!r}")
    ea, eb = a.expanded(), b.expanded()
    shared = select_modules(set(ea) & set(eb), modules=modules, layers=layers)
    only_a = sorted(set(ea) - set(eb), key=natural_key)
    only_b = sorted(set(eb) - set(ea), key=natural_key)
    def one(name):
        la, lb = ea[name], eb[name]
        if la.shape != lb.shape:
            return name, None, None
        res_by_side = module_similarities(la, lb, sides=sides)  # first: it takes the factors' QRs in one pass
        layer, module = split_name(name)
        row = {"name": name, "layer": layer, "module": module, "d_out": la.shape[0],
               "d_in": la.shape[1], "r_a": la.r, "r_b": lb.r, "rank_a": la.rank, "rank_b": lb.rank,
               "fro_a": _maybe(la.norm), "fro_b": _maybe(lb.norm),
               "zero_a": la.is_zero, "zero_b": lb.is_zero}
        for s in sides:
            res = res_by_side[s]
            row[f"phi11_{s}"] = np.nan if res.phi11 is None else res.phi11
            row[f"shared_dims_{s}"] = res.shared_dims()
            ang = res.angles
            row[f"min_angle_deg_{s}"] = float(np.degrees(ang[0])) if ang.size else np.nan
            row[f"median_angle_deg_{s}"] = float(np.degrees(np.median(ang))) if ang.size else np.nan
            row[f"max_angle_deg_{s}"] = float(np.degrees(ang[-1])) if ang.size else np.nan
            row[f"mean_cos2_{s}"] = float(np.mean(np.cos(ang) ** 2)) if ang.size else np.nan
            row[f"ties_{s}"] = len(res.ties1) + len(res.ties2)
            sa, sb = la.side_singular_values(s), lb.side_singular_values(s)  # cached by module_similarities
            row[f"top_ratio_a_{s}"], row[f"top_ratio_b_{s}"] = top_ratio(sa), top_ratio(sb)
            row[f"near_tie_{s}"] = not res.zero and (near_tie(sa) or near_tie(sb))
        if not keep_cache:
            la.clear_cache()
            lb.clear_cache()
        return name, row, res_by_side

    rows, results, mismatched = [], {}, []
    done = map_ordered(one, shared, jobs=jobs)
    for name, row, res_by_side in progress_bar(done, enabled=progress, total=len(shared)):
        if row is None:
            mismatched.append(name)
            continue
        results[name] = res_by_side
        rows.append(row)
    frame = with_roles(pd.DataFrame(rows))
    return PairSweep(frame=frame, results=results, only_a=only_a, only_b=only_b,
                     mismatched=mismatched)
