"""The report's figures of several panels, on plain inputs: frames, φ results, labels, texts and numbers.

Each builder lays out one Figure (object API, no pyplot state, nothing saved here) from what
:mod:`analysis.report.figures` selected for it: which modules, which labels, which verdict texts. Null
distributions arrive computed (a band, a threshold); the builders only draw. Long texts are wrapped to their panel
(:func:`analysis.plotting.composite.wrap`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.plotting.advice import plot_advised_rank
from analysis.plotting.collection import plot_collection_matrix
from analysis.plotting.composite import SIDE_TEXT, legend_below, new_figure, ranks_colors, wrap
from analysis.plotting.heatmap import plot_phi
from analysis.plotting.merge_advice import plot_merge_losses
from analysis.plotting.overlap import plot_weight_overlap
from analysis.plotting.spectra import plot_spectra

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    import pandas as pd
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

    from analysis.metrics.correlation import WeightOverlap
    from analysis.metrics.pair import SimilarityResult

__all__ = ["seed_pair_figure", "phi_layers_figure", "weight_overlap_figure", "overlap_grid_figure",
           "amplification_layers_figure", "t7_layers_figure", "spectra_grid_figure", "advised_rank_figure",
           "long_run_figure", "data_vs_init_figure", "control_figure", "collection_matrices_figure",
           "merge_losses_figure"]

_FLOOR = 1e-12  # the overlap grid's lowest y: below every ratio a float64 φ yields but 0 (log scale)


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _with_suptitle(fig: Figure, suptitle: str | None) -> Figure:
    """``fig``, with ``suptitle`` (if any) wrapped to its width."""
    if suptitle:
        fig.suptitle(wrap(suptitle, fig.get_figwidth(), 10), fontsize=10)
    return fig


def _panel_row(n: int, width_in: float, height_in: float) -> tuple[Figure, np.ndarray]:
    """A Figure of ``n`` panels (at least one) side by side, ``width_in`` inches each, sharing the y axis."""
    fig = new_figure(width_in * max(n, 1), height_in)
    return fig, np.atleast_1d(fig.subplots(1, max(n, 1), sharey=True, squeeze=False)[0])


def seed_pair_figure(panels: Mapping[str, tuple[SimilarityResult, str]], random: SimilarityResult,
                     profiles: Mapping[str, Mapping[str, Any]], *, n_diag: int, focus_layer: int | None,
                     vmax: float = 1.0, suptitle: str | None = None) -> Figure:
    """φ heatmaps of two runs per module, two random matrices, and the diagonal statistic at every layer beside them.

    Parameters
    ----------
    panels : Mapping[str, (SimilarityResult, str)]
        Module label -> its φ grid between the two runs and the panel's title, one heatmap each, in order; a zero
        update leaves its panel with a note.
    random : SimilarityResult
        φ between two random Gaussian matrices of the same shape (the next panel).
    profiles : Mapping[str, Mapping]
        Module label (a key of ``panels``) -> ``layers`` (n,), ``values`` (n,) (mean φ(i, i), i ≤ ``n_diag``, per
        layer), ``d`` (int) and ``null`` ((mean, low, high): the random statistic's mean and 99.73 % band); a
        label left out draws no line (its colour stays its own).
    n_diag : int
        How many diagonal entries the statistic averages (in the axis label).
    focus_layer : int or None
        The heatmaps' layer (a dotted line; None: none).
    vmax : float
        Top of the heatmaps' colour scale.
    suptitle : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
    """
    mods = list(panels)
    fig = new_figure(4.3 * (len(mods) + 2), 4.6)
    axes = fig.subplots(1, len(mods) + 2, gridspec_kw={"width_ratios": [1] * (len(mods) + 1) + [1.4]})
    for ax, m in zip(axes, mods):
        res, title = panels[m]
        if res.zero:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{m}: zero update", ha="center", va="center", transform=ax.transAxes)
            continue
        plot_phi(res, ax=ax, vmax=vmax, annotate="never", title=wrap(title, 4.0, 12))
    plot_phi(random, ax=axes[len(mods)], vmax=vmax, annotate="never",
             title=wrap(f"random: two Gaussian ({random.phi.shape[0]} × {random.d}) matrices", 4.0, 12))
    ax = axes[-1]  # the statistic the verdict tests, per layer, with each role's null
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for c, m in zip(colors, mods):
        if m not in profiles:
            continue
        p = profiles[m]
        ax.plot(p["layers"], p["values"], "o-", ms=3, color=c, label=f"{m}")
        mean, lo_, hi_ = p["null"]
        ax.axhspan(lo_, hi_, color=c, alpha=0.15, lw=0)
        ax.axhline(mean, color=c, ls="--", lw=1, label=f"{m}: random, mean and 99.73 % band (d = {p['d']})")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"mean φ(i, i), i ≤ {n_diag} (log scale)")
    if focus_layer is not None:
        ax.axvline(focus_layer, color="grey", lw=0.8, ls=":")
    ax.set_title(wrap(f"the tested statistic at every layer (dotted: the main case, layer {focus_layer})", 4.2, 9),
                 fontsize=9)
    _integer_ticks(ax)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _with_suptitle(fig, suptitle)


def phi_layers_figure(results: Mapping[str, Mapping[int, SimilarityResult]], *, suptitle: str | None = None,
                      **phi_kw: Any) -> Figure:
    """φ heatmaps of one pair of adapters at several layers: one row per module type, one column per layer.

    Parameters
    ----------
    results : Mapping[str, Mapping[int, SimilarityResult]]
        Module label -> layer -> φ grid; every row has the same layers, in order. A zero update leaves its panel
        empty.
    suptitle : str, optional
        Wrapped to the figure's width.
    **phi_kw
        Options of :func:`analysis.plotting.plot_phi` for every panel (``i_max``, ``vmax`` …); the last column
        carries the colour bars.

    Returns
    -------
    matplotlib.figure.Figure
    """
    mods = list(results)
    layers = list(results[mods[0]]) if mods else []
    fig = new_figure(max(3.4 * len(layers), 7), 2.9 * len(mods) + 1.0)
    axes = np.atleast_2d(fig.subplots(len(mods), len(layers), squeeze=False))
    for a, m in enumerate(mods):
        for b, layer in enumerate(layers):
            res = results[m][layer]
            last = b == len(layers) - 1
            if res.zero:
                axes[a, b].set_axis_off()
                continue
            plot_phi(res, ax=axes[a, b], colorbar=last, annotate="never", title=f"{m}, layer {layer}", **phi_kw)
    return _with_suptitle(fig, suptitle)


def weight_overlap_figure(overlaps: Mapping[str, Mapping[str, WeightOverlap]], *, j: int | None = None,
                          suptitle: str | None = None) -> Figure:
    """Fig. 8 curves: φ(i, j) between W's top-i directions and ΔW's top-j, one row per module, one column per side.

    Parameters
    ----------
    overlaps : Mapping[str, Mapping[str, WeightOverlap]]
        Module label -> side (``"output"``, ``"input"``) -> its overlap.
    j : int, optional
        ΔW's top-j directions; default all (j = rank).
    suptitle : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
    """
    mods = list(overlaps)
    fig = new_figure(10, 3.8 * len(mods) + 0.8)
    axes = np.atleast_2d(fig.subplots(len(mods), 2, squeeze=False))
    for a, m in enumerate(mods):
        for b, side in enumerate(("output", "input")):
            res = overlaps[m][side]
            jtxt = "all of ΔW's directions (j = rank)" if j is None else f"ΔW's top-{j}"
            plot_weight_overlap(res, ax=axes[a, b], j=j, title=wrap(f"{m}: {side} side, {jtxt}", 4.8, 12))
    return _with_suptitle(fig, suptitle)


def overlap_grid_figure(overlaps: Mapping[str, Mapping[str, WeightOverlap]], *, js: Sequence[int],
                        bands: Mapping[str, tuple[ArrayLike, ArrayLike]], band_label: str, module: str,
                        suptitle: str | None = None) -> Figure:
    """Fig. 8 over its grid: φ(1, j) (and φ(j, k)) over what a random direction has (j / d), one panel per side.

    Parameters
    ----------
    overlaps : Mapping[str, Mapping[str, WeightOverlap]]
        Side (``"output"``, ``"input"``) -> adapter label -> its overlap (non-zero), one line colour per label.
    js : sequence of int
        The grid of j (W's top-j directions); those below d and within the φ grid are drawn.
    bands : Mapping[str, ((n,) array_like, (n,) array_like)]
        Side -> (j, the ratio a random direction stays under): the grey band, from 0 up.
    band_label : str
        The band's legend entry.
    module : str
        The module's label, in the panel titles.
    suptitle : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
        Log axes, shared y: 1 = chance.
    """
    sides = ("output", "input")
    labs = list(overlaps.get(sides[0], {}))
    fig = new_figure(12, 5.8)
    axes = fig.subplots(1, 2, sharey=True)
    cm = ranks_colors(len(labs))
    tops = [1.0]
    for ax, side in zip(axes, sides):
        d = None
        for c, lab in zip(cm, labs):
            o = overlaps[side][lab]
            jk = [jj for jj in js if jj < o.d and jj <= o.phi.shape[0]]
            d = o.d
            ratio = [o.phi[jj - 1, 0] / (jj / d) for jj in jk]
            tops += ratio
            ax.plot(jk, ratio, "o-", ms=4, color=c, label=f"{lab}: ΔW's top direction")
            if o.phi.shape[1] > 1:
                k = o.phi.shape[1]
                rk = [o.phi[jj - 1, k - 1] / (max(jj, k) / d) for jj in jk]
                tops += rk
                ax.plot(jk, rk, ":", color=c, lw=1, label=f"{lab}: all {k} of ΔW's directions, φ(j, {k}) over chance")
        if d:
            jj, crit = (np.asarray(x, dtype=float) for x in bands[side])
            ax.axhline(1.0, color="k", ls="--", lw=1.2, label="a random direction (chance = 1)")
            ax.fill_between(jj, np.full_like(jj, _FLOOR), crit, color="grey", alpha=0.2, lw=0, label=band_label)
            tops += list(crit)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([j for j in js if d and j < d])
        ax.set_xticklabels([str(j) for j in js if d and j < d])
        ax.set_xlabel("j: W's top-j singular directions (log scale)")
        ax.set_ylabel("φ over what a random direction has (log scale)")
        ax.set_title(f"{module}: {side} side (d = {d})", fontsize=9)
        ax.tick_params(labelleft=True)
        ax.grid(alpha=0.3, which="both")
        legend_below(ax, width_in=5.6)
    finite = [t for t in tops if np.isfinite(t) and t > 0]
    axes[0].set_ylim(max(min(finite) / 2, _FLOOR), max(finite) * 1.5)  # every plotted value inside the axes
    return _with_suptitle(fig, suptitle)


def amplification_layers_figure(frame: pd.DataFrame, panels: Mapping[str, str], *, series: Mapping[str, str],
                                suptitle: str | None = None) -> Figure:
    """The amplification factor at every layer, one panel per module type, one colour per adapter (by rank), beside
    what random directions of the same norm give (dotted), on a log scale.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``kind, adapter, r, layer, amplification, amp_random``.
    panels : Mapping[str, str]
        Module type (a value of ``kind``) -> its panel's title, in order.
    series : Mapping[str, str]
        Adapter (a value of ``adapter``) -> its legend name.
    suptitle : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib import colormaps

    t, kinds = frame, list(panels)
    fig, axes = _panel_row(len(kinds), 6, 5.2)
    order = list(dict.fromkeys(t.sort_values("r")["adapter"]))
    cm = colormaps["viridis"]
    colors = {a: cm(0.9 * i / max(len(order) - 1, 1)) for i, a in enumerate(order)}
    for ax, kind in zip(axes, kinds):
        g = t[t["kind"] == kind]
        for adapter in order:
            h = g[g["adapter"] == adapter].sort_values("layer")
            if not len(h):
                continue
            c = colors[adapter]
            ax.plot(h["layer"], h["amplification"], "o-", ms=3, color=c, label=f"{series[adapter]}: ΔW")
            ax.plot(h["layer"], h["amp_random"], ":", color=c, lw=1.2,
                    label=f"{series[adapter]}: random directions, same ‖ΔW‖")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(r"amplification $\|\Delta W\|_F / \|U^\top W V\|_F$ (log scale)")
        ax.tick_params(labelleft=True)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(wrap(panels[kind], 5.8, 9), fontsize=9)
        _integer_ticks(ax)
        legend_below(ax, width_in=5.6)
    return _with_suptitle(fig, suptitle)


def t7_layers_figure(frame: pd.DataFrame, panels: Mapping[str, str], *, holm: Mapping[str, float],
                     holds: Mapping[tuple[str, int], Mapping[int, bool]] | None = None,
                     suptitle: str | None = None) -> Figure:
    """Table 7 at every layer: z of ‖UᵀWV‖ against random U, V, one panel per module type, one line per rank, with
    the thresholds; filled markers where the claim holds.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``kind, r, layer, proj_delta, null_mean, null_sd``.
    panels : Mapping[str, str]
        Module type (a value of ``kind``) -> its panel's title, in order.
    holm : Mapping[str, float]
        Module type -> z of the first Holm step over its layers (a dotted line).
    holds : Mapping[(str, int), Mapping[int, bool]], optional
        (module type, rank) -> layer -> whether it holds after the correction (filled); default none.
    suptitle : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
    """
    t, kinds = frame, list(panels)
    fig, axes = _panel_row(len(kinds), 6.2, 5.0)
    ranks = sorted(t["r"].unique())
    colors = dict(zip(ranks, ranks_colors(len(ranks))))
    for ax, kind in zip(axes, kinds):
        g = t[t["kind"] == kind]
        n_layers = g["layer"].nunique()
        for r in ranks:
            h = g[g["r"] == r].sort_values("layer")
            if not len(h):
                continue
            z = (h["proj_delta"] - h["null_mean"]) / h["null_sd"]
            hold = (holds or {}).get((kind, r), {})
            ax.plot(h["layer"], z, "-", color=colors[r], lw=1, label=f"r = {r}")
            filled = np.array([bool(hold.get(int(L), False)) for L in h["layer"]])
            ax.scatter(h["layer"][filled], z[filled], color=colors[r], s=18, zorder=3)
            ax.scatter(h["layer"][~filled], z[~filled], facecolors="white", edgecolors=colors[r], s=18, zorder=3)
        ax.axhline(0, color="grey", ls="--", lw=1, label="null mean")
        ax.axhline(3, color="crimson", ls="-.", lw=1, label="z = 3 (p = 0.00135)")
        ax.axhline(holm[kind], color="crimson", ls=":", lw=1, label=f"first Holm step over {n_layers} layers")
        ax.set_xlabel("layer")
        ax.set_ylabel("z of ‖UᵀWV‖, U, V of ΔW, vs random U, V")
        ax.tick_params(labelleft=True)
        ax.grid(alpha=0.3)
        ax.set_title(wrap(panels[kind], 5.8, 9), fontsize=9)
        _integer_ticks(ax)
        ax.legend(fontsize=7, loc="best")
    return _with_suptitle(fig, suptitle)


def spectra_grid_figure(spectra: Mapping[str, Mapping[str, Mapping[str, ArrayLike]]], *,
                        suptitle: str | None = None) -> Figure:
    """Singular-value spectra of ΔW per layer: one row per adapter, one column per module type.

    Parameters
    ----------
    spectra : Mapping[str, Mapping[str, Mapping[str, (k,) array_like]]]
        Adapter label -> module label -> module name -> σ (one line per module); every row has the same columns.
        An empty mapping (every module a zero update) leaves its panel with a note.
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = list(spectra)
    cols = list(spectra[rows[0]]) if rows else []
    fig = new_figure(5.2 * len(cols), 3.4 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for a, label in enumerate(rows):
        for b, col in enumerate(cols):
            sub = spectra[label][col]
            if not sub:
                axes[a, b].set_axis_off()
                axes[a, b].text(0.5, 0.5, f"{col}, {label}: zero update", ha="center", va="center",
                                transform=axes[a, b].transAxes)
                continue
            plot_spectra(sub, ax=axes[a, b], title=wrap(f"{col}, {label}: spectrum per layer", 5.0, 12))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def advised_rank_figure(advice: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The advised rank per layer (:func:`analysis.plotting.plot_advised_rank`) on a Figure of its own.

    Parameters
    ----------
    advice : pandas.DataFrame
        As for :func:`analysis.plotting.plot_advised_rank`.
    title : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(7, 4.0)
    art = plot_advised_rank(advice, ax=fig.add_subplot())
    if title:
        art.ax.set_title(wrap(title, fig.get_figwidth(), 10), fontsize="medium")
    return fig


def long_run_figure(frame: pd.DataFrame, *, focus_layer: int | None, ranks: Sequence[int] | None = None,
                    suptitle: str | None = None) -> Figure:
    """Table 7 over training time for ΔWq: the z-score of ‖UᵀWV‖, the amplification beside its random counterpart
    and ‖ΔW‖/‖W‖ against the step, at one layer (top row) and as the median over layers (bottom row).

    Parameters
    ----------
    frame : pandas.DataFrame
        One module type's rows: ``r, step, layer, z, amplification, amp_random, rel_norm``.
    focus_layer : int or None
        The top row's layer (None: the top row stays empty).
    ranks : sequence of int, optional
        The ranks given colours, in order (default those of ``frame``).
    suptitle : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(14, 7.6)
    axes = fig.subplots(2, 3, sharex=True)
    ranks = sorted(frame["r"].unique()) if ranks is None else list(ranks)
    colors = dict(zip(ranks, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    L, sub = focus_layer, frame
    for row, (where, part) in enumerate(((f"layer {L}", sub[sub["layer"] == L]),
                                         ("median over layers", sub.groupby(["r", "step"], as_index=False).median(
                                             numeric_only=True)))):
        for r, g in part.groupby("r"):
            g = g.sort_values("step")
            c = colors[r]
            axes[row, 0].plot(g["step"], g["z"], "o-", color=c, ms=3, label=f"r = {r}")
            axes[row, 1].plot(g["step"], g["amplification"], "o-", color=c, ms=3, label=f"r = {r}: ΔW")
            axes[row, 1].plot(g["step"], g["amp_random"], ":", color=c, label=f"r = {r}: random U, V, same ‖ΔW‖")
            axes[row, 2].plot(g["step"], 100 * g["rel_norm"], "o-", color=c, ms=3, label=f"r = {r}")
        ax = axes[row, 0]
        ax.axhline(0, color="grey", ls="--", lw=1, label="null mean (z = 0)")
        ax.axhline(3, color="crimson", ls="-.", lw=1, label="z = 3 (p = 0.00135)")
        ax.set_ylabel(f"z of ‖UᵀWqV‖, U, V of ΔWq\n({where})")
        axes[row, 1].set_yscale("log")
        axes[row, 1].set_ylabel(f"amplification ‖ΔW‖/‖UᵀWV‖\n({where})")
        axes[row, 2].set_ylabel(f"‖ΔWq‖_F / ‖Wq‖_F, % ({where})")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            ax.tick_params(labelbottom=True)
    for ax in axes[1]:
        ax.set_xlabel("training step")
    return _with_suptitle(fig, suptitle)


#: (shares the data order, shares the initial A (None: unchecked)) -> (colour, line style).
_INIT_STYLES = {(True, True): ("tab:blue", "-"), (True, False): ("tab:green", "-"), (False, True): ("tab:orange", "--"),
                (False, False): ("tab:red", "--"), (True, None): ("tab:grey", "-"), (False, None): ("tab:grey", "--")}


def data_vs_init_figure(lines: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]], *, low: int,
                        suptitle: str | None = None) -> Figure:
    """φ(1, 1) per layer between runs of a low rank and a high-rank partner, one line per run, styled by what it
    shares with its partner: the data order and the initial A. One column per partner, one row per module type.

    Parameters
    ----------
    lines : Mapping[str, Mapping[str, sequence of Mapping]]
        Partner -> module label -> one mapping per run: ``run`` (str), ``shared_data`` (bool), ``shared_A`` (bool
        or None: unchecked), ``layer`` (n,), ``phi11`` (n,) (φ(1, 1), A basis), ``d`` (int) and ``verdict`` (str
        or None, appended to the legend entry). Every partner has the same module labels, in order.
    low : int
        The low rank (in the titles).
    suptitle : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
        Log y axis (shared) with the null 1/d of two random lines.
    """
    partners = list(lines)
    kinds = list(lines[partners[0]]) if partners else []
    fig = new_figure(6.2 * len(partners), 4.2 * len(kinds) + 1.0)
    axes = fig.subplots(len(kinds), len(partners), squeeze=False, sharey=True)
    for b, partner in enumerate(partners):
        for a, kind in enumerate(kinds):
            ax = axes[a, b]
            d = None
            for line in lines[partner][kind]:
                key = (bool(line["shared_data"]), line["shared_A"])
                d = int(line["d"])
                c, ls = _INIT_STYLES[key]
                a_txt = {True: "A shared", False: "A not shared", None: "A unchecked"}[key[1]]
                v = line["verdict"]
                ax.plot(line["layer"], line["phi11"], ls, marker="o", ms=3, color=c,
                        label=f"{line['run']}: data {'shared' if key[0] else 'other'}, {a_txt}" + (f" — {v}" if v
                                                                                                   else ""))
            if d:
                ax.axhline(1.0 / d, color="grey", ls=":", label=f"random lines: 1/d = {1 / d:.4f}")
                bottom = min([1.0 / d / 3] + [y for ln in ax.get_lines() for y in ln.get_ydata() if y > 0])
                ax.set_ylim(bottom / 2, 1.5)  # every value and the null inside the axes
            ax.set_yscale("log")
            ax.set_xlabel("layer")
            ax.set_ylabel(r"$\phi(1, 1)$ (A basis, log scale)")
            ax.tick_params(labelleft=True)
            ax.set_title(wrap(f"{kind}: r = {low} runs vs {partner}", 6, 9), fontsize=9)
            _integer_ticks(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="lower right")
    return _with_suptitle(fig, suptitle)


#: Colour of each attention projection in :func:`control_figure`.
_ROLE_COLORS = {"q": "tab:blue", "k": "tab:green", "v": "tab:orange", "o": "tab:red"}


def control_figure(panels: Mapping[str, Mapping[str, Any]], *, n_diag: int, suptitle: str | None = None) -> Figure:
    """Mean φ(i, i) across two seeds at every layer for each attention projection (q, k, v, o), one panel per
    basis, with the random nulls' bands.

    Parameters
    ----------
    panels : Mapping[str, Mapping]
        Basis (a key of :data:`~analysis.plotting.composite.SIDE_TEXT`) -> ``lines``: a sequence of (role (one of
        q, k, v, o), layers (n,), values (n,), d) in legend order, and ``nulls``: a sequence of (d, (low, high),
        mean), the random statistic's 99.73 % band and mean per input size.
    n_diag : int
        How many diagonal entries the statistic averages (in the axis label).
    suptitle : str, optional
        Wrapped to the figure's width.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(12, 5.0)
    axes = fig.subplots(1, 2)
    for side, ax in zip(panels, axes):
        for role, layers, values, d in panels[side]["lines"]:
            ax.plot(layers, values, "o-", ms=3, color=_ROLE_COLORS[role], label=f"ΔW{role} (d = {d})")
        for d, band, mean in panels[side]["nulls"]:
            ax.axhspan(*band, color="grey", alpha=0.15, lw=0)
            ax.axhline(mean, color="grey", ls="--", lw=1, label=f"random, d = {d}: mean and 99.73 % band")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"mean φ(i, i), i ≤ {n_diag}, across seeds (log scale)")
        ax.set_title(f"basis {SIDE_TEXT[side]}", fontsize=9)
        _integer_ticks(ax)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    return _with_suptitle(fig, suptitle)


def collection_matrices_figure(res: Any, *, labels: Sequence[str] | None = None,
                               suptitle: str | None = None) -> Figure:
    """A collection's two matrices side by side, each seriated: φ(1, 1) of the top input directions and the
    Frobenius cosine of the updates.

    Parameters
    ----------
    res : CollectionResult
    labels : sequence of str, optional
        One per adapter (default the collection's).
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(16, 7.4)
    axes = fig.subplots(1, 2)
    for ax, kind, title in ((axes[0], "similarity", "φ(1, 1), top input direction (random: 1/d)"),
                            (axes[1], "cosine", "Frobenius cosine ⟨ΔWa, ΔWb⟩ (random: ≈ 0)")):
        plot_collection_matrix(res, labels=labels, order=res.order(kind), kind=kind, ax=ax, annotate="never",
                               title=title)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def merge_losses_figure(table: pd.DataFrame, checks: Mapping[str, Any], *, suptitle: str | None = None) -> Figure:
    """Measured losses of merged adapters against the merge advice's distance (left) and the mean cosine of the
    updates (right), one legend below both.

    Parameters
    ----------
    table : pandas.DataFrame
        As for :func:`analysis.plotting.merge_advice.plot_merge_losses`.
    checks : Mapping[str, Any]
        Predictor (``"distance"``, ``"mean_cosine"``) -> its rank-correlation check, if any.
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(14, 6.2)
    axes = fig.subplots(1, 2)
    plot_merge_losses(table, ax=axes[0], predictor="distance", check=checks.get("distance"), legend=False)
    plot_merge_losses(table, ax=axes[1], predictor="mean_cosine", check=checks.get("mean_cosine"), log_x=False,
                      legend=False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=6, fontsize=7,
               title="task, method (filled: weights 1; open: weights 1/n)", title_fontsize=7)
    axes[1].set_xlabel("mean Frobenius cosine of the merged updates (pairs, modules): the pre-merge statistic",
                       fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig
