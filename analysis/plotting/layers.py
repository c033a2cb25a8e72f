"""A per-module measure across the depth of the network (beyond the paper: every layer at once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from analysis.errors import InputError
from analysis.plotting.common import PlotArtists, get_ax, module_label

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    import pandas as pd
    from matplotlib.axes import Axes

__all__ = ["plot_layer_profile"]


def plot_layer_profile(frame: pd.DataFrame, y: str, *, ax: Axes | None = None, x: str = "layer",
                       hue: str | None = "module", order: Sequence[Any] | None = None,
                       null: str | float | None = None, null_label: str = "random null", logy: bool = False,
                       labels: Mapping[Any, str] | None = None,
                       colors: Mapping[Any, Any] | Sequence[Any] | None = None, markers: str = "o",
                       title: str | None = None, ylabel: str | None = None, xlabel: str = "layer",
                       legend: bool = True, legend_kw: dict[str, Any] | None = None) -> PlotArtists:
    """One line per group (e.g. per module) of ``frame[y]`` against the layer.

    Parameters
    ----------
    frame : pandas.DataFrame
        A tidy sweep frame (one row per (layer, module)), e.g. ``PairSweep.frame``
        or ``AdapterSweep.frame``; several may be concatenated with a column
        telling them apart (``hue``).
    y : str
        Column to draw (e.g. ``"phi11_A"``, ``"amplification"``).
    ax : matplotlib.axes.Axes, optional
    x : str
        Column on the x axis.
    hue : str or None
        Column whose values make separate lines.
    order : sequence, optional
        The hue values in legend order (default: sorted); others are dropped.
    null : str or float, optional
        A column (drawn dashed, per group) or a constant (one dashed line):
        what the measure would be for random directions.
    null_label : str
    logy : bool
    labels : Mapping, optional
        Legend label per hue value; default the value (modules as ΔW_q, ΔW_v).
    colors : Mapping or sequence, optional
    markers : str
    title, ylabel, xlabel : str
    legend : bool
    legend_kw : dict, optional
        Passed to ``Axes.legend`` (e.g. ``loc``, ``bbox_to_anchor``, ``ncol``).

    Returns
    -------
    PlotArtists
        ``"lines"`` (one Line2D per group, in legend order), ``"nulls"`` (the
        dashed null lines: one per group and a grey legend-only line when
        ``null`` is a column, one horizontal line when it is a constant, else
        empty) and ``"legend"`` (None when not drawn).
    """
    cols = {x, y} | ({hue} if hue else set()) | ({null} if isinstance(null, str) else set())
    missing = cols - set(frame.columns)
    if missing:
        raise InputError(f"frame has no column(s) {sorted(missing)}; it has {list(frame.columns)[:12]} …")
    ax = get_ax(ax)
    groups = [(None, frame)] if hue is None else list(frame.groupby(hue, sort=True))
    if order is not None and hue is not None:
        by = dict(groups)
        groups = [(g, by[g]) for g in order if g in by]
    if colors is None:
        from matplotlib import colormaps

        cm = colormaps["tab10"]
        colors = {g: cm(n % 10) for n, (g, _) in enumerate(groups)}
    elif not hasattr(colors, "get"):
        colors = {g: c for (g, _), c in zip(groups, colors)}
    lines, nulls = [], []
    for g, sub in groups:
        sub = sub.sort_values(x)
        if labels is not None and g in labels:
            lab = labels[g]
        elif hue == "module":
            lab = module_label(g)  # type: ignore[arg-type]  # a module type: str
        else:
            lab = str(g) if g is not None else y
        c = colors.get(g)  # type: ignore[union-attr]  # a Mapping by now
        (ln,) = ax.plot(sub[x].to_numpy(dtype=float), sub[y].to_numpy(dtype=float), marker=markers, ms=3,
                        lw=1.4, color=c, label=lab)
        lines.append(ln)
        if isinstance(null, str):
            nulls.append(ax.plot(sub[x].to_numpy(dtype=float), sub[null].to_numpy(dtype=float), ls="--",
                                 lw=1.0, color=c, alpha=0.7)[0])
    if isinstance(null, str):
        nulls.append(ax.plot([], [], ls="--", color="grey", label=null_label)[0])
    elif null is not None:
        nulls.append(ax.axhline(float(null), ls="--", color="grey", lw=1.0, label=null_label))
    if logy:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or y)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    leg = ax.legend(**{"fontsize": 7, **(legend_kw or {})}) if legend else None
    return PlotArtists(ax, {"lines": lines, "nulls": nulls, "legend": leg})
