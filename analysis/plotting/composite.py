"""Composite figures: several Axes drawn by the ``plot_*`` functions, composed into one Figure.

Built with the object API (no pyplot state, nothing saved here), on plain inputs (a PairSweep, sweep frames,
labels), and shared by the report (:mod:`analysis.report.figures`) and the commands (``python -m
analysis.subspace A B --out DIR``). Long texts are wrapped to their panel (:func:`wrap`), legends placed below
their Axes with as many columns as fit (:func:`legend_below`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError
from analysis.io.roles import module_role
from analysis.metrics.nulls import phi11_null
from analysis.plotting.collection import plot_collection_matrix, plot_trajectory, short_labels
from analysis.plotting.common import module_label
from analysis.plotting.heatmap import plot_phi
from analysis.plotting.layers import plot_layer_profile
from analysis.plotting.spectra import plot_spectra
from analysis.plotting.table import plot_table

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

    import pandas as pd
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

    from analysis.sweeps.adapter import AdapterSweep
    from analysis.sweeps.pair import PairSweep

__all__ = ["phi_modules_figure", "phi11_layers_figure", "spectra_figure", "amplification_figure",
           "table7_figure", "table7_rows", "collection_figure", "trajectory_figure", "wrap", "new_figure",
           "legend_below", "ranks_colors", "PAPER_TABLE7", "SIDE_TEXT"]

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


def new_figure(w: float, h: float) -> Figure:
    """A Figure of ``w`` × ``h`` inches with constrained layout (object API)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped (per line) to fit ``width_in`` inches at ``fontsize`` points (about 0.6 em per character).

    Mathtext (``$…$``) is never split; it counts as its visible characters.

    >>> wrap("aaa bbb ccc ddd eee $x y$ fff", 1.0, 10)  # 13 characters a line
    'aaa bbb ccc\\nddd eee $x y$\\nfff'
    """
    import re

    n = max(12, int(width_in * 72 / (0.6 * fontsize)))

    def math_len(m):
        seg = re.sub(r"\\[a-zA-Z]+", "x", m.group(0))
        return "x" * max(1, len(seg) - sum(seg.count(c) for c in "{}_^$"))

    def length(t):
        return len(re.sub(r"\$[^$]*\$", math_len, t))

    out = []
    for line in str(text).split("\n"):
        words, cur, math = [], "", False
        for ch in line:  # split at spaces outside mathtext
            if ch == "$":
                math = not math
            if ch == " " and not math:
                words.append(cur)
                cur = ""
            else:
                cur += ch
        words.append(cur)
        row = ""
        for w in words:
            cand = f"{row} {w}" if row else w
            if row and length(cand) > n:
                out.append(row)
                row = w
            else:
                row = cand
        out.append(row)
    return "\n".join(out)




_PHI_FIELDS = ("title", "xlabel", "ylabel")


def phi_modules_figure(sweep: PairSweep, names: Sequence[str], *, panels: Sequence[Mapping[str, Any]],
                       labels: tuple[str, str] = ("A", "B"), width: float = 10.0, row_height: float = 3.3,
                       width_ratios: Sequence[float] | None = None, suptitle: str | None = None,
                       module_labels: Mapping[str, str] | None = None) -> Figure:
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
    module_labels : Mapping[str, str], optional
        Module name -> its ``module`` field in the templates (default
        :func:`module_label` of the name, e.g. ΔW_q).

    Returns
    -------
    matplotlib.figure.Figure
    """
    names, panels = list(names), [dict(p) for p in panels]
    if not names or not panels:
        raise InputError(f"need at least one module and one panel, got {len(names)} and {len(panels)}")
    fig = new_figure(width, row_height * len(names) + 0.6)
    axes = fig.subplots(len(names), len(panels), squeeze=False,
                        gridspec_kw=None if width_ratios is None else {"width_ratios": list(width_ratios)})
    for row, name in enumerate(names):
        for col, panel in enumerate(panels):
            kw = dict(panel)
            res = sweep.results[name][kw.pop("side")]
            if getattr(res, "zero", False):  # an exactly zero update has no directions to compare
                axes[row, col].set_axis_off()
                axes[row, col].text(0.5, 0.5, f"{module_label(name)}: zero update", ha="center", va="center",
                                    transform=axes[row, col].transAxes)
                continue
            mod = module_labels[name] if module_labels and name in module_labels else module_label(name)
            fields = dict(module=mod, a=labels[0], b=labels[1], r1=res.r1, r2=res.r2,
                          k1=res.phi.shape[0], k2=res.phi.shape[1], d=res.d)
            for key in _PHI_FIELDS:
                if isinstance(kw.get(key), str):
                    kw[key] = kw[key].format(**fields)
            plot_phi(res, ax=axes[row, col], **kw)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def phi11_layers_figure(frames: Mapping[str, pd.DataFrame | None], *, sides: Sequence[str] = ("A", "input"),
                        suptitle: str | None = None,
                        ties: Mapping[str, Mapping[str, Iterable[tuple[int, str]]]] | None = None,
                        swaps: Mapping[str, Mapping[str, Iterable[tuple[int, str]]]] | None = None,
                        labels: Mapping[str, str] | None = None) -> Figure:
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
    labels : Mapping[str, str], optional
        Legend label per value of the frames' ``module`` column (default :func:`module_label`).

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
        raise InputError("no pair to draw")
    if len(pairs) == 1:
        fig = new_figure(5.5 * len(sides), 3.8)
        axes = fig.subplots(1, len(sides), sharey=True, squeeze=False)
        cell = {(a, 0): axes[0, a] for a in range(len(sides))}
    else:
        fig = new_figure(5.5 * len(pairs), 3.2 * len(sides))
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
            null: float | str
            if len(d) == 1:
                null = 1.0 / int(d[0])
            else:  # modules of different input size: each its own null
                fr, null = fr.assign(null11=1.0 / fr["d_in"]), "null11"
            col = f"phi11_{side}"
            plot_layer_profile(fr, col, ax=ax, null=null, null_label="random null 1/d", logy=True, labels=labels,
                               ylabel=r"$\phi(1, 1)$ (log scale)",
                               title=wrap(f"{txt}\n{SIDE_TEXT[side]}" if txt else SIDE_TEXT[side],
                                          5.5, 10))
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
        fig.suptitle(wrap(suptitle, fig.get_figwidth(), 10), fontsize=10)
    return fig


