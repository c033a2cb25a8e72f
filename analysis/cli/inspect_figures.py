"""The figure of ``python -m analysis.inspect ADAPTER --out DIR``: the spectrum of every module's ΔW.

Drawn with the plotting layer's :func:`~analysis.plotting.plot_spectra` and
:func:`~analysis.plotting.plot_energy_spectra`; saved as the other commands save theirs (PNG, 110 dpi, the
folder written whole or not at all).
"""

from __future__ import annotations

import os
import textwrap
from typing import TYPE_CHECKING

from analysis.io.outputs import atomic_output
from analysis.io.roles import role_label
from analysis.metrics.spectrum import energy_retained
from analysis.plotting import plot_energy_spectra, plot_spectra

if TYPE_CHECKING:
    from typing import Any

    from matplotlib.figure import Figure

    from analysis.sweeps.inspect import Inspection

__all__ = ["spectrum_figure", "write_spectrum_figure"]


def _group_of(row, several):
    """A module's group in the figure: ``(key, legend label)`` from its stack and role."""
    label = role_label(row["role"]) + (f" ({row['stack']})" if several and row["stack"] else "")
    return f"{row['stack']}/{row['role']}", label


def _long(ins, names, groups):
    """The long frame ``name, layer, module, k, energy`` of :func:`~analysis.plotting.plot_energy_spectra`,
    ``module`` holding each module's group key."""
    import numpy as np
    import pandas as pd

    parts = []
    for n in names:
        e = energy_retained(ins.spectra[n])
        key, _ = groups[n]
        layer = ins.frame.loc[ins.frame["name"] == n, "layer"].iloc[0]
        parts.append(pd.DataFrame({"name": n, "layer": layer, "module": key, "k": np.arange(1, e.size + 1),
                                   "energy": e}))
    return pd.concat(parts, ignore_index=True)


def spectrum_figure(ins: Inspection, *, max_groups: int = 4) -> Figure | None:
    """The spectrum figure of one adapter: normalised singular values, and the energy kept by rank k.

    Parameters
    ----------
    ins : Inspection
    max_groups : int
        Groups of modules (stack and role) drawn in the energy panel, the most numerous first, one line
        style each.

    Returns
    -------
    matplotlib.figure.Figure or None
        None when every module's update is zero.
    """
    from collections import Counter

    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    live = ins.frame[[bool(ins.spectra[n].size) and ins.spectra[n][0] > 0 for n in ins.frame["name"]]]
    if not len(live):
        return None
    several = live["stack"].nunique() > 1
    groups = {row["name"]: _group_of(row, several) for row in live.to_dict(orient="records")}
    counts = Counter(groups.values())
    shown = [g for g, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:max_groups]]  # stable: table order
    fig = Figure(figsize=(10.5, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    names = list(live["name"])
    plot_spectra({n: ins.spectra[n] for n in names}, ax=ax1, colorbar=False,
                 title="singular values of ΔW, one line per module")
    ax1.title.set_fontsize("medium")
    art = plot_energy_spectra(_long(ins, names, groups), ax=ax2, modules=[k for k, _ in shown],
                              guides=(0.5, 0.9, 0.99))
    if art["legend"] is not None:  # the groups in words, with the line style each got
        art["legend"].remove()
    style: dict[str, Any] = {}
    for ln in art["lines"]:
        style.setdefault(groups[ln.get_label()][0], ln.get_linestyle())
    if len(shown) > 1:
        ax2.legend(handles=[Line2D([], [], color="0.3", ls=style[k], label=lab) for k, lab in shown],
                   loc="lower right", fontsize="small")
    more = "" if len(counts) <= max_groups else f" ({max_groups} of {len(counts)} groups)"
    ax2.set_title(f"share of $\\|\\Delta W\\|_F^2$ kept by the top k directions{more}", fontsize="medium")
    ax2.set_ylim(0, 1.02)
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    tag = os.path.basename(os.path.normpath(ins.path)) or ins.path
    fig.suptitle(textwrap.shorten(f"{tag}: {ins.label}, {len(ins.frame)} modules", 110), fontsize=11)
    return fig


def write_spectrum_figure(ins: Inspection, out: str, *, force: bool = False) -> list[str]:
    """Write ``spectrum.png`` (:func:`spectrum_figure`) into the folder ``out``, whole or not at all.

    Parameters
    ----------
    ins : Inspection
    out : str
        The folder (built beside it, then renamed into place).
    force : bool
        Replace an existing, non-empty ``out`` (as a whole).

    Returns
    -------
    list of str
        The file names written (none when every update is zero).
    """
    fig = spectrum_figure(ins)
    with atomic_output(out, force=force, folder=True) as tmp:
        if fig is None:
            return []
        fig.savefig(os.path.join(tmp, "spectrum.png"), dpi=110)
        return ["spectrum.png"]
