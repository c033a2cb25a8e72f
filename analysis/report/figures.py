"""The report's figures: ``fig_x(data)`` draws one figure of the report from its ReportData.

Each composes the composite builders of :mod:`analysis.plotting.composite` and the ``plot_*`` functions (object
API, no pyplot state, nothing saved here; :mod:`analysis.report.write` saves them). The builders are re-exported
here for the code that imported them from the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.plotting import plot_advised_rank, plot_phi, plot_spectra, plot_weight_overlap
from analysis.plotting.common import module_label
from analysis.plotting.composite import (PAPER_TABLE7, SIDE_TEXT, amplification_figure, legend_below, new_figure,
                                         phi11_layers_figure, phi_modules_figure, ranks_colors, spectra_figure,
                                         table7_figure, table7_rows, wrap)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    import pandas as pd
    from matplotlib.figure import Figure

    from analysis.report.compute import ReportData
    from analysis.report.findings import Finding

__all__ = ["phi_modules_figure", "phi11_layers_figure", "spectra_figure", "amplification_figure",
           "table7_figure", "table7_rows", "wrap", "paper_kinds",
           "fig_rank_pair", "fig_seed_pair", "fig_layers", "fig_table7", "table7_frame", "fig_weight_overlap",
           "fig_weight_overlap_grid", "fig_phi11_layers", "fig_amplification_layers", "fig_t7_layers", "fig_spectra",
           "fig_rank_advice", "fig_long_run", "fig_data_vs_init", "fig_control", "fig_collection", "PAPER_TABLE7",
           "SIDE_TEXT"]

def _where(data, layer=None):
    layer = data.layer if layer is None else layer
    return f"layer {layer}"


# ---- the report's figures (from ReportData) -----------------------------------------------------------------


def paper_kinds(data: ReportData) -> list[str]:
    """The module types the paper's figures are about: the q and v roles of the main stack (those present)."""
    kinds = [data.role_kind("q"), data.role_kind("v")]
    return [k for k in kinds if k is not None]


def _label_of(data):
    """Legend label per module type: its role (with its stack when the adapters span several)."""
    multi = len(data.stacks()) > 1

    def label(kind):
        return module_label(kind, stack=multi)
    return label


def _kind_frame(frame):
    """A sweep frame whose ``module`` column holds each row's module type (unique across stacks)."""
    from analysis.io.roles import module_role

    return frame.assign(module=[module_role(n).kind for n in frame["name"]])


def _figure_kinds(data, *, limit=12):
    """Module types drawn per layer in the all-module figures: the paper's, else every type (at most ``limit``)."""
    return paper_kinds(data) or list(data.modules)[:limit]


def fig_rank_pair(data: ReportData, *, side: str = "A") -> Figure:
    """Fig. 3: φ(A_{r=low}, A_{r=high}, i, j) for q and v at the focus layer, and the j ≤ low zoom."""
    lo, hi = data.rank("low"), data.rank("high")
    kinds = [k for k in _figure_kinds(data) if (k, data.layer) in data._index]
    names = [data.name(k) for k in kinds]
    lab = _label_of(data)
    panels = [dict(side=side, i_max=lo, title=wrap(f"{{module}}: $i \\leq {lo}$ ({data.say('low')}), $j \\leq {{k2}}$ "
                                                   f"({data.say('high')})", 8.0, 12)),
              dict(side=side, i_max=lo, j_max=lo, title=f"{{module}}: zoom $j \\leq {lo}$")]
    d = data.rank_pair.results[names[-1]][side].d
    X = "A" if side == "A" else r"\Delta W"
    fig = phi_modules_figure(
        data.rank_pair, names, panels=panels, width=12, row_height=2.8, width_ratios=[3.2, 1.25],
        suptitle=wrap(f"Fig. 3 — subspace similarity $\\phi({X}_{{r={lo}}}, {X}_{{r={hi}}}, i, j)$ at "
                      f"{_where(data)} of {data.n_layers} (paper: layer 48 of 96)\nbasis: {SIDE_TEXT[side]}; "
                      f"random subspaces give $\\phi \\approx \\max(i, j)/d$ with d = {d}", 12, 10))
    for ax, kind in zip(fig.axes[::2], kinds):  # the role (and stack) in each row's title
        ax.set_title(ax.get_title().replace(module_label(kind), lab(kind)), fontsize=ax.title.get_fontsize())
    return fig


