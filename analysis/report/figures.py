"""Figure-level helpers: each composes several Axes from the plotting functions into one Figure.

They return ``matplotlib.figure.Figure`` objects built with the object API
(no pyplot state); :mod:`analysis.cli.report` saves them.
"""

from __future__ import annotations

import numpy as np

from analysis.plotting import (plot_layer_profile, plot_phi, plot_spectra, plot_table,
                               plot_weight_overlap)
from analysis.plotting.common import module_label

__all__ = ["fig_rank_pair", "fig_seed_pair", "fig_layers", "fig_table7", "fig_weight_overlap",
           "fig_weight_overlap_heatmap",
           "fig_phi11_layers", "fig_amplification_layers", "fig_spectra", "fig_rank_advice", "PAPER_TABLE7"]

#: Table 7 of the paper (GPT-3, layer 48 of 96, ΔWq; ‖Wq‖_F = 61.95).
PAPER_TABLE7 = [dict(r=4, proj_delta=0.32, proj_w=21.67, proj_random=0.02, w_norm=61.95, delta_norm=6.91,
                     amplification=21.5),
                dict(r=64, proj_delta=1.90, proj_w=37.71, proj_random=0.33, w_norm=61.95, delta_norm=3.57,
                     amplification=1.9)]

_SIDE_TXT = {"A": "right-singular vectors of $A$ (the paper's basis)",
             "B": "left-singular vectors of $B$",
             "input": r"right-singular vectors of $\Delta W$ (input side)",
             "output": r"left-singular vectors of $\Delta W$ (output side)"}


