"""Figure-level helpers: each composes several Axes from the plotting functions into one Figure.

Two kinds, both returning a ``matplotlib.figure.Figure`` built with the object
API (no pyplot state, nothing saved here):

- builders on plain inputs (a PairSweep, sweep frames, labels, a layer),
  shared by the report and ``python -m analysis.subspace A B --out DIR``:
  :func:`phi_modules_figure`, :func:`phi11_layers_figure`,
  :func:`spectra_figure`, :func:`amplification_figure`, :func:`table7_figure`;
- ``fig_x(data)``: one figure of the report from its ReportData
  (:mod:`analysis.report.write` saves them).
"""

from __future__ import annotations

import numpy as np

from analysis.plotting import (plot_advised_rank, plot_layer_profile, plot_phi, plot_spectra, plot_table,
                               plot_weight_overlap)
from analysis.plotting.common import module_label

__all__ = ["phi_modules_figure", "phi11_layers_figure", "spectra_figure", "amplification_figure",
           "table7_figure", "table7_rows",
           "fig_rank_pair", "fig_seed_pair", "fig_layers", "fig_table7", "fig_weight_overlap",
           "fig_weight_overlap_heatmap",
           "fig_phi11_layers", "fig_amplification_layers", "fig_spectra", "fig_rank_advice", "fig_long_run",
           "fig_data_vs_init", "PAPER_TABLE7",
           "SIDE_TEXT"]

#: Table 7 of the paper (GPT-3, layer 48 of 96, ΔWq; ‖Wq‖_F = 61.95).
PAPER_TABLE7 = [dict(r=4, proj_delta=0.32, proj_w=21.67, proj_random=0.02, w_norm=61.95, delta_norm=6.91,
                     amplification=21.5),
                dict(r=64, proj_delta=1.90, proj_w=37.71, proj_random=0.33, w_norm=61.95, delta_norm=3.57,
                     amplification=1.9)]

#: What each basis of a φ comparison is, as written in titles.
SIDE_TEXT = {"A": "right-singular vectors of $A$ (the paper's basis)",
             "B": "left-singular vectors of $B$",
             "input": r"right-singular vectors of $\Delta W$ (input side)",
             "output": r"left-singular vectors of $\Delta W$ (output side)"}