def spectra_figure(spectra: Mapping[str, AdapterSweep | Mapping[str, ArrayLike]], modules: Sequence[str], *,
                   title: str = "{label}: {module}",
                   suptitle: str | None = "Singular values of ΔW (normalised by σ₁), one line per layer") -> Figure:
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
    fig = new_figure(5.2 * len(modules), 3.4 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), len(modules), squeeze=False)
    for a, (label, sp) in enumerate(rows):
        for b, m in enumerate(modules):
            if "/" in m:  # a module type (stack/module part): exactly its modules
                sub = {n: s for n, s in dict(getattr(sp, "spectra", sp)).items()  # type: ignore[arg-type]
                       if module_role(n).kind == m}
                plot_spectra(sub, ax=axes[a, b], title=wrap(title.format(label=label, module=module_label(m)),
                                                            5.0, 12))
            else:
                plot_spectra(sp, ax=axes[a, b], module=m, title=wrap(title.format(label=label,
                                                                                  module=module_label(m)), 5.0, 12))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def amplification_figure(frames: Mapping[str, pd.DataFrame], *, modules: Sequence[str] | None = None,
                         title: str = "{module}: amplification factor per layer",
                         suptitle: str | None = None) -> Figure:
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
        raise InputError("no adapter frame to draw")
    order = list(frames)
    fr = pd.concat([f.assign(adapter=lab) for lab, f in frames.items()], ignore_index=True)
    fr["amp_random"] = fr["fro"] / fr["proj_random"]
    modules = sorted(fr["module"].unique()) if modules is None else list(modules)
    fig = new_figure(5.5 * len(modules), 4.8)
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


def table7_rows(frames: Mapping[str, pd.DataFrame], *, paper: bool = True) -> pd.DataFrame:
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