def _diag_stats(res, n=16):
    k = min(n, *res.phi.shape)
    return float(np.mean(np.diag(res.phi)[:k])), k


def fig_seed_pair(data: ReportData, *, side: str = "A", vmax: float = 1.0) -> Figure:
    """Fig. 4: φ between two seeds of r = high for q and v, two random Gaussian matrices, and the tested statistic
    (mean φ(i, i), i ≤ 16, at every layer, against its null) beside them."""
    from analysis.metrics.nulls import diagonal_phi_draws
    from analysis.report.findings import SEED_DIAG_N

    hi = data.rank("seed_a")
    mods = [k for k in _figure_kinds(data, limit=4) if (k, data.layer) in data._index]
    lab = _label_of(data)
    fig = new_figure(4.3 * (len(mods) + 2), 4.6)
    axes = fig.subplots(1, len(mods) + 2, gridspec_kw={"width_ratios": [1] * (len(mods) + 1) + [1.4]})
    for ax, m in zip(axes, mods):
        res = data.seed_pair.results[data.name(m)][side]
        if res.zero:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{lab(m)}: zero update", ha="center", va="center", transform=ax.transAxes)
            continue
        plot_phi(res, ax=ax, vmax=vmax, annotate="never",
                 title=wrap(f"{lab(m)}: {data.say('seed_a')} vs {data.say('seed_b')}", 4.0, 12))
    rnd = data.random_sim[mods[0]]
    plot_phi(rnd, ax=axes[len(mods)], vmax=vmax, annotate="never",
             title=wrap(f"random: two Gaussian ({rnd.phi.shape[0]} × {rnd.d}) matrices", 4.0, 12))
    ax = axes[-1]  # the statistic the verdict tests, per layer, with each role's null
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for c, m in zip(colors, mods):
        layers, vals, k, d = [], [], SEED_DIAG_N, None
        for L in data.layers_of(m):
            n = data.name(m, L)
            if n in data.seed_pair.results and not data.seed_pair.results[n][side].zero:
                v, k = _diag_stats(data.seed_pair.results[n][side], SEED_DIAG_N)
                layers.append(L)
                vals.append(v)
                d = data.seed_pair.results[n][side].d
        if not layers:
            continue
        ax.plot(layers, vals, "o-", ms=3, color=c, label=f"{lab(m)}")
        draws = diagonal_phi_draws(d, k, n=1000, seed=data.config.seed).mean(axis=1)  # type: ignore[arg-type]
        lo_, hi_ = np.quantile(draws, [0.00135, 0.99865])
        ax.axhspan(lo_, hi_, color=c, alpha=0.15, lw=0)
        ax.axhline(draws.mean(), color=c, ls="--", lw=1, label=f"{lab(m)}: random, mean and 99.73 % band (d = {d})")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"mean φ(i, i), i ≤ {SEED_DIAG_N} (log scale)")
    ax.axvline(data.layer, color="grey", lw=0.8, ls=":")
    ax.set_title(wrap(f"the tested statistic at every layer (dotted: the main case, layer {data.layer})", 4.2, 9),
                 fontsize=9)
    _integer_ticks(ax)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    X = "A" if side == "A" else r"\Delta W"
    fig.suptitle(wrap(f"Fig. 4 — $\\phi({X}_{{r={hi}}}, {X}'_{{r={hi}}}, i, j)$ between two runs (seeds) at "
                      f"{_where(data)} (paper: layer 48)\nbasis: {SIDE_TEXT[side]}; colour scale 0 – {vmax:g} (the "
                      f"paper's); random subspaces give $\\phi \\approx \\max(i, j)/d$; {_layout_text(data)}",
                      fig.get_figwidth(), 10), fontsize=10)
    return fig


def _integer_ticks(ax):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _layout_text(data):
    from analysis.report.findings import attention_layout

    return attention_layout(data)


