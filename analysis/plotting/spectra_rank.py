"""Energy curves of ΔW's spectrum and advised ranks per layer.

Each function draws on one Axes and returns its artists; no computation of
metrics, no ``show()``, no ``savefig``. Rank measures per layer (``rank90``,
``effective_rank`` of :func:`analysis.sweeps.spectra.spectra_frame`) draw with
:func:`analysis.plotting.plot_layer_profile`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from analysis.plotting.common import get_ax, module_label

__all__ = ["SpectraArtists", "RankArtists", "plot_energy_spectra", "plot_advised_rank"]

_Y = {"energy": "energy kept by rank k", "rel_error": "relative error ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F",
      "sigma": "singular value σ_k", "share": "share of ‖ΔW‖_F² in σ_k"}
_STYLES = ("-", "--", ":", "-.")


class SpectraArtists(NamedTuple):
    """What :func:`plot_energy_spectra` drew."""

    ax: object
    lines: list
    guides: list
    colorbar: object


class RankArtists(NamedTuple):
    """What :func:`plot_advised_rank` drew."""

    ax: object
    lines: list
    extras: list


def _need(frame, cols, what):
    missing = set(cols) - set(getattr(frame, "columns", ()))
    if missing:
        raise ValueError(f"expected a DataFrame with columns {sorted(cols)} ({what}); missing {sorted(missing)}")


def plot_energy_spectra(frame, *, ax=None, y="energy", modules=None, cmap="viridis", guides=(0.9, 0.99),
                 colorbar=True, **line_kw):
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
    SpectraArtists
    """
    if y not in _Y:
        raise ValueError(f"y must be one of {sorted(_Y)}, got {y!r}")
    _need(frame, ("name", "layer", "module", "k", y), "the long frame of analysis.sweeps.spectra.spectra_long")
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
    if len(types) > 1:
        handles = [Line2D([], [], color="0.3", ls=_STYLES[i % len(_STYLES)], label=module_label(t))
                   for i, t in enumerate(types)]
        ax.legend(handles=handles, loc="best", fontsize="small")
    cb = None
    if colorbar and len(layers):
        cb = ax.figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, label="layer")
    return SpectraArtists(ax, lines, drawn, cb)


def plot_advised_rank(advice, *, ax=None, show_cap="auto", **profile_kw):
    """Advised rank per layer, one line per module type (from :func:`analysis.sweeps.advice.advise_ranks`).

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
    RankArtists
    """
    from analysis.plotting.layers import plot_layer_profile

    frame = getattr(advice, "frame", advice)
    _need(frame, ("layer", "module", "advised"), "RankAdvice.frame")
    side = getattr(advice, "side", None)
    n_std = getattr(advice, "n_std", None)
    ylabel = "advised rank" + (f" (side {side}, {n_std:g} sd)" if side is not None else "")
    if show_cap not in (True, False, "auto"):
        raise ValueError(f"show_cap must be True, False or 'auto', got {show_cap!r}")
    any_capped = "capped" in frame.columns and bool(frame["capped"].any())
    cap = "cap" in frame.columns and (show_cap is True or (show_cap == "auto" and any_capped))
    profile_kw.setdefault("ylabel", ylabel)
    ax = get_ax(ax)
    lines = plot_layer_profile(frame, "advised", ax=ax, null="cap" if cap else None,
                               null_label="cap: smaller rank", **profile_kw)
    extras = []
    if cap and any_capped:
        c = frame[frame["capped"].astype(bool)]
        extras.append(ax.scatter(c["layer"].to_numpy(dtype=float), c["advised"].to_numpy(dtype=float),
                                 s=60, facecolors="none", edgecolors="crimson", lw=1.2, zorder=3,
                                 label="at the cap"))
        ax.legend(loc="best", fontsize="small")
    ax.set_ylim(bottom=0)
    return RankArtists(ax, lines, extras)
