"""The merge advice against measured losses (``benchmarks/merge_losses.csv``, from
:mod:`analysis.reference.merge_losses`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.plotting.common import PlotArtists, check_columns, get_ax

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from analysis.sweeps.merge_advice import AdviceCheck

__all__ = ["plot_merge_losses"]

_MARKERS = {"linear": "s", "svd": "o", "ties": "^"}


def plot_merge_losses(table: pd.DataFrame, *, ax: Axes | None = None, predictor: str = "distance",
                      check: AdviceCheck | None = None, log_x: bool = True, legend: bool = True) -> PlotArtists:
    """Measured loss increase over each task's own adapter against an advice statistic, one point per
    (merged adapter, task).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows with ``kind == "merge"`` (others are ignored) and columns ``task, method, weighting, increase`` and
        ``predictor``.
    ax : matplotlib Axes, optional
    predictor : str
        The column on the x axis (``distance``: ‖M − ΔWᵢ‖² / ‖ΔWᵢ‖², ``foreign``, ``retained`` …).
    check : AdviceCheck, optional
        From :func:`analysis.sweeps.merge_advice.advice_vs_losses`: its Spearman ρ, permutation z and p are
        written in the corner.
    log_x : bool
        Logarithmic x axis (the distances span orders of magnitude).
    legend : bool

    Returns
    -------
    PlotArtists
        ``points`` (list of PathCollection, one per task and method), ``zero`` (the line at no increase),
        ``text`` (the check's Text, or None), ``legend`` (or None).
    """
    check_columns(table, ["task", "method", "weighting", "increase", predictor], "merge_losses table")
    t = table[table["kind"] == "merge"] if "kind" in table.columns else table
    x = np.asarray(t[predictor], dtype=float)
    y = np.asarray(t["increase"], dtype=float)
    ax = get_ax(ax)
    tasks = list(dict.fromkeys(t["task"]))
    colors = {task: f"C{i}" for i, task in enumerate(tasks)}
    points = []
    for (task, method), g in t.groupby(["task", "method"], sort=False):
        idx = t.index.get_indexer(g.index)
        filled = np.asarray(g["weighting"].astype(str) == "1")
        for fill in (True, False):
            sel = idx[filled == fill]
            if sel.size == 0:
                continue
            points.append(ax.scatter(x[sel], y[sel], marker=_MARKERS.get(method, "D"), s=28,
                                     facecolors=colors[task] if fill else "none", edgecolors=colors[task],
                                     linewidths=1.0, label=f"{task}, {method}" if fill else None))
    zero = ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    if log_x and np.all(x[np.isfinite(x)] > 0):
        ax.set_xscale("log")
    ax.set_xlabel({"distance": "‖M − ΔWᵢ‖² / ‖ΔWᵢ‖² (weight-space distance from task i's own update)",
                   "foreign": "energy the others add outside ΔWᵢ, in ‖ΔWᵢ‖²",
                   "retained": "share of ΔWᵢ the merge keeps"}.get(predictor, predictor), fontsize=8)
    ax.set_ylabel("validation loss: merged − own adapter (task i)")
    text = None
    if check is not None:
        text = ax.text(0.02, 0.98, f"Spearman ρ = {check.rho:+.2f} (n = {check.n})\npermutation null within tasks: "
                       f"{check.null_mean:+.2f} ± {check.null_sd:.2f}\nz = {check.z:+.1f}, p = {check.p:.2g}",
                       transform=ax.transAxes, va="top", ha="left", fontsize=8,
                       bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9})
    leg = None
    if legend:
        leg = ax.legend(fontsize=6, ncol=2, title="filled: weights 1; open: 1/n", title_fontsize=6,
                        loc="lower right")
    return PlotArtists(ax, {"points": points, "zero": zero, "text": text, "legend": leg})