def _figure(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _where(data, layer=None):
    layer = data.config.layer if layer is None else layer
    return f"layer {layer}"


def fig_rank_pair(data, *, side="A"):
    """Fig. 3: φ(A_{r=low}, A_{r=high}, i, j) for each module at the focus layer, and the j ≤ low zoom."""
    cfg = data.config
    mods = data.modules
    fig = _figure(12, 2.6 * len(mods) + 0.6)
    gs = fig.add_gridspec(len(mods), 2, width_ratios=[3.2, 1.25])
    for row, m in enumerate(mods):
        res = data.rank_pair.results[data.name(m)][side]
        lab = module_label(m)
        plot_phi(res, ax=fig.add_subplot(gs[row, 0]), i_max=cfg.low,
                 title=f"{lab}: $i \\leq {cfg.low}$ (r = {cfg.low}), $j \\leq {res.phi.shape[1]}$ (r = {cfg.high})")
        plot_phi(res, ax=fig.add_subplot(gs[row, 1]), i_max=cfg.low, j_max=cfg.low,
                 title=f"{lab}: zoom $j \\leq {cfg.low}$")
    X = "A" if side == "A" else r"\Delta W"
    fig.suptitle(f"Fig. 3 — subspace similarity $\\phi({X}_{{r={cfg.low}}}, {X}_{{r={cfg.high}}}, i, j)$ at "
                 f"{_where(data)} of {data.n_layers} (paper: layer 48 of 96)\nbasis: {_SIDE_TXT[side]}; "
                 f"random subspaces give $\\phi \\approx \\max(i, j)/d$ with d = {res.d}", fontsize=10)
    return fig


def fig_seed_pair(data, *, side="A", vmax=0.5):
    """Fig. 4: φ between two seeds of r = high for each module, and two random Gaussian matrices."""
    cfg = data.config
    mods = data.modules
    fig = _figure(4.3 * (len(mods) + 1), 4.2)
    axes = fig.subplots(1, len(mods) + 1)
    for ax, m in zip(axes, mods):
        res = data.seed_pair.results[data.name(m)][side]
        plot_phi(res, ax=ax, vmax=vmax, title=f"{module_label(m)}: seed {cfg.seeds[0]} vs seed {cfg.seeds[1]}")
    rnd = data.random_sim[mods[0]]
    plot_phi(rnd, ax=axes[-1], vmax=vmax,
             title=f"random: two Gaussian ({cfg.high} × {rnd.d}) matrices")
    X = "A" if side == "A" else r"\Delta W"
    fig.suptitle(f"Fig. 4 — $\\phi({X}_{{r={cfg.high}}}, {X}'_{{r={cfg.high}}}, i, j)$ between two random seeds "
                 f"at {_where(data)} (paper: layer 48)\nbasis: {_SIDE_TXT[side]}; colour scale 0 – {vmax} "
                 f"(values above are drawn at {vmax})", fontsize=10)
    return fig


def fig_layers(data, *, which="rank", side="A"):
    """Fig. 6 (``which="rank"``: r = low vs high) or Fig. 7 (``"seed"``) at several layers."""
    cfg = data.config
    sweep = data.rank_pair if which == "rank" else data.seed_pair
    layers = list(cfg.layers)
    mods = data.modules
    fig = _figure(3.4 * len(layers), 2.9 * len(mods) + 0.8)
    axes = np.atleast_2d(fig.subplots(len(mods), len(layers), squeeze=False))
    for a, m in enumerate(mods):
        for b, layer in enumerate(layers):
            res = sweep.results[data.name(m, layer)][side]
            last = b == len(layers) - 1
            if which == "rank":
                plot_phi(res, ax=axes[a, b], i_max=cfg.low, colorbar=last, annotate="never",
                         title=f"{module_label(m)}, layer {layer}")
            else:
                plot_phi(res, ax=axes[a, b], colorbar=last, vmax=0.5, title=f"{module_label(m)}, layer {layer}")
    if which == "rank":
        head = (f"Fig. 6 — $\\phi(A_{{r={cfg.low}}}, A_{{r={cfg.high}}}, i, j)$ at layers "
                f"{', '.join(map(str, layers))} of {data.n_layers} (paper: 1, 32, 64, 96 of 96)")
    else:
        head = (f"Fig. 7 — $\\phi(A_{{r={cfg.high}}}, A'_{{r={cfg.high}}}, i, j)$ between seeds at layers "
                f"{', '.join(map(str, layers))} of {data.n_layers} (paper: 1, 32, 64, 96 of 96)")
    who = (f"i: top-i directions of r = {cfg.low}, j: top-j of r = {cfg.high}" if which == "rank"
           else f"i: seed {cfg.seeds[0]}, j: seed {cfg.seeds[1]}; colour scale 0 – 0.5")
    fig.suptitle(f"{head}\nbasis: {_SIDE_TXT[side]}; {who}", fontsize=10)
    return fig


def table7_frame(data):
    """Table 7 as displayed: our rows (focus layer, every rank, every module), then the paper's."""
    import pandas as pd

    t = data.table7
    import os

    model = os.path.splitext(os.path.basename(data.config.base or "base"))[0].split(".")[0]
    ours = pd.DataFrame({"model": f"{model}, layer " + t["layer"].astype(str),
                         "ΔW": [module_label(m) for m in t["module"]], "r": t["r"],
                         "proj_delta": t["proj_delta"], "proj_w": t["proj_w"], "proj_random": t["proj_random"],
                         "w_norm": t["w_norm"], "delta_norm": t["fro"], "amplification": t["amplification"]})
    paper = pd.DataFrame(PAPER_TABLE7)
    paper.insert(0, "ΔW", "$\\Delta W_q$")
    paper.insert(0, "model", "GPT-3 (paper), layer 48")
    return pd.concat([ours, paper], ignore_index=True)


def fig_table7(data):
    """Table 7 rendered: ‖Uᵀ W V‖_F for U, V of ΔW, of W and random, next to ‖W‖_F, ‖ΔW‖_F."""
    fr = table7_frame(data)
    fig = _figure(11, 0.32 * len(fr) + 1.4)
    ax = fig.add_subplot()
    labels = ["model", "ΔW", "r", r"$\|U^\top W V\|_F$" + "\nU, V of ΔW", "U, V\nof W", "U, V\nrandom",
              r"$\|W\|_F$", r"$\|\Delta W\|_F$", "amplification\n" + r"$\|\Delta W\|_F / \|U^\top W V\|_F$"]
    fmt = {"r": "{:.0f}", "proj_delta": "{:.3f}", "proj_w": "{:.2f}", "proj_random": "{:.3f}",
           "w_norm": "{:.2f}", "delta_norm": "{:.3f}", "amplification": "{:.2f}"}
    tab = plot_table(fr, ax=ax, col_labels=labels, fmt=fmt, fontsize=8,
                     col_widths=[0.2, 0.06, 0.04, 0.11, 0.08, 0.08, 0.07, 0.08, 0.15])
    for (r, _), cell in tab.get_celld().items():
        if r == 0:
            cell.set_height(cell.get_height() * 2.0)
        elif r > len(fr) - len(PAPER_TABLE7):
            cell.set_facecolor("#fff3d6")
    ax.set_title(f"Table 7 — how ΔW relates to W at layer {data.config.layer} (U, V: top-r singular vectors; "
                 f"random: mean over {data.config.n_random_table} seeded draws). Paper's rows shaded.", fontsize=9)
    return fig


def fig_weight_overlap(data, *, j=None):
    """Fig. 8: φ(i, j) between W's top-i directions and ΔW's top-j, per module and side."""
    mods = data.modules
    fig = _figure(10, 3.6 * len(mods) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(mods), 2, squeeze=False))
    for a, m in enumerate(mods):
        for b, side in enumerate(("output", "input")):
            res = data.overlaps[(m, side)]
            jtxt = "all of ΔW's directions (j = rank)" if j is None else f"ΔW's top-{j}"
            plot_weight_overlap(res, ax=axes[a, b], j=j, title=f"{module_label(m)}: {side} side, {jtxt}")
    fig.suptitle(f"Fig. 8 — overlap of ΔW's singular directions with W's top-i, at layer {data.config.layer}\n"
                 "curves far above their dashed null = ΔW lives in W's emphasised directions", fontsize=10)
    return fig