def fig_layers(data: ReportData, *, which: str = "rank", side: str = "A") -> Figure:
    """Fig. 6 (``which="rank"``: r = low vs high) or Fig. 7 (``"seed"``) at several layers."""
    lo, hi = data.rank("low"), data.rank("high" if which == "rank" else "seed_a")
    sweep = data.rank_pair if which == "rank" else data.seed_pair
    mods = _figure_kinds(data, limit=4)
    layers = [L for L in data.layers if all((m, L) in data._index for m in mods)]
    lab = _label_of(data)
    fig = new_figure(max(3.4 * len(layers), 7), 2.9 * len(mods) + 1.0)
    axes = np.atleast_2d(fig.subplots(len(mods), len(layers), squeeze=False))
    for a, m in enumerate(mods):
        for b, layer in enumerate(layers):
            res = sweep.results[data.name(m, layer)][side]
            last = b == len(layers) - 1
            if res.zero:
                axes[a, b].set_axis_off()
                continue
            kw = dict(i_max=lo) if which == "rank" else dict(vmax=1.0)
            plot_phi(res, ax=axes[a, b], colorbar=last, annotate="never", title=f"{lab(m)}, layer {layer}", **kw)
    if which == "rank":
        head = (f"Fig. 6 — $\\phi(A_{{r={lo}}}, A_{{r={hi}}}, i, j)$ at layers "
                f"{', '.join(map(str, layers))} of {data.n_layers} (paper: 1, 32, 64, 96 of 96)")
        who = f"i: top-i directions of {data.say('low')}, j: top-j of {data.say('high')}"
    else:
        head = (f"Fig. 7 — $\\phi(A_{{r={hi}}}, A'_{{r={hi}}}, i, j)$ between two runs at layers "
                f"{', '.join(map(str, layers))} of {data.n_layers} (paper: 1, 32, 64, 96 of 96)")
        who = f"i: {data.say('seed_a')}, j: {data.say('seed_b')}; colour scale 0 – 1 (the paper's)"
    d = sweep.results[data.name(mods[0], layers[0])][side].d
    fig.suptitle(wrap(f"{head}\nbasis: {SIDE_TEXT[side]}; {who}; random: $\\phi \\approx \\max(i, j)/d$, d = {d}",
                      fig.get_figwidth(), 10), fontsize=10)
    return fig


def _t7_frames(data):
    """Table 7's rows by label: the base model's name (reference checkpoints), else one group per adapter."""
    t = data.table7
    kinds = set(paper_kinds(data)) or None
    if kinds:
        from analysis.io.roles import module_role

        t = t[[module_role(n).kind in kinds for n in t["name"]]]
    if not data.config.pairs:
        return {_model_name(data): t}
    return {data.series(lab): t[t["adapter"] == lab] for lab in dict.fromkeys(t["adapter"])}


def table7_frame(data: ReportData) -> pd.DataFrame:
    """Table 7 as displayed: our rows (focus layer, every rank, q and v), then the paper's."""
    fr = table7_rows(_t7_frames(data))
    fr["ΔW"] = [_plain(x) for x in fr["ΔW"]]
    return fr


def _plain(label):
    """Mathtext ΔW labels as plain text (for tables and CSV files)."""
    import re

    text = str(label).replace("$\\Delta W_q$", "ΔWq")
    text = re.sub(r"\$\\Delta W_\{\\mathrm\{([^}]*)\}\}\$", r"ΔW\1", text)
    return re.sub(r"\$\\Delta W_(\w)\$", r"ΔW\1", text)


def _model_name(data):
    import os

    return os.path.splitext(os.path.basename(data.config.base or "base"))[0].split(".")[0]


def fig_table7(data: ReportData) -> Figure:
    """Table 7 rendered: ‖Uᵀ W V‖_F for U, V of ΔW, of W and random, next to ‖W‖_F, ‖ΔW‖_F."""
    return table7_figure(_t7_frames(data),
                         title=wrap(f"Table 7 — how ΔW relates to W at layer {data.layer} (U, V: top-r singular "
                                    f"vectors; random: mean and sd over {data.config.n_random_table} Haar-random U, "
                                    "V). Paper's rows shaded.", 13, 9))


def fig_weight_overlap(data: ReportData, *, j: int | None = None) -> Figure:
    """Fig. 8 curves: φ(i, j) between W's top-i directions and ΔW's top-j, per module and side."""
    mods = [m for m in _figure_kinds(data, limit=4) if (m, "output") in data.overlaps]
    lab = _label_of(data)
    fig = new_figure(10, 3.8 * len(mods) + 0.8)
    axes = np.atleast_2d(fig.subplots(len(mods), 2, squeeze=False))
    for a, m in enumerate(mods):
        for b, side in enumerate(("output", "input")):
            res = data.overlaps[(m, side)]
            jtxt = "all of ΔW's directions (j = rank)" if j is None else f"ΔW's top-{j}"
            plot_weight_overlap(res, ax=axes[a, b], j=j, title=wrap(f"{lab(m)}: {side} side, {jtxt}", 4.8, 12))
    fig.suptitle(wrap(f"Fig. 8 — overlap of ΔW's singular directions with W's top-i, at layer {data.layer}\n"
                      "curves far above their dashed null = ΔW lives in W's emphasised directions", 10, 10),
                 fontsize=10)
    return fig


