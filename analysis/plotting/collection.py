"""Collections of adapters: N × N similarity / cosine heatmaps (seriated) and training trajectories."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError
from analysis.plotting.common import PlotArtists, check_columns, get_ax, module_label

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from matplotlib.axes import Axes
    from numpy.typing import ArrayLike

    from analysis.sweeps.collection import CollectionResult

__all__ = ["plot_collection_matrix", "plot_trajectory", "short_labels"]

_KINDS = {"similarity": (0.0, 1.0, "viridis", r"$\phi(k, k)$, mean over modules"),
          "cosine": (-1.0, 1.0, "RdBu_r", "Frobenius cosine, pooled"),
          "spread": (0.0, None, "magma", "sd over modules")}


def short_labels(labels: Sequence[str]) -> list[str]:
    """Adapter labels without their common folder prefix (``checkpoints/r8_seed0`` -> ``r8_seed0``)."""
    labels = [str(x).rstrip("/") for x in labels]
    if len(labels) < 2:
        return [os.path.basename(x) or x for x in labels]
    pre = os.path.commonpath(labels) if all(labels) else ""
    out = [os.path.relpath(x, pre) if pre and x != pre else x for x in labels]
    return out


def plot_collection_matrix(matrix: ArrayLike | CollectionResult, *, labels: Sequence[str] | None = None,
                           order: ArrayLike | None = None, kind: str = "similarity", ax: Axes | None = None,
                           vmin: float | None = None, vmax: float | None = None, cmap: str | None = None,
                           colorbar: bool = True, annotate: str = "auto", title: str | None = None,
                           fmt: str = "{x:.2f}", cbar_label: str | None = None) -> PlotArtists:
    """Draw an N × N adapter matrix as a heatmap, rows and columns in ``order``.

    Parameters
    ----------
    matrix : (N, N) array_like or CollectionResult
        A result draws its ``similarity`` / ``cosine`` (or, for ``kind="spread"``, the per-module spread of
        the similarity), in its own seriation order unless ``order`` is given.
    labels : sequence of str, optional
        Adapter names (default: the result's labels, common prefix removed; else 1 … N).
    order : (N,) int array_like, optional
        Row / column order (e.g. :func:`analysis.sweeps.collection.seriation_order`).
    kind : {"similarity", "cosine", "spread"}
        Sets the colour scale (φ in [0, 1], cosine in [-1, 1] diverging, spread from 0).
    ax : matplotlib.axes.Axes, optional
    vmin, vmax, cmap, colorbar, title, fmt, cbar_label
        As for ``imshow`` / the colour bar.
    annotate : {"auto", "always", "never"}
        Write the values in the cells ("auto": N ≤ 12).

    Returns
    -------
    PlotArtists
        ``"image"``, ``"colorbar"`` (None when not drawn), ``"texts"`` (list, possibly empty).
    """
    if kind not in _KINDS:
        raise InputError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if annotate not in ("auto", "always", "never"):
        raise InputError(f"annotate must be 'auto', 'always' or 'never', got {annotate!r}")
    if hasattr(matrix, "similarity") and hasattr(matrix, "labels"):
        res = matrix
        labels = short_labels(res.labels) if labels is None else labels
        order = (res.order("cosine" if kind == "cosine" else "similarity")  # type: ignore[union-attr]
                 if order is None else order)
        matrix = res.spread("similarity") if kind == "spread" else getattr(res, kind)  # type: ignore[union-attr]
    M = np.asarray(matrix, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise InputError(f"expected a square (N, N) matrix, got shape {M.shape}")
    n = M.shape[0]
    order = np.arange(n) if order is None else np.asarray(order, dtype=int)
    if sorted(order.tolist()) != list(range(n)):
        raise InputError(f"order must be a permutation of 0 … {n - 1}, got {order.tolist()[:10]}")
    labels = [str(i + 1) for i in range(n)] if labels is None else [str(x) for x in labels]
    if len(labels) != n:
        raise InputError(f"expected {n} labels, got {len(labels)}")
    lo, hi, cm, cl = _KINDS[kind]
    M = M[np.ix_(order, order)]
    vmin = lo if vmin is None else vmin
    vmax = (hi if hi is not None else (np.nanmax(M) if np.isfinite(M).any() else 1.0)) if vmax is None else vmax
    ax = get_ax(ax)
    image = ax.imshow(M, cmap=cmap or cm, vmin=vmin, vmax=vmax, interpolation="nearest")
    ticks = np.arange(n)
    lab = [labels[i] for i in order]
    step = max(1, int(np.ceil(n / 40)))
    ax.set_xticks(ticks[::step], [lab[i] for i in ticks[::step]], rotation=90, fontsize="x-small")
    ax.set_yticks(ticks[::step], [lab[i] for i in ticks[::step]], fontsize="x-small")
    if title:
        ax.set_title(title, fontsize="medium")
    cbar = None
    if colorbar:
        cbar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        cbar.set_label(cbar_label or cl)
    texts = []
    if annotate == "always" or (annotate == "auto" and n <= 12):
        mid = (vmin + vmax) / 2
        for a in range(n):
            for b in range(n):
                v = M[a, b]
                if np.isfinite(v):
                    dark = v < mid if kind != "cosine" else abs(v) < 0.5
                    texts.append(ax.text(b, a, fmt.format(x=v), ha="center", va="center", fontsize=6,
                                         color="white" if dark and kind != "cosine" else "black"))
    return PlotArtists(ax, {"image": image, "colorbar": cbar, "texts": texts})


def plot_trajectory(frame: pd.DataFrame, *, y: str = "drift_final", ax: Axes | None = None, band: bool = True,
                    null: float | None = None, title: str | None = None, legend: bool = True) -> PlotArtists:
    """One line per module type over training steps: the median over layers, with the inter-quartile band.

    Parameters
    ----------
    frame : pandas.DataFrame
        From :attr:`analysis.sweeps.trajectory.Trajectory.frame` (columns ``step``, ``module`` and ``y``).
    y : str
        ``drift_final``, ``drift_previous``, ``phi_final``, ``norm``, ``effective_rank`` …
    ax : matplotlib.axes.Axes, optional
    band : bool
        Shade the inter-quartile range over layers.
    null : float, optional
        A horizontal reference line (e.g. the φ threshold of "present").
    title : str, optional
    legend : bool

    Returns
    -------
    PlotArtists
        ``"lines"`` (one per module type), ``"bands"`` (list, empty without ``band``), ``"null"`` (Line2D or
        None), ``"legend"`` (None when not drawn).
    """
    check_columns(frame, {"step", "module", y}, "Trajectory.frame")
    ax = get_ax(ax)
    lines, bands = [], []
    for mod, g in frame.groupby("module", sort=True):
        q = g.groupby("step")[y].quantile([0.25, 0.5, 0.75]).unstack()
        (ln,) = ax.plot(q.index, q[0.5], marker="o", ms=3, label=module_label(mod))
        lines.append(ln)
        if band:
            bands.append(ax.fill_between(q.index, q[0.25], q[0.75], alpha=0.2, color=ln.get_color()))
    nl = ax.axhline(null, color="grey", ls=":", lw=1) if null is not None else None
    ax.set_xlabel("training step")
    ax.set_ylabel(y.replace("_", " "))
    if title:
        ax.set_title(title, fontsize="medium")
    leg = ax.legend(fontsize="small") if legend and lines else None
    return PlotArtists(ax, {"lines": lines, "bands": bands, "null": nl, "legend": leg})
