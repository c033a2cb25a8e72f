"""Advised LoRA rank per layer (from :func:`analysis.sweeps.advice.advise_ranks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from analysis.errors import InputError
from analysis.plotting.common import PlotArtists, check_columns, get_ax
from analysis.plotting.layers import plot_layer_profile

if TYPE_CHECKING:
    from typing import Any

    import pandas as pd
    from matplotlib.axes import Axes

    from analysis.sweeps.advice import RankAdvice

__all__ = ["plot_advised_rank"]

_SHOW_CAP = (True, False, "auto")


def plot_advised_rank(advice: RankAdvice | pd.DataFrame, *, ax: Axes | None = None, show_cap: bool | str = "auto",
                      **profile_kw: Any) -> PlotArtists:
    """Advised rank per layer, one line per module type.

    Parameters
    ----------
    advice : RankAdvice or pandas.DataFrame
        A frame needs ``layer, module, advised`` (and ``cap``, ``capped`` for
        the cap lines and markers).
    ax : matplotlib Axes, optional
    show_cap : bool or "auto"
        Draw each module type's cap (the smaller numerical rank of the two
        adapters) dashed, and ring the points that reached it (the true need
        may be higher there). ``"auto"``: only when some module reached it
        (otherwise a cap far above the advice would flatten the plot).
    **profile_kw
        Passed to :func:`analysis.plotting.plot_layer_profile` (``colors``,
        ``labels``, ``title``, …).

    Returns
    -------
    PlotArtists
        The keys of :func:`~analysis.plotting.plot_layer_profile` (``"lines"``:
        the advised rank per module type; ``"nulls"``: the dashed caps, empty
        when not drawn; ``"legend"``) and ``"extras"``: the rings on the points
        at the cap (a list with one PathCollection, or empty).
    """
    frame: pd.DataFrame = getattr(advice, "frame", advice)
    check_columns(frame, ("layer", "module", "advised"), "RankAdvice.frame")
    side = getattr(advice, "side", None)
    n_std = getattr(advice, "n_std", None)
    ylabel = "advised rank" + (f" (side {side}, {n_std:g} sd)" if side is not None else "")
    if show_cap not in _SHOW_CAP:
        raise InputError(f"show_cap must be True, False or 'auto', got {show_cap!r}")
    any_capped = "capped" in frame.columns and bool(frame["capped"].any())
    cap = "cap" in frame.columns and (show_cap is True or (show_cap == "auto" and any_capped))
    profile_kw.setdefault("ylabel", ylabel)
    ax = get_ax(ax)
    art = plot_layer_profile(frame, "advised", ax=ax, null="cap" if cap else None,
                             null_label="cap: smaller rank", **profile_kw)
    legend = art["legend"]
    extras = []
    if cap and any_capped:
        c = frame[frame["capped"].astype(bool)]
        extras.append(ax.scatter(c["layer"].to_numpy(dtype=float), c["advised"].to_numpy(dtype=float),
                                 s=60, facecolors="none", edgecolors="crimson", lw=1.2, zorder=3,
                                 label="at the cap"))
        legend = ax.legend(loc="best", fontsize="small")
    ax.set_ylim(bottom=0)
    return PlotArtists(ax, {"lines": art["lines"], "nulls": art["nulls"], "legend": legend, "extras": extras})