_FLOOR = 1e-12  # the grid figure's lowest y: below every ratio a float64 φ yields but 0 (log scale)


def fig_weight_overlap_grid(data: ReportData) -> Figure:
    """Fig. 8 over its grid: where ΔW's top direction sits in W's spectrum. φ(1, j), its share of W's top-j
    directions (j = 1 … 256), divided by what a random direction has (j / d), per rank and side, with the band a
    random direction stays in up to p = 0.00135 after the Holm correction over the grid (log scale: 1 = chance)."""
    from scipy.stats import beta

    from analysis.report.findings import FIG8_J
    from analysis.report.protocol import P_TAIL

    q = data.role_kind("q") or (paper_kinds(data) or [None])[0]  # type: ignore[list-item]
    sides = ("output", "input")
    labs = [lab for lab, o in data.overlaps.get((q, sides[0]), {}).items() if not o.zero]
    fig = new_figure(12, 5.8)
    axes = fig.subplots(1, 2, sharey=True)
    cm = ranks_colors(len(labs))
    n_cells = sum(1 for side in sides for lab in labs for jj in FIG8_J
                  if jj < data.overlaps[(q, side)][lab].d and jj <= data.overlaps[(q, side)][lab].phi.shape[0])
    level = P_TAIL / max(n_cells, 1)  # the first Holm step over the grid
    tops = [1.0]
    for ax, side in zip(axes, sides):
        d = None
        for c, lab in zip(cm, labs):
            o = data.overlaps[(q, side)][lab]
            js = [jj for jj in FIG8_J if jj < o.d and jj <= o.phi.shape[0]]
            d = o.d
            ratio = [o.phi[jj - 1, 0] / (jj / d) for jj in js]
            tops += ratio
            ax.plot(js, ratio, "o-", ms=4, color=c, label=f"{lab}: ΔW's top direction")
            if o.phi.shape[1] > 1:
                k = o.phi.shape[1]
                rk = [o.phi[jj - 1, k - 1] / (max(jj, k) / d) for jj in js]
                tops += rk
                ax.plot(js, rk, ":", color=c, lw=1, label=f"{lab}: all {k} of ΔW's directions, φ(j, {k}) over chance")
        if d:
            jj = np.array([j for j in FIG8_J if j < d], dtype=float)
            ax.axhline(1.0, color="k", ls="--", lw=1.2, label="a random direction (chance = 1)")
            crit = np.array([float(beta.isf(level, j / 2, (d - j) / 2)) for j in jj]) / (jj / d)
            ax.fill_between(jj, np.full_like(jj, _FLOOR), crit, color="grey", alpha=0.2, lw=0,
                            label=f"random up to p = {level:.1e} (0.00135, Holm over {n_cells} cells)")
            tops += list(crit)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([j for j in FIG8_J if d and j < d])
        ax.set_xticklabels([str(j) for j in FIG8_J if d and j < d])
        ax.set_xlabel("j: W's top-j singular directions (log scale)")
        ax.set_ylabel("φ over what a random direction has (log scale)")
        ax.set_title(f"{module_label(q)}: {side} side (d = {d})", fontsize=9)
        ax.tick_params(labelleft=True)
        ax.grid(alpha=0.3, which="both")
        legend_below(ax, width_in=5.6)
    finite = [t for t in tops if np.isfinite(t) and t > 0]
    axes[0].set_ylim(max(min(finite) / 2, _FLOOR), max(finite) * 1.5)  # every plotted value inside the axes
    fig.suptitle(wrap(f"Fig. 8 over its grid — where ΔW's top direction sits in W's spectrum at layer {data.layer}: "
                      "its share of W's top-j directions over a random direction's; above the grey band = more than "
                      "chance after the correction", 12, 10), fontsize=10)
    return fig


