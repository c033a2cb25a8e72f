"""Singular-value spectra and rank measures of every module of an adapter.

Everything comes from the exact factored SVD (:meth:`LowRank.svd`): no
d_out × d_in matrix is formed.

>>> import numpy as np
>>> from analysis import Adapter, LowRank
>>> lr = LowRank(np.eye(3, 5), np.diag([3.0, 2.0, 1.0]), scale=1.0, name="model.layers.0.q_proj")
>>> ad = Adapter({lr.name: lr}, path="-", format="peft")
>>> spectra_frame(ad)[["layer", "module", "rank", "sigma1", "rank90"]]
   layer  module  rank  sigma1  rank90
0      0  q_proj     3     3.0       2
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import select_modules, split_name
from analysis.metrics.spectrum import (energy_retained, rank_for_energy, rank_for_error, relative_error,
                                       spectrum_summary)
from analysis.io.roles import with_roles
from analysis.sweeps.common import require_adapter
from analysis.sweeps.driver import sweep_modules

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    import pandas as pd

    from analysis.core.adapter import Adapter, Layers
    from analysis.core.lowrank import LowRank

__all__ = ["spectra_frame", "spectra_long", "spectrum_row", "SPECTRA_COLUMNS"]

#: Columns of :func:`spectra_frame` (beyond the ``rank_e…`` / ``rank_err…`` extras).
SPECTRA_COLUMNS = ("name", "layer", "module", "d_out", "d_in", "r", "rank", "zero", "sigma1", "fro",
                   "effective_rank", "stable_rank", "rank90", "rank99", "top1_energy")


def spectrum_row(lr: LowRank, *, scale_free: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Spectrum measures of one update: the ``sigma1 … top1_energy`` columns of :data:`SPECTRA_COLUMNS`.

    Parameters
    ----------
    lr : LowRank
    scale_free : bool
        Where the scale is unknown (loralib without α), give the measures that do not depend on it
        (``sigma1`` and ``fro`` NaN) instead of raising :class:`~analysis.errors.MissingAlphaError`.

    Returns
    -------
    row : dict
    S : (k,) ndarray
        The singular values the row was computed from (scale included when known).
    """
    if scale_free and lr.scale is None:
        S = lr.side_singular_values("input")  # ΔW's spectrum up to the unknown scale
        row = spectrum_summary(S).to_dict()
        row["sigma1"] = row["fro"] = np.nan
    else:
        S = lr.singular_values()
        row = spectrum_summary(S).to_dict()
    row.pop("rank", None)
    return row, S


def _modules(adapter, modules, layers):
    ex = require_adapter(adapter).expanded()
    return ex, select_modules(ex, modules=modules, layers=layers)


def _pct(x):
    return f"{100 * x:g}".replace(".", "_")


def spectra_frame(adapter: Adapter, *, energies: Sequence[float] = (0.9, 0.99), errors: Sequence[float] = (),
                  modules: Sequence[str] | None = None, layers: set[int] | str | Layers | None = None,
                  keep_cache: bool = False) -> pd.DataFrame:
    """One row per module: shape, rank and spectrum measures of ΔW.

    Parameters
    ----------
    adapter : Adapter
        Scales must be known (loralib: pass ``alpha=`` to ``load_adapter``).
    energies : sequence of float in (0, 1]
        For each e, a column ``rank_e{100e}`` (e.g. ``rank_e95``): the
        smallest k whose best rank-k approximation keeps a fraction e of
        ‖ΔW‖_F². ``rank90`` and ``rank99`` are always present.
    errors : sequence of float in [0, 1)
        For each ε, a column ``rank_err{100ε}``: the smallest k with
        ‖ΔW − ΔW_k‖_F ≤ ε ‖ΔW‖_F.
    modules, layers
        Filters, see :func:`analysis.core.adapter.select_modules`.
    keep_cache : bool
        Keep each module's SVD cached (default: drop it after use).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SPECTRA_COLUMNS` plus the extras; ``zero`` is True for
        an exactly zero update (whose measures are 0).
    """
    import pandas as pd

    ex, names = _modules(adapter, modules, layers)

    def one(name, lr):
        srow, S = spectrum_row(lr)  # (k,) singular values
        layer, module = split_name(name)
        row = {"name": name, "layer": layer, "module": module, "d_out": lr.shape[0], "d_in": lr.shape[1],
               "r": lr.r, "rank": lr.rank, "zero": lr.is_zero, **srow}
        for e in energies:
            row[f"rank_e{_pct(e)}"] = rank_for_energy(S, e)
        for eps in errors:
            row[f"rank_err{_pct(eps)}"] = rank_for_error(S, eps)
        return row

    # module after module in the caller's thread, BLAS threads as the caller left them
    rows = list(sweep_modules(one, names, modules=(ex,), keep_cache=keep_cache, jobs=1, alone_threads=None))
    cols = list(SPECTRA_COLUMNS) + [c for c in (rows[0] if rows else {}) if c not in SPECTRA_COLUMNS]
    return with_roles(pd.DataFrame(rows, columns=cols))


def spectra_long(adapter: Adapter, *, modules: Sequence[str] | None = None,
                 layers: set[int] | str | Layers | None = None, keep_cache: bool = False) -> pd.DataFrame:
    """Long form: one row per (module, k) for k = 1 … rank.

    Parameters
    ----------
    adapter : Adapter
    modules, layers
        Filters, see :func:`analysis.core.adapter.select_modules`.
    keep_cache : bool

    Returns
    -------
    pandas.DataFrame
        Columns ``name, layer, module, k, sigma, share, energy, rel_error``:
        σ_k, its share σ_k² / Σσ² of ‖ΔW‖_F², the energy kept by the best
        rank-k approximation (cumulative share) and its relative Frobenius
        error √(1 − energy). A zero update contributes no rows.
    """
    import pandas as pd

    ex, names = _modules(adapter, modules, layers)

    def one(name, lr):
        S = lr.singular_values()  # (k,)
        if S.size == 0:
            return None
        energy = energy_retained(S)  # (k,)
        layer, module = split_name(name)
        return pd.DataFrame({
            "name": name, "layer": layer, "module": module, "k": np.arange(1, S.size + 1), "sigma": S,
            "share": np.diff(energy, prepend=0.0), "energy": energy, "rel_error": relative_error(energy)})

    parts = [p for p in sweep_modules(one, names, modules=(ex,), keep_cache=keep_cache, jobs=1, alone_threads=None)
             if p is not None]
    cols = ["name", "layer", "module", "k", "sigma", "share", "energy", "rel_error"]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]
