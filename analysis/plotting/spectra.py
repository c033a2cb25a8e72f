"""Singular-value spectra of ΔW, one line per layer, coloured by depth."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from analysis.plotting.common import get_ax, module_label

__all__ = ["plot_spectra"]


def plot_spectra(spectra, *, ax=None, module=None, normalize=True, logy=True, cmap="viridis", colorbar=True,
                 title=None, show_rank=True):
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
    list of matplotlib artists (lines, then the colour bar if drawn)
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from analysis.core.adapter import split_name

    if hasattr(spectra, "spectra"):
        spectra = spectra.spectra
    if not isinstance(spectra, Mapping):
        raise TypeError(f"spectra must be an AdapterSweep or a mapping name -> singular values, got "
                        f"{type(spectra).__name__}")
    items = [(n, np.asarray(s, dtype=float)) for n, s in spectra.items() if module is None or module in n]
    items = [(n, s) for n, s in items if s.size]
    if not items:
        raise ValueError(f"no non-zero spectrum to draw (module filter {module!r})")
    ax = get_ax(ax)
    layers = [split_name(n)[0] for n, _ in items]
    known = [lay for lay in layers if lay is not None]
    norm = Normalize(min(known, default=0), max(known, default=1))
    cm = colormaps[cmap]
    artists = []
    for (n, s), lay in zip(items, layers):
        v = s / s[0] if normalize else s
        i = np.arange(1, v.size + 1)
        artists.append(ax.plot(i, v, color=cm(norm(lay)) if lay is not None else "k", lw=1.0, alpha=0.85)[0])
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
    if colorbar and known:
        cb = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cm), ax=ax, fraction=0.046, pad=0.03)
        cb.set_label("layer")
        cb.locator = MaxNLocator(integer=True)
        cb.update_ticks()
        artists.append(cb)
    return artists