def fig_phi11_layers(data: ReportData) -> Figure:
    """Beyond the paper: φ(1, 1) at every layer, for the rank pair and the seed pair, two bases, near ties marked."""
    from analysis.io.roles import module_role
    from analysis.report.findings import swapped_modules, tied_modules

    a = data.adapter
    pairs = {f"{data.say('low')} vs {data.say('high')}": (data.rank_pair, a("low"), a("high")),
             f"{data.say('seed_a')} vs {data.say('seed_b')}": (data.seed_pair, a("seed_a"), a("seed_b"))}
    if data.cross_pair is not None:
        pairs[f"control: {data.say('low_other')} vs {data.say('high')}"] = (data.cross_pair, a("low_other"),
                                                                             a("high"))
    pairs = {k: v for k, v in pairs.items() if v[0] is not None}
    keep = set(_figure_kinds(data))

    def pos(n):
        r = module_role(n)
        return int(r.layer), r.kind

    def frame(sw):
        fr = _kind_frame(sw.frame)
        return fr[fr["module"].isin(keep)]

    ties = {txt: {side: [pos(n) for n in tied_modules(x, y, side, list(sw.results))] for side in ("A", "input")}
            for txt, (sw, x, y) in pairs.items()}
    swaps = {txt: {side: [pos(n) for n in swapped_modules(sw, side)] for side in ("A", "input")}
             for txt, (sw, _, _) in pairs.items()}
    lab = _label_of(data)
    return phi11_layers_figure({txt: frame(sw) for txt, (sw, _, _) in pairs.items()}, ties=ties, swaps=swaps,
                               labels={k: lab(k) for k in keep},
                               suptitle="φ(1, 1) at every layer: is the top direction shared? (beyond the paper, "
                                        "which shows 4 layers); dashed: two random lines, 1/d; rings: a near tie of "
                                        "the top two singular values; triangles: the top two directions swapped")


def fig_amplification_layers(data: ReportData, fs: Sequence[Finding] | None = None) -> Figure:
    """Beyond the paper: the amplification factor at every layer, per rank, with what random directions of the same
    norm give (the protocol's null mean), on a log scale; the title states the measured verdicts."""
    from matplotlib import colormaps

    t = data.t7_layers
    kinds = [k for k in paper_kinds(data) if k in set(t["kind"])]
    lab = _label_of(data)
    fig = new_figure(6 * max(len(kinds), 1), 5.2)
    axes = np.atleast_1d(fig.subplots(1, max(len(kinds), 1), sharey=True, squeeze=False)[0])
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
            ax.plot(h["layer"], h["amplification"], "o-", ms=3, color=c, label=f"{data.series(adapter)}: ΔW")
            ax.plot(h["layer"], h["amp_random"], ":", color=c, lw=1.2,
                    label=f"{data.series(adapter)}: random directions, same ‖ΔW‖")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(r"amplification $\|\Delta W\|_F / \|U^\top W V\|_F$ (log scale)")
        ax.tick_params(labelleft=True)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(wrap(f"{lab(kind)}: {_t7_verdicts(fs, data.role_of(kind).role)}", 5.8, 9), fontsize=9)
        _integer_ticks(ax)
        legend_below(ax, width_in=5.6)
    fig.suptitle(wrap("Amplification of W's directions by ΔW at every layer (Table 7's last column, beyond the "
                      f"paper's single layer); null: the mean of {data.config.n_random_table:,} Haar-random "
                      "projections (k ≥ 17: exact moments)", fig.get_figwidth(), 10), fontsize=10)
    return fig


def _t7_verdicts(fs, role):
    """"r = 4: inconclusive (power 0.00), …" from the every-layer Table 7 records of ``role``."""
    if not fs:
        return "verdicts in findings.json"
    parts = []
    for f in fs:
        if f.id.startswith(f"t7_layers_{role}_r"):
            r = f.id.rsplit("_r", 1)[1]
            pw = "unknown" if f.power is None else f"{f.power:.2f}"
            parts.append(f"r = {r}: {f.verdict} ({f.n_holding}/{f.n_modules} layers, power {pw})")
    return "; ".join(parts) or "not judged"


