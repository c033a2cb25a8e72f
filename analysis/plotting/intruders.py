"""Intruder dimensions per layer (from :func:`analysis.intruders.intruder_sweep`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from analysis.errors import InputError
from analysis.plotting.common import PlotArtists, get_ax, module_label

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    import pandas as pd
    from matplotlib.axes import Axes

    from analysis.sweeps.intruders import IntruderSweep

__all__ = ["plot_intruders"]


def plot_intruders(frame: pd.DataFrame | IntruderSweep, *, ax: Axes | None = None,
                   modules: Sequence[str] | None = None, value: str = "count", top_k: int | None = None,
                   width: float = 0.8, **bar_kw: Any) -> PlotArtists:
    """Intruder count (or energy share) per layer, grouped bars per module type.

    Parameters
    ----------
    frame : pandas.DataFrame or IntruderSweep
        One row per module with ``layer``, ``module`` and ``value``.
    ax : matplotlib Axes, optional
    modules : sequence of str, optional
        Module types to draw; default all.
    value : {"count", "energy_share"}
    top_k : int, optional
        Sets the y limit for counts and names it on the axis.
    width : float
        Total width of one layer's group of bars.
    **bar_kw
        Passed to ``Axes.bar``.

    Returns
    -------
    PlotArtists
        ``"bars"`` (one BarContainer per module type) and ``"legend"``
        (None when no module type was drawn).
    """
    frame = getattr(frame, "frame", frame)
    if value not in ("count", "energy_share"):
        raise InputError(f"value must be 'count' or 'energy_share', got {value!r}")
    missing = {"layer", "module", value} - set(getattr(frame, "columns", ()))
    if missing:
        raise InputError(f"expected a frame with columns layer, module, {value} (from intruder_sweep); "
                         f"missing {sorted(missing)}")
    ax = get_ax(ax)
    types = list(dict.fromkeys(frame["module"])) if modules is None else list(modules)  # type: ignore[index]
    n = max(len(types), 1)
    bars = []
    for i, t in enumerate(types):
        g = frame[(frame["module"] == t) & frame["layer"].notna()].sort_values("layer")  # type: ignore[index]
        x = g["layer"].to_numpy(dtype=float) + (i - (n - 1) / 2) * width / n
        bars.append(ax.bar(x, g[value].to_numpy(dtype=float), width=width / n, label=module_label(t), **bar_kw))
    ax.set_xlabel("layer")
    if value == "count":
        ax.set_ylabel("intruder dimensions" + (f" (of top {top_k})" if top_k else ""))
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: whole numbers on the axis
        if top_k:
            ax.set_ylim(0, top_k)
    else:
        ax.set_ylabel("share of top-k energy in intruders")
        ax.set_ylim(0, 1)
    legend = ax.legend(loc="best", fontsize="small") if types else None
    return PlotArtists(ax, {"bars": bars, "legend": legend})