def _figure(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _where(data, layer=None):
    layer = data.config.layer if layer is None else layer
    return f"layer {layer}"


# ---- builders on plain inputs (shared with ``python -m analysis.subspace --out``) ----------------------------

_PHI_FIELDS = ("title", "xlabel", "ylabel")


def phi_modules_figure(sweep, names, *, panels, labels=("A", "B"), width=10.0, row_height=3.3,
                       width_ratios=None, suptitle=None):
    """φ(i, j) heatmaps of one pair of adapters: one row per module, one column per panel.

    Parameters
    ----------
    sweep : PairSweep
        Its ``results[name][side]`` are drawn.
    names : sequence of str
        Module names, one row each (e.g. the modules of one layer).
    panels : sequence of Mapping
        One per column: ``"side"`` (the basis, a key of ``results[name]``)
        and options of :func:`analysis.plotting.plot_phi`. Its ``title``,
        ``xlabel`` and ``ylabel`` are ``str.format`` templates with the fields
        ``module`` (ΔW_q, …), ``a``, ``b`` (``labels``), ``r1``, ``r2`` (the
        ranks), ``k1``, ``k2`` (the φ grid's shape) and ``d``; double literal
        braces.
    labels : (str, str)
        Names of the two adapters.
    width, row_height : float
        Figure width and height per row (inches).
    width_ratios : sequence of float, optional
        Relative widths of the columns.
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    names, panels = list(names), [dict(p) for p in panels]
    if not names or not panels:
        raise ValueError(f"need at least one module and one panel, got {len(names)} and {len(panels)}")
    fig = _figure(width, row_height * len(names) + 0.6)
    axes = fig.subplots(len(names), len(panels), squeeze=False,
                        gridspec_kw=None if width_ratios is None else {"width_ratios": list(width_ratios)})
    for row, name in enumerate(names):
        for col, panel in enumerate(panels):
            kw = dict(panel)
            res = sweep.results[name][kw.pop("side")]
            fields = dict(module=module_label(name), a=labels[0], b=labels[1], r1=res.r1, r2=res.r2,
                          k1=res.phi.shape[0], k2=res.phi.shape[1], d=res.d)
            for key in _PHI_FIELDS:
                if isinstance(kw.get(key), str):
                    kw[key] = kw[key].format(**fields)
            plot_phi(res, ax=axes[row, col], **kw)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def phi11_layers_figure(frames, *, sides=("A", "input"), suptitle=None, ties=None, swaps=None):
    """φ(1, 1) per layer, one line per module type: does the top direction agree?

    Parameters
    ----------
    frames : Mapping[str, pandas.DataFrame or None]
        Pair name -> ``PairSweep.frame`` (columns ``layer, module, d_in,
        phi11_<side>``); None leaves its panels empty.
    sides : sequence of str
        Bases drawn (``phi11_A``, ``phi11_input``, …).
    suptitle : str, optional
    ties : Mapping[str, Mapping[str, iterable of (int, str)]], optional
        Pair name -> side -> ``(layer, module)`` where either adapter's top two
        singular values nearly tie: marked with a ring (φ(1, 1) may dip there
        while the top-2 subspaces agree).
    swaps : Mapping[str, Mapping[str, iterable of (int, str)]], optional
        The same for modules whose top two directions swapped order between
        the adapters: marked with a triangle.

    Returns
    -------
    matplotlib.figure.Figure
        One row per side and one column per pair; a single pair puts its
        sides side by side. Log y axis, so that the random null 1/d (dashed:
        one grey line when all modules share d, else one per module) is
        visible next to values near 1; every panel has its own tick labels.
    """
    pairs = list(frames.items())
    if not pairs:
        raise ValueError("no pair to draw")
    if len(pairs) == 1:
        fig = _figure(5.5 * len(sides), 3.8)
        axes = fig.subplots(1, len(sides), sharey=True, squeeze=False)
        cell = {(a, 0): axes[0, a] for a in range(len(sides))}
    else:
        fig = _figure(5.5 * len(pairs), 3.2 * len(sides))
        axes = fig.subplots(len(sides), len(pairs), sharey=True, squeeze=False)
        cell = {(a, b): axes[a, b] for a in range(len(sides)) for b in range(len(pairs))}
    lows = [float((1.0 / fr["d_in"]).min()) for _, fr in pairs if fr is not None]
    lows += [float(fr[f"phi11_{side}"][fr[f"phi11_{side}"] > 0].min()) for _, fr in pairs if fr is not None
             for side in sides if (fr[f"phi11_{side}"] > 0).any()]
    floor = min(lows, default=1e-3) / 3
    for a, side in enumerate(sides):
        for b, (txt, fr) in enumerate(pairs):
            ax = cell[(a, b)]
            if fr is None:
                ax.set_axis_off()
                continue
            d = fr["d_in"].unique()
            if len(d) == 1:
                null = 1.0 / int(d[0])
            else:  # modules of different input size: each its own null
                fr, null = fr.assign(null11=1.0 / fr["d_in"]), "null11"
            col = f"phi11_{side}"
            plot_layer_profile(fr, col, ax=ax, null=null, null_label="random null 1/d", logy=True,
                               ylabel=r"$\phi(1, 1)$ (log scale)",
                               title=f"{txt}\n{SIDE_TEXT[side]}" if txt else SIDE_TEXT[side])
            ax.set_ylim(floor, 1.5)  # every positive value and the null inside the axes (shared y)
            ax.tick_params(labelleft=True)
            for what, style in (((ties or {}), dict(marker="o", s=90, label="top two σ within 10 %")),
                                ((swaps or {}), dict(marker="^", s=70, label="top two directions swapped"))):
                marks = set(what.get(txt, {}).get(side, ()))
                hit = fr[[(int(L), m) in marks for L, m in zip(fr["layer"], fr["module"])]] if marks else fr.iloc[:0]
                if len(hit):
                    ax.scatter(hit["layer"], hit[col].clip(lower=floor), facecolors="none", edgecolors="crimson",
                               linewidths=1.2, zorder=5, **style)
            if b == 0:  # one legend per row, where it hides no point
                ax.legend(fontsize=6.5, loc="lower left", ncol=2)
            elif ax.get_legend() is not None:
                ax.get_legend().remove()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def spectra_figure(spectra, modules, *, title="{label}: {module}",
                   suptitle="Singular values of ΔW (normalised by σ₁), one line per layer"):
    """Singular-value spectra of ΔW per layer: one row per adapter, one column per module type.

    Parameters
    ----------
    spectra : Mapping[str, AdapterSweep or Mapping[str, (k,) array_like]]
        Row label -> spectra (``AdapterSweep.spectra`` or module name -> σ).
    modules : sequence of str
        Module types, one column each (kept: names containing it).
    title : str
        Panel title, a template with fields ``label`` and ``module`` (ΔW_q, …).
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows, modules = list(spectra.items()), list(modules)
    fig = _figure(5.2 * len(modules), 3.4 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), len(modules), squeeze=False)
    for a, (label, sp) in enumerate(rows):
        for b, m in enumerate(modules):
            plot_spectra(sp, ax=axes[a, b], module=m, title=title.format(label=label, module=module_label(m)))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def amplification_figure(frames, *, modules=None, title="{module}: amplification factor per layer",
                         suptitle=None):
    """Amplification factor ‖ΔW‖_F / ‖Uᵀ W V‖_F per layer: a panel per module type, a line per adapter.

    Parameters
    ----------
    frames : Mapping[str, pandas.DataFrame]
        Adapter label -> ``AdapterSweep.frame`` computed with a base (columns
        ``layer, module, amplification, fro, proj_random``), in legend order.
    modules : sequence of str, optional
        Module types, one panel each; default all, sorted.
    title : str
        Panel title, a template with the field ``module`` (ΔW_q, …).
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        Dashed: the same ‖ΔW‖_F along random directions (‖ΔW‖_F / proj_random).
    """
    import pandas as pd
    from matplotlib import colormaps


    if not frames:
        raise ValueError("no adapter frame to draw")
    order = list(frames)
    fr = pd.concat([f.assign(adapter=lab) for lab, f in frames.items()], ignore_index=True)
    fr["amp_random"] = fr["fro"] / fr["proj_random"]
    modules = sorted(fr["module"].unique()) if modules is None else list(modules)
    fig = _figure(5.5 * len(modules), 4.8)
    axes = fig.subplots(1, len(modules), sharey=True, squeeze=False)[0]
    cm = colormaps["plasma"]
    colors = {lab: cm(0.8 * n / max(len(order) - 1, 1)) for n, lab in enumerate(order)}
    for ax, m in zip(axes, modules):
        plot_layer_profile(fr[fr["module"] == m], "amplification", ax=ax, hue="adapter", order=order,
                           colors=colors,
                           null="amp_random", null_label="same ‖ΔW‖ along random directions", logy=True,
                           ylabel=r"$\|\Delta W\|_F / \|U^\top W V\|_F$",
                           title=title.format(module=module_label(m)),
                           legend_kw=dict(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def _layer_txt(v):
    import pandas as pd

    return "–" if pd.isna(v) else str(int(v))


def table7_rows(frames, *, paper=True):
    """Table 7 as displayed: each frame's rows (label, layer; module; r; the projections and norms), then the paper's.

    Parameters
    ----------
    frames : Mapping[str, pandas.DataFrame]
        Label (a model or adapter) -> rows with ``layer, module, r,
        proj_delta, proj_w, proj_random, w_norm, fro, amplification`` (as in
        ``AdapterSweep.frame`` with a base).
    paper : bool
        Append :data:`PAPER_TABLE7`.

    Returns
    -------
    pandas.DataFrame
        Columns ``model, ΔW, r, proj_delta, proj_w, proj_random, proj_random_sd,
        z, w_norm, delta_norm, amplification, amp_random``: ``proj_random_sd`` is the
        random case's sd over its draws, ``z`` ΔW's z-score against it and
        ``amp_random`` the amplification random directions of the same ‖ΔW‖
        give (NaN where a frame has no sd, and in the paper's rows).
    """
    import pandas as pd

    parts = []
    for label, t in frames.items():
        sd = t["proj_random_std"] if "proj_random_std" in t else np.nan
        parts.append(pd.DataFrame({"model": [f"{label}, layer {_layer_txt(v)}" for v in t["layer"]],
                                   "ΔW": [module_label(m) for m in t["module"]], "r": t["r"],
                                   "proj_delta": t["proj_delta"], "proj_w": t["proj_w"],
                                   "proj_random": t["proj_random"], "proj_random_sd": sd,
                                   "z": (t["proj_delta"] - t["proj_random"]) / sd, "w_norm": t["w_norm"],
                                   "delta_norm": t["fro"], "amplification": t["amplification"],
                                   "amp_random": t["fro"] / t["proj_random"]}))
    if paper:
        ref = pd.DataFrame(PAPER_TABLE7)
        ref.insert(0, "ΔW", "$\\Delta W_q$")
        ref.insert(0, "model", "GPT-3 (paper), layer 48")
        parts.append(ref)
    return pd.concat(parts, ignore_index=True)


def table7_figure(frames, *, paper=True, title=None, label_header="model"):
    """Table 7 rendered: ‖Uᵀ W V‖_F for U, V of ΔW, of W and random, next to ‖W‖_F, ‖ΔW‖_F.

    Parameters
    ----------
    frames : Mapping[str, pandas.DataFrame]
        As for :func:`table7_rows`.
    paper : bool
        Add the paper's rows, shaded.
    title : str, optional
    label_header : str
        Header of the first column (the frames' labels).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fr = table7_rows(frames, paper=paper)
    n_paper = len(PAPER_TABLE7) if paper else 0
    fig = _figure(13, 0.32 * len(fr) + 1.4)
    ax = fig.add_subplot()
    labels = [label_header, "ΔW", "r", r"$\|U^\top W V\|_F$" + "\nU, V of ΔW", "U, V\nof W", "U, V\nrandom",
              "random\nsd", "z of ΔW\nvs random", r"$\|W\|_F$", r"$\|\Delta W\|_F$",
              "amplification\n" + r"$\|\Delta W\|_F / \|U^\top W V\|_F$", "amplification,\nrandom U, V"]
    fmt = {"r": "{:.0f}", "proj_delta": "{:.3f}", "proj_w": "{:.2f}", "proj_random": "{:.3f}",
           "proj_random_sd": "{:.3f}", "z": "{:+.1f}", "w_norm": "{:.2f}", "delta_norm": "{:.3f}",
           "amplification": "{:.2f}", "amp_random": "{:.2f}"}
    fr = fr.astype({c: float for c in fmt if c != "r"})
    art = plot_table(fr, ax=ax, col_labels=labels, fmt=fmt, fontsize=8,
                     col_widths=[0.17, 0.05, 0.03, 0.09, 0.06, 0.06, 0.05, 0.07, 0.05, 0.06, 0.12, 0.09])
    for (r, _), cell in art["table"].get_celld().items():
        if r == 0:
            cell.set_height(cell.get_height() * 2.0)
        elif r > len(fr) - n_paper:
            cell.set_facecolor("#fff3d6")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# ---- the report's figures (from ReportData) -----------------------------------------------------------------


def fig_rank_pair(data, *, side="A"):
    """Fig. 3: φ(A_{r=low}, A_{r=high}, i, j) for each module at the focus layer, and the j ≤ low zoom."""
    lo, hi = data.rank("low"), data.rank("high")
    names = [data.name(m) for m in data.modules]
    panels = [dict(side=side, i_max=lo,
                   title=f"{{module}}: $i \\leq {lo}$ ({data.say('low')}), $j \\leq {{k2}}$ ({data.say('high')})"),
              dict(side=side, i_max=lo, j_max=lo, title=f"{{module}}: zoom $j \\leq {lo}$")]
    d = data.rank_pair.results[names[-1]][side].d
    X = "A" if side == "A" else r"\Delta W"
    return phi_modules_figure(
        data.rank_pair, names, panels=panels, width=12, row_height=2.6, width_ratios=[3.2, 1.25],
        suptitle=f"Fig. 3 — subspace similarity $\\phi({X}_{{r={lo}}}, {X}_{{r={hi}}}, i, j)$ at "
                 f"{_where(data)} of {data.n_layers} (paper: layer 48 of 96)\nbasis: {SIDE_TEXT[side]}; "
                 f"random subspaces give $\\phi \\approx \\max(i, j)/d$ with d = {d}")


def fig_seed_pair(data, *, side="A", vmax=1.0):
    """Fig. 4: φ between two seeds of r = high for each module, and two random Gaussian matrices."""
    hi = data.rank("seed_a")
    mods = data.modules
    fig = _figure(4.3 * (len(mods) + 1), 4.2)
    axes = fig.subplots(1, len(mods) + 1)
    for ax, m in zip(axes, mods):
        res = data.seed_pair.results[data.name(m)][side]
        plot_phi(res, ax=ax, vmax=vmax, title=f"{module_label(m)}: {data.say('seed_a')} vs {data.say('seed_b')}")
    rnd = data.random_sim[mods[0]]
    plot_phi(rnd, ax=axes[-1], vmax=vmax,
             title=f"random: two Gaussian ({rnd.phi.shape[0]} × {rnd.d}) matrices")
    X = "A" if side == "A" else r"\Delta W"
    fig.suptitle(f"Fig. 4 — $\\phi({X}_{{r={hi}}}, {X}'_{{r={hi}}}, i, j)$ between two runs (seeds) "
                 f"at {_where(data)} (paper: layer 48)\nbasis: {SIDE_TEXT[side]}; colour scale 0 – {vmax:g} (the paper's); "
                 f"random subspaces give $\\phi \\approx \\max(i, j)/d$ with d = {rnd.d}, as in the right panel",
                 fontsize=10)
    return fig


def fig_layers(data, *, which="rank", side="A"):
    """Fig. 6 (``which="rank"``: r = low vs high) or Fig. 7 (``"seed"``) at several layers."""
    cfg = data.config
    lo, hi = data.rank("low"), data.rank("high" if which == "rank" else "seed_a")
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
                plot_phi(res, ax=axes[a, b], i_max=lo, colorbar=last, annotate="never",
                         title=f"{module_label(m)}, layer {layer}")
            else:
                plot_phi(res, ax=axes[a, b], colorbar=last, vmax=1.0, annotate="never",
                         title=f"{module_label(m)}, layer {layer}")
    if which == "rank":
        head = (f"Fig. 6 — $\\phi(A_{{r={lo}}}, A_{{r={hi}}}, i, j)$ at layers "
                f"{', '.join(map(str, layers))} of {data.n_layers} (paper: 1, 32, 64, 96 of 96)")
    else:
        head = (f"Fig. 7 — $\\phi(A_{{r={hi}}}, A'_{{r={hi}}}, i, j)$ between two runs at layers "
                f"{', '.join(map(str, layers))} of {data.n_layers} (paper: 1, 32, 64, 96 of 96)")
    who = (f"i: top-i directions of {data.say('low')}, j: top-j of {data.say('high')}" if which == "rank"
           else f"i: {data.say('seed_a')}, j: {data.say('seed_b')}; colour scale 0 – 1 (the paper's)")
    d = sweep.results[data.name(mods[0], layers[0])][side].d
    fig.suptitle(f"{head}\nbasis: {SIDE_TEXT[side]}; {who}; random: $\\phi \\approx \\max(i, j)/d$, d = {d}",
                 fontsize=10)
    return fig


def _t7_frames(data):
    """Table 7's rows by label: the base model's name (reference checkpoints), else one group per adapter."""
    if not data.config.pairs:
        return {_model_name(data): data.table7}
    t = data.table7
    return {data.series(lab): t[t["adapter"] == lab] for lab in dict.fromkeys(t["adapter"])}


def table7_frame(data):
    """Table 7 as displayed: our rows (focus layer, every rank, every module), then the paper's."""
    return table7_rows(_t7_frames(data))


def _model_name(data):
    import os

    return os.path.splitext(os.path.basename(data.config.base or "base"))[0].split(".")[0]


def fig_table7(data):
    """Table 7 rendered: ‖Uᵀ W V‖_F for U, V of ΔW, of W and random, next to ‖W‖_F, ‖ΔW‖_F."""
    return table7_figure(_t7_frames(data),
                         title=f"Table 7 — how ΔW relates to W at layer {data.config.layer} (U, V: top-r singular "
                               f"vectors; random: mean and sd over {data.config.n_random_table} Haar-random U, V). "
                               "Paper's rows shaded.")


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
    """Beyond the paper: φ(1, 1) at every layer, for the rank pair and the seed pair, two bases, near ties marked."""
    from analysis.core.adapter import split_name
    from analysis.report.findings import swapped_modules, tied_modules

    a = data.adapter
    pairs = {f"{data.say('low')} vs {data.say('high')}": (data.rank_pair, a("low"), a("high")),
             f"{data.say('seed_a')} vs {data.say('seed_b')}": (data.seed_pair, a("seed_a"), a("seed_b"))}
    if data.cross_pair is not None:
        pairs[f"control: {data.say('low_other')} vs {data.say('high')}"] = (data.cross_pair, a("low_other"),
                                                                             a("high"))
    ties = {txt: {side: [split_name(n) for n in tied_modules(a, b, side, list(sw.results))]
                  for side in ("A", "input")} for txt, (sw, a, b) in pairs.items() if sw is not None}
    swaps = {txt: {side: [split_name(n) for n in swapped_modules(sw, side)] for side in ("A", "input")}
             for txt, (sw, _, _) in pairs.items() if sw is not None}
    return phi11_layers_figure({txt: None if sw is None else sw.frame for txt, (sw, _, _) in pairs.items()},
                               ties=ties, swaps=swaps,
                               suptitle="φ(1, 1) at every layer: is the top direction shared? (beyond the paper, "
                                        "which shows 4 layers); dashed: two random lines, 1/d; rings: a near tie of "
                                        "the top two singular values; triangles: the top two directions swapped")


def fig_amplification_layers(data):
    """Beyond the paper: the amplification factor at every layer, per rank, with its random counterpart."""
    frames = {}
    for lab in data.table_labels:
        if lab in data.sweeps and "amplification" in data.sweeps[lab].frame:
            frames[data.series(lab)] = data.sweeps[lab].frame
    return amplification_figure(frames, modules=data.modules,
                                suptitle="Amplification of W's directions by ΔW at every layer (Table 7's last "
                                         "column, beyond the paper's single layer)")


def fig_spectra(data):
    """Beyond the paper: singular-value spectra of ΔW per layer, for the larger ranks."""
    labs = [data.roles[k] for k in ("low", "high", "seed_a") if k in data.roles]
    labs = [lab for lab in dict.fromkeys(labs) if lab in data.sweeps]
    return spectra_figure({data.series(lab): data.sweeps[lab] for lab in labs}, data.modules,
                          title="{module}, {label}: spectrum per layer")


def fig_rank_advice(data):
    """Beyond the paper: the rank each module needs, from the directions the two seeds of r = high share."""
    fig = _figure(7, 3.8)
    art = plot_advised_rank(data.advice, ax=fig.add_subplot())
    art.ax.set_title(f"Advised rank per layer: directions of ΔW that {data.say('seed_a')} and\n{data.say('seed_b')} "
                     "share beyond chance (random subspaces: mean + 3 sd)", fontsize="medium")
    return fig


def fig_long_run(data):
    """Table 7 over training time: ΔWq's ‖UᵀWV‖ z-score, the amplification beside its random counterpart and
    ‖ΔW‖/‖W‖ against the step, at the focus layer (top row) and as the median over layers (bottom row)."""
    from analysis.report.protocol import Z_MIN

    lr = data.long_run
    fig = _figure(14, 7.2)
    axes = fig.subplots(2, 3, sharex=True)
    colors = dict(zip(sorted(lr["r"].unique()), ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    L = data.config.layer
    for row, (where, sub) in enumerate((("layer %d" % L, lr[lr["layer"] == L]),
                                        ("median over layers", lr.groupby(["r", "step"], as_index=False).median(
                                            numeric_only=True)))):
        for r, g in sub.groupby("r"):
            g = g.sort_values("step")
            c = colors[r]
            axes[row, 0].plot(g["step"], g["z"], "o-", color=c, ms=3, label=f"r = {r}")
            axes[row, 1].plot(g["step"], g["amplification"], "o-", color=c, ms=3, label=f"r = {r}: ΔW")
            axes[row, 1].plot(g["step"], g["amp_random"], ":", color=c, label=f"r = {r}: random U, V, same ‖ΔW‖")
            axes[row, 2].plot(g["step"], 100 * g["rel_norm"], "o-", color=c, ms=3, label=f"r = {r}")
        ax = axes[row, 0]
        ax.axhline(0, color="grey", ls="--", lw=1, label="null mean (z = 0)")
        ax.axhline(Z_MIN, color="crimson", ls="-.", lw=1, label=f"z = {Z_MIN:g} (protocol)")
        ax.set_ylabel(f"z of ‖UᵀWqV‖, U, V of ΔWq\n({where})")
        axes[row, 1].set_yscale("log")
        axes[row, 1].set_ylabel(f"amplification ‖ΔW‖/‖UᵀWV‖\n({where})")
        axes[row, 2].set_ylabel(f"‖ΔWq‖_F / ‖Wq‖_F, % ({where})")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("training step")
    fig.suptitle("Table 7 over training time (long runs, seed 0): is ΔWq's projection on W above random? "
                 f"null: {data.config.n_random_table} Haar-random U, V per layer and rank; paper: 11 % (r = 4) and "
                 "5.8 % (r = 64) for ‖ΔWq‖/‖Wq‖", fontsize=10)
    return fig


def fig_data_vs_init(data):
    """What the shared top direction comes from: φ(1, 1) per layer against r = high seed 0 for r = low runs
    with each combination of data-order seed and initialisation seed."""
    cfg = data.config
    mods = data.modules
    fig = _figure(6 * len(mods), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(mods)))
    styles = {(True, True): ("tab:blue", "-"), (True, False): ("tab:green", "-"), (False, True): ("tab:orange", "--"),
              (False, False): ("tab:red", "--")}
    for ax, m in zip(axes, mods):
        d = None
        for lab, pair in data.init_pairs.items():
            ds, is_ = data.init_seeds.get(lab, (None, None))
            same = (ds == cfg.seeds[0], is_ == cfg.seeds[0])
            fr = pair.frame[pair.frame["module"] == m].sort_values("layer")
            d = int(fr["d_in"].iloc[0]) if len(fr) else d
            c, ls = styles[same]
            ax.plot(fr["layer"], fr["phi11_A"], ls, marker="o", ms=3, color=c,
                    label=f"{lab}: data {'same' if same[0] else 'other'}, init {'same' if same[1] else 'other'}")
        if d:
            ax.axhline(1.0 / d, color="grey", ls=":", label=f"random lines: 1/d = {1 / d:.4f}")
            ax.set_ylim(1.0 / d / 3, 1.5)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(r"$\phi(1, 1)$ (A basis, log scale)")
        ax.set_title(f"{module_label(m)}: r = {cfg.low} runs vs r = {cfg.high} seed {cfg.seeds[0]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("What makes r = 8 and r = 64 share their top direction? 'same' = the seed of r = 64 seed 0 "
                 "(data order, initialisation)", fontsize=10)
    return fig


def fig_collection(data):
    """Every shipped adapter against every other: φ(1, 1) of the top input directions and the Frobenius
    cosine of the updates (means over shared modules), seriated, with the task and seeds in the labels."""
    from analysis.plotting import plot_collection_matrix

    col = data.collection
    labels = list(data.collection_meta)
    fig = _figure(16, 8.2)
    axes = fig.subplots(1, 2)
    for ax, kind, title in ((axes[0], "similarity", "φ(1, 1), top input direction (random: 1/d ≈ 0.002)"),
                            (axes[1], "cosine", "Frobenius cosine ⟨ΔWa, ΔWb⟩ (random: 0 ± 0.002)")):
        plot_collection_matrix(col, labels=labels, order=col.order(kind), kind=kind, ax=ax, annotate="never",
                               title=title)
    fig.suptitle("Every shipped adapter against every other (mean over the 60 shared modules, seriated): "
                 "do adapters group by task, by seed or by rank?", fontsize=10)
    return fig
