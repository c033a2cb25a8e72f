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

import re

import numpy as np

from analysis.adapter import Adapter, split_name
from analysis.metrics.spectrum import rank_for_energy, rank_for_error, spectrum_summary

__all__ = ["spectra_frame", "spectra_long", "SPECTRA_COLUMNS"]

#: Columns of :func:`spectra_frame` (beyond the ``rank_e…`` / ``rank_err…`` extras).
SPECTRA_COLUMNS = ("name", "layer", "module", "d_out", "d_in", "r", "rank", "zero", "sigma1", "fro",
                   "effective_rank", "stable_rank", "rank90", "rank99", "top1_energy")


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _modules(adapter, modules, layers):
    from analysis.sweep import select_modules

    if not isinstance(adapter, Adapter):
        raise TypeError(f"expected an analysis.Adapter, got {type(adapter).__name__}; "
                        "read one with analysis.load_adapter(path)")
    ex = adapter.expanded()
    names = select_modules(sorted(ex, key=_natural_key), modules=modules, layers=layers)
    return ex, names


def _pct(x):
    return f"{100 * x:g}".replace(".", "_")


def spectra_frame(adapter, *, energies=(0.9, 0.99), errors=(), modules=None, layers=None,
                  keep_cache=False):
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
        Filters, see :func:`analysis.sweep.select_modules`.
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
    rows = []
    for name in names:
        lr = ex[name]
        S = lr.singular_values()  # (k,)
        summ = spectrum_summary(S)
        layer, module = split_name(name)
        row = {"name": name, "layer": layer, "module": module, "d_out": lr.shape[0], "d_in": lr.shape[1],
               "r": lr.r, "rank": lr.rank, "zero": lr.is_zero, **summ.to_dict()}
        row["rank"] = lr.rank
        for e in energies:
            row[f"rank_e{_pct(e)}"] = rank_for_energy(S, e)
        for eps in errors:
            row[f"rank_err{_pct(eps)}"] = rank_for_error(S, eps)
        rows.append(row)
        if not keep_cache:
            lr.clear_cache()
    cols = list(SPECTRA_COLUMNS) + [c for c in (rows[0] if rows else {}) if c not in SPECTRA_COLUMNS]
    return pd.DataFrame(rows, columns=cols)


def spectra_long(adapter, *, modules=None, layers=None, keep_cache=False):
    """Long form: one row per (module, k) for k = 1 … rank.

    Parameters
    ----------
    adapter : Adapter
    modules, layers
        Filters, see :func:`analysis.sweep.select_modules`.
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
    parts = []
    for name in names:
        lr = ex[name]
        S = lr.singular_values()  # (k,)
        if not keep_cache:
            lr.clear_cache()
        if S.size == 0:
            continue
        tot = float(np.sum(S * S))
        energy = np.cumsum(S * S) / tot
        layer, module = split_name(name)
        parts.append(pd.DataFrame({
            "name": name, "layer": layer, "module": module, "k": np.arange(1, S.size + 1), "sigma": S,
            "share": S * S / tot, "energy": energy,
            "rel_error": np.sqrt(np.clip(1.0 - energy, 0.0, None))}))
    cols = ["name", "layer", "module", "k", "sigma", "share", "energy", "rel_error"]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]
