"""φ(i, j) heatmaps (Fig. 3, 4, 6, 7 and the heatmap form of Fig. 8).

After matplotlib's "Creating annotated heatmaps" guide: ``imshow`` with a
colour bar, integer ticks, and (for small grids) the value written in each
cell in a colour chosen against the cell's brightness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError
from analysis.plotting.common import PlotArtists, get_ax, index_ticks

if TYPE_CHECKING:
    from typing import Any

    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.image import AxesImage
    from matplotlib.text import Text
    from numpy.typing import ArrayLike

    from analysis.metrics.correlation import WeightOverlap
    from analysis.metrics.pair import SimilarityResult

__all__ = ["plot_phi", "annotate_heatmap", "phi_grid_of"]

_ANNOTATE = frozenset({"auto", "always", "never"})


def phi_grid_of(result: SimilarityResult | WeightOverlap | pd.DataFrame | ArrayLike) -> np.ndarray:
    """The (k1, k2) φ grid of a result, a tidy frame (columns i, j, phi) or an array.

    Parameters
    ----------
    result : SimilarityResult or WeightOverlap or pandas.DataFrame or (k1, k2) array_like

    Returns
    -------
    (k1, k2) ndarray of float64
    """
    if hasattr(result, "phi") and not hasattr(result, "columns"):
        return np.asarray(result.phi, dtype=np.float64)
    if hasattr(result, "pivot"):
        missing = {"i", "j", "phi"} - set(result.columns)  # type: ignore[union-attr]  # a DataFrame
        if missing:
            raise InputError(f"a frame needs columns i, j, phi (as from SimilarityResult.to_frame()); "
                             f"missing {sorted(missing)}")
        g = result.pivot(index="i", columns="j", values="phi").sort_index().sort_index(axis=1)
        return g.to_numpy(dtype=np.float64)
    arr = np.asarray(result, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D φ grid (k1, k2), got shape {arr.shape}")
    return arr


def annotate_heatmap(image: AxesImage, data: np.ndarray, *, fmt: str = "{x:.2f}", threshold: float | None = None,
                     colors: tuple[str, str] = ("white", "black"), **text_kw: Any) -> list[Text]:
    """Write each cell's value on a heatmap, in a colour readable on that cell.

    Parameters
    ----------
    image : matplotlib.image.AxesImage
    data : (k1, k2) ndarray
        The values drawn (row i-1, column j-1).
    fmt : str
        ``str.format`` pattern with field ``x``.
    threshold : float, optional
        Values above it get ``colors[1]``; default: middle of the colour scale.
    colors : (str, str)
    **text_kw
        Passed to ``Axes.text``.

    Returns
    -------
    list of matplotlib.text.Text
    """
    ax = image.axes
    lo, hi = image.get_clim()
    threshold = (lo + hi) / 2 if threshold is None else threshold
    kw: dict[str, Any] = dict(ha="center", va="center", fontsize=7)
    kw.update(text_kw)
    texts = []
    for a in range(data.shape[0]):
        for b in range(data.shape[1]):
            v = data[a, b]
            if not np.isfinite(v):
                continue
            texts.append(ax.text(b + 1, a + 1, fmt.format(x=v), color=colors[int(v > threshold)], **kw))
    return texts


def plot_phi(result: SimilarityResult | WeightOverlap | pd.DataFrame | ArrayLike, *, ax: Axes | None = None,
             i_max: int | None = None, j_max: int | None = None, transpose: bool = False, annotate: str = "auto",
             vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis", colorbar: bool = True,
             title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
             cbar_label: str = r"$\phi(i, j)$", fmt: str = "{x:.2f}") -> PlotArtists:
    """Draw a φ(i, j) grid as a heatmap: row i (top = 1), column j.

    Parameters
    ----------
    result : SimilarityResult or WeightOverlap or pandas.DataFrame or (k1, k2) array_like
        ``phi[i-1, j-1]`` = φ(i, j).
    ax : matplotlib.axes.Axes, optional
        Default: a new Axes on a new Figure.
    i_max, j_max : int, optional
        Show only i ≤ i_max, j ≤ j_max (e.g. the paper's j ≤ 8 zoom).
    transpose : bool
        Put i on the x axis (for long grids, e.g. W's spectrum in Fig. 8).
    annotate : {"auto", "always", "never"}
        Write the values in the cells; "auto": when the shown grid has ≤ 100 cells.
    vmin, vmax : float
        Colour scale (fixed at [0, 1] by default so that panels compare).
    cmap : str
    colorbar : bool
    title, cbar_label : str
    xlabel, ylabel : str, optional
        Axis labels as drawn; default "j" on x and "i" on y ("i" on x when transposed).
    fmt : str
        Cell text pattern.

    Returns
    -------
    PlotArtists
        ``"image"`` (the AxesImage), ``"colorbar"`` (None when not drawn),
        ``"texts"`` (the cell values, a list of Text; empty when not written).
    """
    if annotate not in _ANNOTATE:
        raise InputError(f"annotate must be one of {sorted(_ANNOTATE)}, got {annotate!r}")
    phi = phi_grid_of(result)
    if phi.size == 0:
        raise InputError(f"empty φ grid (shape {phi.shape}): an update is zero, nothing to draw; "
                         "check result.zero first")
    phi = phi[: i_max or phi.shape[0], : j_max or phi.shape[1]]
    data = phi.T if transpose else phi
    ax = get_ax(ax)
    k1, k2 = data.shape
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest",
                      extent=(0.5, k2 + 0.5, k1 + 0.5, 0.5))
    ax.set_xticks(index_ticks(k2))
    ax.set_yticks(index_ticks(k1))
    ax.set_xlabel(xlabel if xlabel is not None else ("i" if transpose else "j"))
    ax.set_ylabel(ylabel if ylabel is not None else ("j" if transpose else "i"))
    if title:
        ax.set_title(title)
    cbar = None
    if colorbar:
        cbar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        cbar.set_label(cbar_label)
    texts = []
    if annotate == "always" or (annotate == "auto" and data.size <= 100):
        texts = annotate_heatmap(image, data, fmt=fmt)
    return PlotArtists(ax, {"image": image, "colorbar": cbar, "texts": texts})