def fig_weight_overlap_heatmap(data, *, module=None, vmax=0.5, i_max=128):
    """Fig. 8 in the paper's heatmap form: φ(i, j), i down W's spectrum (x), j over ΔW's directions (y)."""
    m = module or next((x for x in data.modules if x.endswith("q_proj")), data.modules[0])
    sides = ("output", "input")
    labs = list(data.overlaps[(m, sides[0])])
    fig = _figure(12, 2.2 * len(labs) + 1.0)
    axes = np.atleast_2d(fig.subplots(len(labs), 2, squeeze=False))
    for a, lab in enumerate(labs):
        for b, side in enumerate(sides):
            res = data.overlaps[(m, side)][lab]
            if res.zero:
                axes[a, b].set_axis_off()
                continue
            plot_phi(res, ax=axes[a, b], transpose=True, i_max=i_max, annotate="never", vmax=vmax,
                     colorbar=b == 1, xlabel=f"i: W's top-i {side} singular directions",
                     ylabel=f"j: ΔW's top-j ({lab})", title=f"{module_label(m)}, {lab}, {side} side")
    fig.suptitle(f"Fig. 8 (heatmap form) — φ(i, j) between W's top-i and ΔW's top-j singular directions at layer "
                 f"{data.config.layer} (i ≤ {i_max}); colour scale capped at {vmax}; random: φ ≈ max(i, j)/d",
                 fontsize=10)
    return fig