def table7_figure(frames: Mapping[str, pd.DataFrame], *, paper: bool = True, title: str | None = None,
                  label_header: str = "model") -> Figure:
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
    first = max([len(str(x)) for x in fr["model"]] + [len(label_header)]) * 8 * 0.62 / 72 + 0.25  # inches, 8 pt
    rest = [0.05, 0.03, 0.09, 0.06, 0.06, 0.05, 0.07, 0.05, 0.06, 0.12, 0.09]  # of 13 inches, as designed
    width = max(13.0, first + 13.0 * sum(rest) + 0.3)
    fig = new_figure(width, 0.32 * len(fr) + 1.4)
    ax = fig.add_subplot()
    labels = [label_header, "ΔW", "r", r"$\|U^\top W V\|_F$" + "\nU, V of ΔW", "U, V\nof W", "U, V\nrandom",
              "random\nsd", "z of ΔW\nvs random", r"$\|W\|_F$", r"$\|\Delta W\|_F$",
              "amplification\n" + r"$\|\Delta W\|_F / \|U^\top W V\|_F$", "amplification,\nrandom U, V"]
    fmt = {"r": "{:.0f}", "proj_delta": "{:.3f}", "proj_w": "{:.2f}", "proj_random": "{:.3f}",
           "proj_random_sd": "{:.3f}", "z": "{:+.1f}", "w_norm": "{:.2f}", "delta_norm": "{:.3f}",
           "amplification": "{:.2f}", "amp_random": "{:.2f}"}
    fr = fr.astype({c: float for c in fmt if c != "r"})
    art = plot_table(fr, ax=ax, col_labels=labels, fmt=fmt, fontsize=8,
                     col_widths=[first / width] + [c * 13.0 / width for c in rest])
    for (r, _), cell in art["table"].get_celld().items():
        if r == 0:
            cell.set_height(cell.get_height() * 2.0)
        elif r > len(fr) - n_paper:
            cell.set_facecolor("#fff3d6")
    if title:
        ax.set_title(title, fontsize=9)
    return fig



def legend_below(ax: Any, *, fontsize: float = 6.5, width_in: float | None = None, **kw: Any) -> Any:
    """A legend under ``ax`` with as many columns as its longest label lets fit in ``width_in`` inches."""
    handles, labels = ax.get_legend_handles_labels()
    if not labels:
        return None
    width_in = width_in or ax.figure.get_figwidth() / max(len(ax.figure.axes), 1)
    per = max(len(x) for x in labels) * fontsize * 0.62 + 30  # points a column takes
    ncol = max(1, min(len(labels), int(width_in * 72 // per)))
    return ax.legend(handles, labels, fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol,
                     **kw)


def ranks_colors(n: int) -> list:
    """``n`` colours of the plasma map, from dark to light (one per rank)."""
    from matplotlib import colormaps

    cm = colormaps["plasma"]
    return [cm(0.85 * i / max(n - 1, 1)) for i in range(n)]


def collection_figure(res: Any, kind: str) -> Figure:
    """A collection's matrix (``kind``: ``"similarity"`` or ``"cosine"``), seriated, beside its spread over modules.

    Parameters
    ----------
    res : CollectionResult
    kind : {"similarity", "cosine"}

    Returns
    -------
    matplotlib.figure.Figure
    """
    n = len(res.labels)
    size = min(6.0, 2.5 + 0.18 * n)
    fig = new_figure(2 * size + 1.5, size)
    axes = fig.subplots(1, 2)
    order = res.order(kind)
    plot_collection_matrix(res, kind=kind, order=order, ax=axes[0],
                           title=("φ(k, k), k = %d, side %s: mean over modules" % (res.k, res.side))
                           if kind == "similarity" else "Frobenius cosine, pooled over modules")
    if res.module_similarity is not None:
        plot_collection_matrix(res.spread(kind), labels=short_labels(res.labels), order=order, kind="spread",
                               ax=axes[1], title=f"{kind}: sd over modules")
        axes[1].set_yticklabels([])
    else:
        axes[1].set_axis_off()
    return fig


def trajectory_figure(run: str, tr: Any) -> Figure:
    """How one training run's update formed: drift, φ(1, 1) with the final, norm growth and effective rank against
    the step (medians over layers with the inter-quartile band).

    Parameters
    ----------
    run : str
        The run's name, in the title.
    tr : Trajectory
        From :func:`analysis.sweeps.trajectory.trajectory`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(13, 3.4)
    axes = fig.subplots(1, 4)
    d = int(tr.present_from["d"].min())
    mean, sd = phi11_null(d)
    for ax, y, title, null in ((axes[0], "drift_final", f"drift of the top-{tr.k} subspace from the final", None),
                               (axes[1], "phi_final", "φ(1, 1) with the final top direction", mean + tr.n_std * sd),
                               (axes[2], "norm_growth", "‖ΔW‖ / final ‖ΔW‖", None),
                               (axes[3], "effective_rank", "effective rank", None)):
        plot_trajectory(tr.frame, y=y, ax=ax, null=null, title=title, legend=ax is axes[0])
    fig.suptitle(f"{run}: median over layers, inter-quartile band", fontsize="medium")
    return fig
