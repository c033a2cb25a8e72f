"""Subspace similarity of every module two adapters share, into a tidy DataFrame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter, split_name
from analysis.errors import InputError, MissingAlphaError
from analysis.io.roles import with_roles
from analysis.metrics.pair import SIDES, module_similarities
from analysis.metrics.spectrum import near_tie, top_ratio
from analysis.sweeps.driver import pair_modules, sweep_modules

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import pandas as pd

    from analysis.core.adapter import Layers
    from analysis.core.lowrank import LowRank
    from analysis.sweeps.driver import ModulePairs
    from analysis.sweeps.progress import Progress

__all__ = ["PairSweep", "compare_adapters", "pair_row", "pair_sweep"]


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
        Shared names whose ΔW shapes differ (not compared; see :func:`~analysis.sweeps.driver.pair_modules`).
    """

    frame: pd.DataFrame
    results: dict = field(default_factory=dict)
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)


def pair_row(name: str, la: LowRank, lb: LowRank, *, sides: Sequence[str] = SIDES) -> tuple[dict, dict]:
    """One row of :func:`compare_adapters`' frame, and the φ results by side, for one module of two adapters.

    Parameters
    ----------
    name : str
    la, lb : LowRank
        The module in each adapter (ΔW of one shape: see :func:`~analysis.sweeps.driver.pair_modules`).
    sides : sequence of {"A", "B", "input", "output"}

    Returns
    -------
    row : dict
        The frame's columns for this module (see :class:`PairSweep`).
    results : dict[str, SimilarityResult]
        By side.
    """
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
    return row, res_by_side


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
    for s in sides:
        if s not in SIDES:
            raise InputError(f"side must be among {SIDES}, got {s!r}")
    pairs = pair_modules(a, b, modules=modules, layers=layers)
    done = sweep_modules(lambda name, la, lb: pair_row(name, la, lb, sides=sides), pairs.names,
                         modules=(pairs.a, pairs.b), keep_cache=keep_cache, jobs=jobs, progress=progress)
    return pair_sweep(done, pairs)


def pair_sweep(done: Iterable[tuple[dict, dict]], pairs: ModulePairs) -> PairSweep:
    """The :class:`PairSweep` of :func:`pair_row` results, in module order.

    Parameters
    ----------
    done : iterable of (row, results)
        :func:`pair_row` of each module of ``pairs.names``, in that order.
    pairs : ModulePairs
        The split the rows were computed for (its one-sided and mismatched names are recorded).

    Returns
    -------
    PairSweep
    """
    import pandas as pd

    rows, results = [], {}
    for row, res_by_side in done:
        results[row["name"]] = res_by_side
        rows.append(row)
    return PairSweep(frame=with_roles(pd.DataFrame(rows)), results=results, only_a=pairs.only_a,
                     only_b=pairs.only_b, mismatched=pairs.mismatched)
