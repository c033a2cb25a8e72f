"""Singular-value spectra of ΔW: per layer (:func:`plot_spectra`) and as energy curves (:func:`plot_energy_spectra`).

Rank measures per layer (``rank90``, ``effective_rank`` of
:func:`analysis.sweeps.spectra.spectra_frame`) draw with
:func:`analysis.plotting.plot_layer_profile`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import split_name
from analysis.errors import InputError
from analysis.plotting.common import PlotArtists, check_columns, get_ax, module_label

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    import pandas as pd
    from matplotlib.axes import Axes
    from numpy.typing import ArrayLike

    from analysis.sweeps.adapter import AdapterSweep

__all__ = ["plot_spectra", "plot_energy_spectra"]

_Y = {"energy": "energy kept by rank k", "rel_error": "relative error ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F",
      "sigma": "singular value σ_k", "share": "share of ‖ΔW‖_F² in σ_k"}
_STYLES = ("-", "--", ":", "-.")


def plot_spectra(spectra: AdapterSweep | Mapping[str, ArrayLike], *, ax: Axes | None = None,
                 module: str | None = None, normalize: bool = True, logy: bool = True, cmap: str = "viridis",
                 colorbar: bool = True, title: str | None = None, show_rank: bool = True) -> PlotArtists:
    """Singular values σ_1 ≥ σ_2 ≥ … of each module's ΔW, against their index.

    Parameters
    ----------
    spectra : AdapterSweep or Mapping[str, (k,) array_like]
        ``AdapterSweep.spectra`` or any mapping module name -> singular values.
    ax : matplotlib.axes.Axes, optional
    module : str, optional
        Keep only names containing it (e.g. ``"q_proj"``).
    normalize : bool
        Divide each spectrum by its σ_1 (shapes compare across layers).
    logy : bool
    cmap : str
        Colour by layer (depth).
    colorbar : bool
        A colour bar labelled "layer".
    title : str, optional
    show_rank : bool
        Mark the stored rank r with a vertical dotted line (when all spectra share it).

    Returns
    -------
    PlotArtists
        ``"lines"`` (one Line2D per module, in the mapping's order) and
        ``"colorbar"`` (None when not drawn).
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if hasattr(spectra, "spectra"):
        spectra = spectra.spectra
    if not isinstance(spectra, Mapping):
        raise TypeError(f"spectra must be an AdapterSweep or a mapping name -> singular values, got "
                        f"{type(spectra).__name__}")
    items = [(n, np.asarray(s, dtype=float)) for n, s in spectra.items() if module is None or module in n]
    items = [(n, s) for n, s in items if s.size]
    if not items:
        raise InputError(f"no non-zero spectrum to draw (module filter {module!r})")
    ax = get_ax(ax)
    layers = [split_name(n)[0] for n, _ in items]
    known = [lay for lay in layers if lay is not None]
    norm = Normalize(min(known, default=0), max(known, default=1))
    cm = colormaps[cmap]
    lines = []
    for (n, s), lay in zip(items, layers):
        v = s / s[0] if normalize else s
        i = np.arange(1, v.size + 1)
        lines.append(ax.plot(i, v, color=cm(norm(lay)) if lay is not None else "k", lw=1.0, alpha=0.85)[0])
    from matplotlib.ticker import MaxNLocator, NullFormatter

    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("i (singular value index)")
    ax.set_ylabel(r"$\sigma_i / \sigma_1$" if normalize else r"$\sigma_i$")
    ax.grid(True, alpha=0.3)
    if title is None and module is not None:
        title = f"spectrum of {module_label(module)} per layer"
    if title:
        ax.set_title(title)
    cb = None
    if colorbar and known:
        cb = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cm), ax=ax, fraction=0.046, pad=0.03)
        cb.set_label("layer")
        cb.locator = MaxNLocator(integer=True)
        cb.update_ticks()
    return PlotArtists(ax, {"lines": lines, "colorbar": cb})


def plot_energy_spectra(frame: pd.DataFrame, *, ax: Axes | None = None, y: str = "energy",
                        modules: Sequence[str] | None = None, cmap: str = "viridis",
                        guides: Sequence[float] = (0.9, 0.99), colorbar: bool = True,
                        **line_kw: Any) -> PlotArtists:
    """One line per module over k: energy kept, error, σ_k or share.

    Parameters
    ----------
    frame : pandas.DataFrame
        The long frame of :func:`analysis.sweeps.spectra.spectra_long` (columns
        ``name, layer, module, k`` and ``y``).
    ax : matplotlib Axes, optional
    y : {"energy", "rel_error", "sigma", "share"}
    modules : sequence of str, optional
        Module types to draw (values of the ``module`` column); default all.
        Each type gets its own line style, each layer a colour.
    cmap : str
        Colour map over layers.
    guides : sequence of float
        Horizontal guide lines (energy levels for ``y="energy"``; their
        error √(1 − e) for ``y="rel_error"``; none otherwise).
    colorbar : bool
        Add a colour bar for the layer index.
    **line_kw
        Passed to ``Axes.plot``.

    Returns
    -------
    PlotArtists
        ``"lines"`` (one Line2D per module), ``"guides"`` (the dotted
        horizontal lines), ``"colorbar"`` (None when not drawn) and
        ``"legend"`` (of the line styles; None with a single module type).
    """
    if y not in _Y:
        raise InputError(f"y must be one of {sorted(_Y)}, got {y!r}")
    check_columns(frame, ("name", "layer", "module", "k", y),
                  "the long frame of analysis.sweeps.spectra.spectra_long")
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    ax = get_ax(ax)
    types = list(dict.fromkeys(frame["module"])) if modules is None else list(modules)
    sub = frame[frame["module"].isin(types)]
    layers = sub["layer"].dropna()
    norm = mpl.colors.Normalize(float(layers.min()) if len(layers) else 0.0,
                                float(layers.max()) if len(layers) and layers.max() > layers.min() else 1.0)
    cm = mpl.colormaps[cmap]
    lines = []
    for name, g in sub.groupby("name", sort=False):
        layer = g["layer"].iloc[0]
        style = _STYLES[types.index(g["module"].iloc[0]) % len(_STYLES)]
        color = cm(norm(layer)) if layer is not None and not (isinstance(layer, float) and np.isnan(layer)) else "0.4"
        kw = {"lw": 1.0, "alpha": 0.8, **line_kw}
        (ln,) = ax.plot(g["k"].to_numpy(), g[y].to_numpy(), style, color=color, label=name, **kw)
        lines.append(ln)
    drawn = []
    levels = {"energy": list(guides), "rel_error": [float(np.sqrt(1 - e)) for e in guides]}.get(y, [])
    for v in levels:
        drawn.append(ax.axhline(v, color="0.5", lw=0.8, ls=":", zorder=0))
    ax.set_xlabel("rank k")
    ax.set_ylabel(_Y[y])
    if y in ("sigma", "share") and len(sub) and (sub[y] > 0).all():
        ax.set_yscale("log")
    legend = None
    if len(types) > 1:
        handles = [Line2D([], [], color="0.3", ls=_STYLES[i % len(_STYLES)], label=module_label(t))
                   for i, t in enumerate(types)]
        legend = ax.legend(handles=handles, loc="best", fontsize="small")
    cb = None
    if colorbar and len(layers):
        cb = ax.figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, label="layer")
    return PlotArtists(ax, {"lines": lines, "guides": drawn, "colorbar": cb, "legend": legend})