def fig_phi11_layers(data):
    """Beyond the paper: φ(1, 1) at every layer, for the rank pair and the seed pair, two bases."""
    cfg = data.config
    pairs = [("rank", data.rank_pair, f"r = {cfg.low} vs r = {cfg.high} (both seed {cfg.seeds[0]})"),
             ("seed", data.seed_pair, f"r = {cfg.high}: seed {cfg.seeds[0]} vs {cfg.seeds[1]}")]
    if data.cross_pair is not None:
        pairs.append(("cross", data.cross_pair, f"control: r = {cfg.low} seed {cfg.seeds[1]} vs "
                                                f"r = {cfg.high} seed {cfg.seeds[0]}"))
    fig = _figure(5.5 * len(pairs), 6.4)
    axes = np.atleast_2d(fig.subplots(2, len(pairs), sharey=True, squeeze=False))
    for a, side in enumerate(("A", "input")):
        for b, (_, sweep, txt) in enumerate(pairs):
            if sweep is None:
                axes[a, b].set_axis_off()
                continue
            fr = sweep.frame
            plot_layer_profile(fr, f"phi11_{side}", ax=axes[a, b], null=1.0 / int(fr["d_in"].iloc[0]),
                               null_label="random null 1/d", ylabel=r"$\phi(1, 1)$",
                               title=f"{txt}\n{_SIDE_TXT[side]}")
            axes[a, b].set_ylim(0, 1.02)
    fig.suptitle("φ(1, 1) at every layer: is the top direction shared? (beyond the paper, which shows "
                 "4 layers)", fontsize=10)
    return fig


def fig_amplification_layers(data):
    """Beyond the paper: the amplification factor at every layer, per rank, with its random counterpart."""
    import pandas as pd

    cfg = data.config
    frames = []
    for r in cfg.ranks:
        lab = f"r{r}_seed{cfg.seeds[0]}"
        if lab in data.sweeps and "amplification" in data.sweeps[lab].frame:
            f = data.sweeps[lab].frame.copy()
            f["rank_label"] = f"r = {r}"
            f["amp_random"] = f["fro"] / f["proj_random"]
            frames.append(f)
    fr = pd.concat(frames, ignore_index=True)
    order = {f"r = {r}": n for n, r in enumerate(cfg.ranks)}
    fig = _figure(11, 4.8)
    axes = fig.subplots(1, len(data.modules), sharey=True, squeeze=False)[0]
    from matplotlib import colormaps

    cm = colormaps["plasma"]
    colors = {lab: cm(0.8 * n / max(len(order) - 1, 1)) for lab, n in order.items()}
    for ax, m in zip(axes, data.modules):
        plot_layer_profile(fr[fr["module"] == m], "amplification", ax=ax, hue="rank_label", order=list(order),
                           colors=colors,
                           null="amp_random", null_label="same ‖ΔW‖ along random directions", logy=True,
                           ylabel=r"$\|\Delta W\|_F / \|U^\top W V\|_F$",
                           title=f"{module_label(m)}: amplification factor per layer",
                           legend_kw=dict(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3))
    fig.suptitle("Amplification of W's directions by ΔW at every layer (Table 7's last column, beyond "
                 "the paper's single layer)", fontsize=10)
    return fig


def fig_spectra(data, *, ranks=None):
    """Beyond the paper: singular-value spectra of ΔW per layer, for the larger ranks."""
    cfg = data.config
    ranks = [r for r in (ranks or (cfg.low, cfg.high)) if f"r{r}_seed{cfg.seeds[0]}" in data.sweeps]
    fig = _figure(5.2 * len(data.modules), 3.4 * len(ranks) + 0.5)
    axes = np.atleast_2d(fig.subplots(len(ranks), len(data.modules), squeeze=False))
    for a, r in enumerate(ranks):
        sw = data.sweeps[f"r{r}_seed{cfg.seeds[0]}"]
        for b, m in enumerate(data.modules):
            plot_spectra(sw, ax=axes[a, b], module=m, title=f"{module_label(m)}, r = {r}: spectrum per layer")
    fig.suptitle("Singular values of ΔW (normalised by σ₁), one line per layer", fontsize=10)
    return fig


def fig_rank_advice(data):
    """Beyond the paper: the rank each module needs, from the directions the two seeds of r = high share."""
    from analysis.plotting import plot_advised_rank

    cfg = data.config
    fig = _figure(7, 3.8)
    art = plot_advised_rank(data.advice, ax=fig.add_subplot())
    art.ax.set_title(f"Advised rank per layer: directions of ΔW that r = {cfg.high} seeds {cfg.seeds[0]} and "
                     f"{cfg.seeds[1]} share beyond chance", fontsize="medium")
    return fig
