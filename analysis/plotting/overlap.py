"""Fig. 8: how much of ΔW's span lies in W's top-i singular directions, as i goes down W's spectrum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError
from analysis.plotting.common import PlotArtists, get_ax

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from matplotlib.axes import Axes

    from analysis.metrics.correlation import WeightOverlap

__all__ = ["plot_weight_overlap"]


def _as_items(results, labels):
    if hasattr(results, "phi"):
        results = [results]
    if isinstance(results, Mapping):
        return list(results.items())
    results = list(results)
    if labels is None:
        labels = [f"r = {res.r}" for res in results]
    if len(labels) != len(results):
        raise InputError(f"got {len(labels)} labels for {len(results)} results")
    return list(zip(labels, results))


def plot_weight_overlap(results: WeightOverlap | Sequence[WeightOverlap] | Mapping[str, WeightOverlap], *,
                        ax: Axes | None = None, j: int | None = None, labels: Sequence[str] | None = None,
                        show_null: bool = True, show_random: bool = False, log_x: bool = True,
                        colors: Sequence[Any] | None = None, title: str | None = None,
                        legend: bool = True) -> PlotArtists:
    """φ(i, j) between W's top-i and ΔW's top-j directions, as a function of i.

    Parameters
    ----------
    results : WeightOverlap or sequence of WeightOverlap or Mapping[str, WeightOverlap]
        One curve each (e.g. one per rank r); all on the same side.
    ax : matplotlib.axes.Axes, optional
    j : int or None
        ΔW's directions: the top-j (``j=1``: ΔW's top direction). Default: all
        of them (j = rank of ΔW), so that φ(i, j) for i ≥ j is the fraction of
        ΔW's whole span inside W's top-i subspace.
    labels : sequence of str, optional
        Default ``"r = …"``.
    show_null : bool
        Dashed: the random-subspace expectation max(i, j) / d, per curve.
    show_random : bool
        Dotted: a seeded random subspace of the same dimension in place of ΔW's.
    log_x : bool
    colors : sequence, optional
    title : str, optional
    legend : bool

    Returns
    -------
    PlotArtists
        ``"lines"`` (one φ curve per non-zero result), ``"nulls"`` (dashed,
        one per curve, then a grey legend-only line; empty unless
        ``show_null``), ``"random"`` (dotted, likewise; empty unless
        ``show_random``) and ``"legend"`` (None when not drawn).
    """
    items = _as_items(results, labels)
    ax = get_ax(ax)
    lines, nulls, randoms = [], [], []
    if colors is None:
        from matplotlib import colormaps

        cm = colormaps["plasma"]
        colors = [cm(x) for x in np.linspace(0.0, 0.8, max(len(items), 1))]
    side = None
    for (label, res), color in zip(items, colors):
        if res.zero:
            continue
        side = res.side
        jj = res.k if j is None else min(int(j), res.k)
        phi, rnd, null = res.curve(jj)
        i = np.arange(1, phi.size + 1)
        (ln,) = ax.plot(i, phi, color=color, lw=1.6, label=f"{label} (j = {jj})")
        lines.append(ln)
        if show_null:
            nulls.append(ax.plot(i, null, color=color, lw=1.0, ls="--", alpha=0.7)[0])
        if show_random:
            randoms.append(ax.plot(i, rnd, color=color, lw=0.8, ls=":", alpha=0.8)[0])
    if show_null:
        nulls.append(ax.plot([], [], color="grey", ls="--", label="random null max(i, j)/d")[0])
    if show_random:
        randoms.append(ax.plot([], [], color="grey", ls=":", label="a random subspace (one draw)")[0])
    if log_x:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    which = {"output": "left (output)", "input": "right (input)"}.get(side, "")  # type: ignore[arg-type]
    ax.set_xlabel(f"i: top-i {which} singular directions of W")
    ax.set_ylabel(r"$\phi(i, j)$ with $\Delta W$'s top-j")
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title)
    leg = ax.legend(fontsize=7, loc="upper left") if legend else None
    return PlotArtists(ax, {"lines": lines, "nulls": nulls, "random": randoms, "legend": leg})