def fig_t7_layers(data: ReportData, fs: Sequence[Finding] | None = None) -> Figure:
    """Table 7 at every layer: z of ‖UᵀWV‖ against Haar-random U, V for q and v, each rank, with the thresholds
    (p = 0.00135 as a Gaussian z = 3, and the first Holm step over the layers); filled markers hold after the
    correction."""
    from scipy.stats import norm

    t = data.t7_layers
    kinds = [k for k in paper_kinds(data) if k in set(t["kind"])]
    lab = _label_of(data)
    fig = new_figure(6.2 * max(len(kinds), 1), 5.0)
    axes = np.atleast_1d(fig.subplots(1, max(len(kinds), 1), sharey=True, squeeze=False)[0])
    held = {}
    for f in fs or ():
        if f.id.startswith("t7_layers_"):
            held[f.id] = {row["layer"]: row["holds"] for row in f.per_layer}
    ranks = sorted(t["r"].unique())
    colors = dict(zip(ranks, ranks_colors(len(ranks))))
    for ax, kind in zip(axes, kinds):
        role = data.role_of(kind).role
        g = t[t["kind"] == kind]
        n_layers = g["layer"].nunique()
        for r in ranks:
            h = g[g["r"] == r].sort_values("layer")
            if not len(h):
                continue
            z = (h["proj_delta"] - h["null_mean"]) / h["null_sd"]
            hold = held.get(f"t7_layers_{role}_r{r}", {})
            ax.plot(h["layer"], z, "-", color=colors[r], lw=1, label=f"r = {r}")
            filled = np.array([bool(hold.get(int(L), False)) for L in h["layer"]])
            ax.scatter(h["layer"][filled], z[filled], color=colors[r], s=18, zorder=3)
            ax.scatter(h["layer"][~filled], z[~filled], facecolors="white", edgecolors=colors[r], s=18, zorder=3)
        ax.axhline(0, color="grey", ls="--", lw=1, label="null mean")
        ax.axhline(3, color="crimson", ls="-.", lw=1, label="z = 3 (p = 0.00135)")
        ax.axhline(float(norm.isf(0.0013498980316301035 / max(n_layers, 1))), color="crimson", ls=":", lw=1,
                   label=f"first Holm step over {n_layers} layers")
        ax.set_xlabel("layer")
        ax.set_ylabel("z of ‖UᵀWV‖, U, V of ΔW, vs random U, V")
        ax.tick_params(labelleft=True)
        ax.grid(alpha=0.3)
        ax.set_title(wrap(f"{lab(kind)} at every layer (filled: holds after the correction)", 5.8, 9), fontsize=9)
        _integer_ticks(ax)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(wrap("Table 7 at every layer: does ΔW's top-r subspace capture more of W than random directions "
                      "do? (z for the reader; the verdict uses each null's own tail probability)",
                      fig.get_figwidth(), 10), fontsize=10)
    return fig


def fig_spectra(data: ReportData) -> Figure:
    """Beyond the paper: singular-value spectra of ΔW per layer, for the larger ranks."""
    labs = [data.roles[k] for k in ("low", "high", "seed_a") if k in data.roles]
    labs = [lab for lab in dict.fromkeys(labs) if lab in data.sweeps]
    kinds = _figure_kinds(data, limit=4)
    spectra = {}
    for lab in labs:
        from analysis.io.roles import module_role

        spectra[data.series(lab)] = {n: s for n, s in data.sweeps[lab].spectra.items()}
    fig = new_figure(5.2 * len(kinds), 3.4 * len(labs) + 0.6)
    axes = fig.subplots(len(labs), len(kinds), squeeze=False)
    lab_of = _label_of(data)
    for a, (label, sp) in enumerate(spectra.items()):
        for b, kind in enumerate(kinds):
            sub = {n: s for n, s in sp.items() if module_role(n).kind == kind and len(s)}
            if not sub:  # every module of this type is a zero update
                axes[a, b].set_axis_off()
                axes[a, b].text(0.5, 0.5, f"{lab_of(kind)}, {label}: zero update", ha="center", va="center",
                                transform=axes[a, b].transAxes)
                continue
            plot_spectra(sub, ax=axes[a, b], title=wrap(f"{lab_of(kind)}, {label}: spectrum per layer", 5.0, 12))
    fig.suptitle("Singular values of ΔW (normalised by σ₁), one line per layer", fontsize=10)
    return fig


def fig_rank_advice(data: ReportData) -> Figure:
    """Beyond the paper: the rank each module needs, from the directions the two seeds of r = high share."""
    fig = new_figure(7, 4.0)
    art = plot_advised_rank(data.advice, ax=fig.add_subplot())
    art.ax.set_title(wrap(f"Advised rank per layer: directions of ΔW that {data.say('seed_a')} and "
                          f"{data.say('seed_b')} share beyond chance (random subspaces: mean + 3 sd)", 7, 10),
                     fontsize="medium")
    return fig


def fig_long_run(data: ReportData) -> Figure:
    """Table 7 over training time: ΔWq's and ΔWv's ‖UᵀWV‖ z-score, the amplification beside its random counterpart
    and ‖ΔW‖/‖W‖ against the step, at the focus layer (top row) and as the median over layers (bottom row)."""
    lr = data.long_run
    fig = new_figure(14, 7.6)
    axes = fig.subplots(2, 3, sharex=True)
    colors = dict(zip(sorted(lr["r"].unique()), ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    L = data.layer
    q = data.role_kind("q")
    sub = lr[lr["kind"] == q] if q is not None else lr
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
    fig.suptitle(wrap("Table 7 over training time (long runs, seed 0): is ΔWq's projection on W above random? "
                      f"null: {data.config.n_random_table:,} Haar-random U, V per layer and rank (exact moments from "
                      "17 directions on); paper: 11 % (r = 4) and 5.8 % (r = 64) for ‖ΔWq‖/‖Wq‖", 14, 10),
                 fontsize=10)
    return fig


def fig_data_vs_init(data: ReportData, fs: Sequence[Finding] | None = None) -> Figure:
    """The cause experiment: φ(1, 1) per layer between each r = low run and each r = high partner, one line per run,
    styled by what it shares with that partner: the data order (manifests) and the initial A (step-0 files)."""
    from analysis.io.roles import module_role

    partners = list(dict.fromkeys(p for _, p in data.init_pairs))
    kinds = _figure_kinds(data, limit=2)
    fig = new_figure(6.2 * len(partners), 4.2 * len(kinds) + 1.0)
    axes = fig.subplots(len(kinds), len(partners), squeeze=False, sharey=True)
    styles = {(True, True): ("tab:blue", "-"), (True, False): ("tab:green", "-"), (False, True): ("tab:orange", "--"),
              (False, False): ("tab:red", "--"), (True, None): ("tab:grey", "-"), (False, None): ("tab:grey", "--")}
    verdict = {f.id: f.verdict for f in fs or ()}
    lab_of = _label_of(data)
    for b, partner in enumerate(partners):
        for a, kind in enumerate(kinds):
            ax = axes[a, b]
            d = None
            for (run, p), pair in data.init_pairs.items():
                if p != partner:
                    continue
                meta = data.init_meta[(run, p)]
                key = (bool(meta["shared_data"]), meta["shared_A"])
                fr = pair.frame[[module_role(n).kind == kind for n in pair.frame["name"]]].sort_values("layer")
                if not len(fr):
                    continue
                d = int(fr["d_in"].iloc[0])
                c, ls = styles[key]
                a_txt = {True: "A shared", False: "A not shared", None: "A unchecked"}[key[1]]
                v = verdict.get(f"fig3_cause_{run}_vs_{partner}")
                ax.plot(fr["layer"], fr["phi11_A"], ls, marker="o", ms=3, color=c,
                        label=f"{run}: data {'shared' if key[0] else 'other'}, {a_txt}" + (f" — {v}" if v else ""))
            if d:
                ax.axhline(1.0 / d, color="grey", ls=":", label=f"random lines: 1/d = {1 / d:.4f}")
                low = min([1.0 / d / 3] + [y for line in ax.get_lines() for y in line.get_ydata() if y > 0])
                ax.set_ylim(low / 2, 1.5)  # every value and the null inside the axes
            ax.set_yscale("log")
            ax.set_xlabel("layer")
            ax.set_ylabel(r"$\phi(1, 1)$ (A basis, log scale)")
            ax.tick_params(labelleft=True)
            ax.set_title(wrap(f"{lab_of(kind)}: r = {data.config.low} runs vs {partner}", 6, 9), fontsize=9)
            _integer_ticks(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(wrap("What makes r = 8 and r = 64 share their top direction? 'data shared' = the partner's "
                      "data order (manifests); 'A shared' = the r = 8 run's initial A is the first 8 rows of the "
                      "partner's initial A, checked from the two step-0 adapters", fig.get_figwidth(), 10),
                 fontsize=10)
    return fig


def fig_control(data: ReportData, fs: Sequence[Finding] | None = None) -> Figure:
    """The q / k / v / o control of Fig. 4: mean φ(i, i), i ≤ 16, across two seeds at every layer for each
    attention projection, with each shape's null band."""
    from analysis.io.roles import module_role
    from analysis.metrics.nulls import diagonal_phi_draws
    from analysis.report.findings import SEED_DIAG_N

    pair = data.control_pair
    fig = new_figure(12, 5.0)
    axes = fig.subplots(1, 2)
    colors = {"q": "tab:blue", "k": "tab:green", "v": "tab:orange", "o": "tab:red"}
    nulls = {}
    for side, ax in zip(("A", "input"), axes):
        by_role: dict[str, list[tuple[Any, ...]]] = {}
        for n, res in pair.results.items():
            r = module_role(n)
            if r.role in colors and not res[side].zero:
                v, k = _diag_stats(res[side], SEED_DIAG_N)
                by_role.setdefault(r.role, []).append((r.layer, v, res[side].d, k))
        for role, rows in sorted(by_role.items(), key=lambda x: "qkvo".index(x[0])):
            rows.sort()
            d, k = rows[0][2], rows[0][3]
            ax.plot([x[0] for x in rows], [x[1] for x in rows], "o-", ms=3, color=colors[role],
                    label=f"ΔW{role} (d = {d})")
            if (d, k) not in nulls:
                nulls[(d, k)] = diagonal_phi_draws(d, k, n=1000, seed=data.config.seed).mean(axis=1)
        for (d, k), draws in sorted(nulls.items()):
            ax.axhspan(*np.quantile(draws, [0.00135, 0.99865]), color="grey", alpha=0.15, lw=0)
            ax.axhline(draws.mean(), color="grey", ls="--", lw=1, label=f"random, d = {d}: mean and 99.73 % band")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"mean φ(i, i), i ≤ {SEED_DIAG_N}, across seeds (log scale)")
        ax.set_title(f"basis {SIDE_TEXT[side]}", fontsize=9)
        _integer_ticks(ax)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    verdicts = "; ".join(f"'{f.id[13]} more than {f.id[14]}' at every layer: {f.verdict} ({f.n_holding}/{f.n_modules})"
                         for f in fs or () if f.id.startswith("fig7_control_") and f.id.endswith("_all"))
    fig.suptitle(wrap(f"Fig. 4 control: {', '.join(data.config.control_runs)} (r = 64 on q, k, v, o): does 'v shares "
                      "more across seeds' survive matched shapes (q vs o: both d × d; k vs v: both narrower)? "
                      + verdicts, 12, 10), fontsize=10)
    return fig


def fig_collection(data: ReportData) -> Figure:
    """Every shipped adapter against every other: φ(1, 1) of the top input directions and the Frobenius
    cosine of the updates (means over shared modules), seriated, with the task and seeds in the labels."""
    from analysis.plotting import plot_collection_matrix

    col = data.collection
    labels = list(data.collection_meta)
    n_mod = len(col.module_names)
    fig = new_figure(16, 7.4)
    axes = fig.subplots(1, 2)
    for ax, kind, title in ((axes[0], "similarity", "φ(1, 1), top input direction (random: 1/d)"),
                            (axes[1], "cosine", "Frobenius cosine ⟨ΔWa, ΔWb⟩ (random: ≈ 0)")):
        plot_collection_matrix(col, labels=labels, order=col.order(kind), kind=kind, ax=ax, annotate="never",
                               title=title)
    fig.suptitle(f"Every shipped adapter against every other (mean over the {n_mod} shared modules, seriated): "
                 "do adapters group by task, by seed or by rank?", fontsize=10)
    return fig


def fig_merge_losses(data: ReportData) -> Figure:
    """The merge advice against measured losses: the loss increase over each task's own adapter of every
    merged task adapter against the distance the advice computes (left) and the mean cosine of the updates
    (right), with each statistic's Spearman ρ against its stratified permutation null."""
    from analysis.plotting.merge_advice import plot_merge_losses

    mc = data.merge_check
    fr = mc["table"]
    fig = new_figure(14, 6.2)
    axes = fig.subplots(1, 2)
    plot_merge_losses(fr, ax=axes[0], predictor="distance", check=mc["checks"].get("distance"), legend=False)
    plot_merge_losses(fr, ax=axes[1], predictor="mean_cosine", check=mc["checks"].get("mean_cosine"), log_x=False,
                      legend=False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=6, fontsize=7,
               title="task, method (filled: weights 1; open: weights 1/n)", title_fontsize=7)
    axes[1].set_xlabel("mean Frobenius cosine of the merged updates (pairs, modules): the pre-merge statistic",
                       fontsize=8)
    n_merges = fr["merge"].nunique()
    fig.suptitle(f"Merge advice against measured validation losses: {n_merges} merged adapters of the task "
                 f"adapters, {len(fr)} (adapter, task) losses; does the advice predict the damage?", fontsize=10)
    return fig
