"""The report's figures: ``fig_x(data)`` gives one figure of the report from its ReportData.

Each picks its figure's data from the ReportData (which pair, which modules, which layers), its labels and its
texts (titles, verdicts from the findings, nulls computed here), and calls a builder of
:mod:`analysis.plotting.report_figures` or :mod:`analysis.plotting.composite`, which lays out and draws the panels
(object API, no pyplot state, nothing saved here; :mod:`analysis.report.write` saves them). The composite builders
are re-exported here for the code that imported them from the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.io.roles import module_role
from analysis.metrics.nulls import diagonal_phi_draws
from analysis.plotting.common import module_label
from analysis.plotting.composite import (PAPER_TABLE7, SIDE_TEXT, amplification_figure, phi11_layers_figure,
                                         phi_modules_figure, spectra_figure, table7_figure, table7_rows, wrap)
from analysis.plotting.report_figures import (advised_rank_figure, amplification_layers_figure,
                                              collection_matrices_figure, control_figure, data_vs_init_figure,
                                              long_run_figure, merge_losses_figure, overlap_grid_figure,
                                              phi_layers_figure, seed_pair_figure, spectra_grid_figure,
                                              t7_layers_figure, weight_overlap_figure)
from analysis.report.findings import FIG8_J, SEED_DIAG_N, attention_layout, swapped_modules, tied_modules
from analysis.report.protocol import P_TAIL

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
           "spectra_labels",
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
    return phi_modules_figure(
        data.rank_pair, names, panels=panels, width=12, row_height=2.8, width_ratios=[3.2, 1.25],
        module_labels={n: lab(k) for n, k in zip(names, kinds)},  # the role (and stack) in each title
        suptitle=wrap(f"Fig. 3 — subspace similarity $\\phi({X}_{{r={lo}}}, {X}_{{r={hi}}}, i, j)$ at "
                      f"{_where(data)} of {data.n_layers} (paper: layer 48 of 96)\nbasis: {SIDE_TEXT[side]}; "
                      f"random subspaces give $\\phi \\approx \\max(i, j)/d$ with d = {d}", 12, 10))


def _diag_stats(res, n=16):
    k = min(n, *res.phi.shape)
    return float(np.mean(np.diag(res.phi)[:k])), k


def fig_seed_pair(data: ReportData, *, side: str = "A", vmax: float = 1.0) -> Figure:
    """Fig. 4: φ between two seeds of r = high for q and v, two random Gaussian matrices, and the tested statistic
    (mean φ(i, i), i ≤ 16, at every layer, against its null) beside them."""
    hi = data.rank("seed_a")
    mods = [k for k in _figure_kinds(data, limit=4) if (k, data.layer) in data._index]
    lab = _label_of(data)
    panels = {lab(m): (data.seed_pair.results[data.name(m)][side],
                       f"{lab(m)}: {data.say('seed_a')} vs {data.say('seed_b')}") for m in mods}
    profiles = {}
    for m in mods:  # the statistic the verdict tests, per layer, with each role's null
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
        draws = diagonal_phi_draws(d, k, n=1000, seed=data.config.seed).mean(axis=1)  # type: ignore[arg-type]
        lo_, hi_ = np.quantile(draws, [0.00135, 0.99865])
        profiles[lab(m)] = dict(layers=layers, values=vals, d=d, null=(draws.mean(), lo_, hi_))
    X = "A" if side == "A" else r"\Delta W"
    return seed_pair_figure(
        panels, data.random_sim[mods[0]], profiles, n_diag=SEED_DIAG_N, focus_layer=data.layer, vmax=vmax,
        suptitle=f"Fig. 4 — $\\phi({X}_{{r={hi}}}, {X}'_{{r={hi}}}, i, j)$ between two runs (seeds) at "
                 f"{_where(data)} (paper: layer 48)\nbasis: {SIDE_TEXT[side]}; colour scale 0 – {vmax:g} (the "
                 f"paper's); random subspaces give $\\phi \\approx \\max(i, j)/d$; {_layout_text(data)}")


def _layout_text(data):
    return attention_layout(data)


def fig_layers(data: ReportData, *, which: str = "rank", side: str = "A") -> Figure:
    """Fig. 6 (``which="rank"``: r = low vs high) or Fig. 7 (``"seed"``) at several layers."""
    lo, hi = data.rank("low"), data.rank("high" if which == "rank" else "seed_a")
    sweep = data.rank_pair if which == "rank" else data.seed_pair
    mods = _figure_kinds(data, limit=4)
    layers = [L for L in data.layers if all((m, L) in data._index for m in mods)]
    lab = _label_of(data)
    results = {lab(m): {L: sweep.results[data.name(m, L)][side] for L in layers} for m in mods}
    if which == "rank":
        head = (f"Fig. 6 — $\\phi(A_{{r={lo}}}, A_{{r={hi}}}, i, j)$ at layers "
                f"{', '.join(map(str, layers))} of {data.n_layers} (paper: 1, 32, 64, 96 of 96)")
        who = f"i: top-i directions of {data.say('low')}, j: top-j of {data.say('high')}"
    else:
        head = (f"Fig. 7 — $\\phi(A_{{r={hi}}}, A'_{{r={hi}}}, i, j)$ between two runs at layers "
                f"{', '.join(map(str, layers))} of {data.n_layers} (paper: 1, 32, 64, 96 of 96)")
        who = f"i: {data.say('seed_a')}, j: {data.say('seed_b')}; colour scale 0 – 1 (the paper's)"
    d = sweep.results[data.name(mods[0], layers[0])][side].d
    kw: dict[str, Any] = dict(i_max=lo) if which == "rank" else dict(vmax=1.0)
    return phi_layers_figure(results, suptitle=f"{head}\nbasis: {SIDE_TEXT[side]}; {who}; random: "
                                               f"$\\phi \\approx \\max(i, j)/d$, d = {d}", **kw)


def _t7_frames(data):
    """Table 7's rows by label: the base model's name (reference checkpoints), else one group per adapter."""
    t = data.table7
    kinds = set(paper_kinds(data)) or None
    if kinds:
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
    return weight_overlap_figure(
        {lab(m): {side: data.overlaps[(m, side)] for side in ("output", "input")} for m in mods}, j=j,
        suptitle=f"Fig. 8 — overlap of ΔW's singular directions with W's top-i, at layer {data.layer}\n"
                 "curves far above their dashed null = ΔW lives in W's emphasised directions")


def fig_weight_overlap_grid(data: ReportData) -> Figure:
    """Fig. 8 over its grid: where ΔW's top direction sits in W's spectrum. φ(1, j), its share of W's top-j
    directions (j = 1 … 256), divided by what a random direction has (j / d), per rank and side, with the band a
    random direction stays in up to p = 0.00135 after the Holm correction over the grid (log scale: 1 = chance)."""
    from scipy.stats import beta

    q = data.role_kind("q") or (paper_kinds(data) or [None])[0]  # type: ignore[list-item]
    sides = ("output", "input")
    labs = [lab for lab, o in data.overlaps.get((q, sides[0]), {}).items() if not o.zero]
    overlaps = {side: {lab: data.overlaps[(q, side)][lab] for lab in labs} for side in sides}
    n_cells = sum(1 for side in sides for lab in labs for jj in FIG8_J
                  if jj < data.overlaps[(q, side)][lab].d and jj <= data.overlaps[(q, side)][lab].phi.shape[0])
    level = P_TAIL / max(n_cells, 1)  # the first Holm step over the grid
    bands = {}
    for side in sides:  # the ratio a random direction (φ(j, 1) ~ Beta(j/2, (d - j)/2)) stays under
        if labs:
            d = overlaps[side][labs[-1]].d
            jj = np.array([j for j in FIG8_J if j < d], dtype=float)
            bands[side] = (jj, np.array([float(beta.isf(level, j / 2, (d - j) / 2)) for j in jj]) / (jj / d))
    return overlap_grid_figure(
        overlaps, js=FIG8_J, bands=bands, module=module_label(q),
        band_label=f"random up to p = {level:.1e} (0.00135, Holm over {n_cells} cells)",
        suptitle=f"Fig. 8 over its grid — where ΔW's top direction sits in W's spectrum at layer {data.layer}: "
                 "its share of W's top-j directions over a random direction's; above the grey band = more than "
                 "chance after the correction")


def fig_phi11_layers(data: ReportData) -> Figure:
    """Beyond the paper: φ(1, 1) at every layer, for the rank pair and the seed pair, two bases, near ties marked."""
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
    t = data.t7_layers
    kinds = [k for k in paper_kinds(data) if k in set(t["kind"])]
    lab = _label_of(data)
    return amplification_layers_figure(
        t, {k: f"{lab(k)}: {_t7_verdicts(fs, data.role_of(k).role)}" for k in kinds},
        series={a: data.series(a) for a in dict.fromkeys(t["adapter"])},
        suptitle="Amplification of W's directions by ΔW at every layer (Table 7's last column, beyond the "
                 f"paper's single layer); null: the mean of {data.config.n_random_table:,} Haar-random "
                 "projections (k ≥ 17: exact moments)")


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
    held = {}
    for f in fs or ():
        if f.id.startswith("t7_layers_"):
            held[f.id] = {row["layer"]: row["holds"] for row in f.per_layer}
    holds = {(k, r): held.get(f"t7_layers_{data.role_of(k).role}_r{r}", {}) for k in kinds for r in t["r"].unique()}
    holm = {k: float(norm.isf(0.0013498980316301035 / max(t[t["kind"] == k]["layer"].nunique(), 1))) for k in kinds}
    return t7_layers_figure(
        t, {k: f"{lab(k)} at every layer (filled: holds after the correction)" for k in kinds}, holm=holm,
        holds=holds, suptitle="Table 7 at every layer: does ΔW's top-r subspace capture more of W than random "
                              "directions do? (z for the reader; the verdict uses each null's own tail probability)")


def spectra_labels(data: ReportData) -> list[str]:
    """The adapters :func:`fig_spectra` draws: those of the rank pair and the first seed that were swept."""
    labs = [data.roles[k] for k in ("low", "high", "seed_a") if k in data.roles]
    return [lab for lab in dict.fromkeys(labs) if lab in data.sweeps]


def fig_spectra(data: ReportData) -> Figure:
    """Beyond the paper: singular-value spectra of ΔW per layer, for the larger ranks (:func:`spectra_labels`)."""
    kinds = _figure_kinds(data, limit=4)
    lab_of = _label_of(data)
    spectra = {}
    for lab in spectra_labels(data):
        sp = data.sweeps[lab].spectra
        spectra[data.series(lab)] = {lab_of(k): {n: s for n, s in sp.items() if module_role(n).kind == k and len(s)}
                                     for k in kinds}
    return spectra_grid_figure(spectra, suptitle="Singular values of ΔW (normalised by σ₁), one line per layer")


def fig_rank_advice(data: ReportData) -> Figure:
    """Beyond the paper: the rank each module needs, from the directions the two seeds of r = high share."""
    return advised_rank_figure(data.advice, title=f"Advised rank per layer: directions of ΔW that {data.say('seed_a')} "
                                                  f"and {data.say('seed_b')} share beyond chance (random subspaces: "
                                                  "mean + 3 sd)")


def fig_long_run(data: ReportData) -> Figure:
    """Table 7 over training time: ΔWq's and ΔWv's ‖UᵀWV‖ z-score, the amplification beside its random counterpart
    and ‖ΔW‖/‖W‖ against the step, at the focus layer (top row) and as the median over layers (bottom row)."""
    lr = data.long_run
    q = data.role_kind("q")
    return long_run_figure(
        lr[lr["kind"] == q] if q is not None else lr, focus_layer=data.layer, ranks=sorted(lr["r"].unique()),
        suptitle="Table 7 over training time (long runs, seed 0): is ΔWq's projection on W above random? "
                 f"null: {data.config.n_random_table:,} Haar-random U, V per layer and rank (exact moments from "
                 "17 directions on); paper: 11 % (r = 4) and 5.8 % (r = 64) for ‖ΔWq‖/‖Wq‖")


def fig_data_vs_init(data: ReportData, fs: Sequence[Finding] | None = None) -> Figure:
    """The cause experiment: φ(1, 1) per layer between each r = low run and each r = high partner, one line per run,
    styled by what it shares with that partner: the data order (manifests) and the initial A (step-0 files)."""
    partners = list(dict.fromkeys(p for _, p in data.init_pairs))
    kinds = _figure_kinds(data, limit=2)
    verdict = {f.id: f.verdict for f in fs or ()}
    lab_of = _label_of(data)
    lines: dict[str, dict[str, list[dict[str, Any]]]] = {p: {lab_of(k): [] for k in kinds} for p in partners}
    for partner in partners:
        for kind in kinds:
            for (run, p), pair in data.init_pairs.items():
                if p != partner:
                    continue
                meta = data.init_meta[(run, p)]
                fr = pair.frame[[module_role(n).kind == kind for n in pair.frame["name"]]].sort_values("layer")
                if len(fr):
                    lines[partner][lab_of(kind)].append(dict(
                        run=run, shared_data=meta["shared_data"], shared_A=meta["shared_A"], layer=fr["layer"],
                        phi11=fr["phi11_A"], d=int(fr["d_in"].iloc[0]),
                        verdict=verdict.get(f"fig3_cause_{run}_vs_{partner}")))
    return data_vs_init_figure(
        lines, low=data.config.low,
        suptitle="What makes r = 8 and r = 64 share their top direction? 'data shared' = the partner's "
                 "data order (manifests); 'A shared' = the r = 8 run's initial A is the first 8 rows of the "
                 "partner's initial A, checked from the two step-0 adapters")


def fig_control(data: ReportData, fs: Sequence[Finding] | None = None) -> Figure:
    """The q / k / v / o control of Fig. 4: mean φ(i, i), i ≤ 16, across two seeds at every layer for each
    attention projection, with each shape's null band."""
    pair = data.control_pair
    roles = ("q", "k", "v", "o")
    nulls: dict[tuple[int, int], Any] = {}  # (d, k) -> the random statistic's draws; kept from one basis to the next
    panels = {}
    for side in ("A", "input"):
        by_role: dict[str, list[tuple[Any, ...]]] = {}
        for n, res in pair.results.items():
            r = module_role(n)
            if r.role in roles and not res[side].zero:
                v, k = _diag_stats(res[side], SEED_DIAG_N)
                by_role.setdefault(r.role, []).append((r.layer, v, res[side].d, k))
        lines = []
        for role, rows in sorted(by_role.items(), key=lambda x: roles.index(x[0])):
            rows.sort()
            d, k = rows[0][2], rows[0][3]
            lines.append((role, [x[0] for x in rows], [x[1] for x in rows], d))
            if (d, k) not in nulls:
                nulls[(d, k)] = diagonal_phi_draws(d, k, n=1000, seed=data.config.seed).mean(axis=1)
        panels[side] = dict(lines=lines, nulls=[(d, np.quantile(draws, [0.00135, 0.99865]), draws.mean())
                                                for (d, k), draws in sorted(nulls.items())])
    verdicts = "; ".join(f"'{f.id[13]} more than {f.id[14]}' at every layer: {f.verdict} ({f.n_holding}/{f.n_modules})"
                         for f in fs or () if f.id.startswith("fig7_control_") and f.id.endswith("_all"))
    return control_figure(panels, n_diag=SEED_DIAG_N,
                          suptitle=f"Fig. 4 control: {', '.join(data.config.control_runs)} (r = 64 on q, k, v, o): "
                                   "does 'v shares more across seeds' survive matched shapes (q vs o: both d × d; k "
                                   "vs v: both narrower)? " + verdicts)


def fig_collection(data: ReportData) -> Figure:
    """Every shipped adapter against every other: φ(1, 1) of the top input directions and the Frobenius
    cosine of the updates (means over shared modules), seriated, with the task and seeds in the labels."""
    col = data.collection
    return collection_matrices_figure(
        col, labels=list(data.collection_meta),
        suptitle=f"Every shipped adapter against every other (mean over the {len(col.module_names)} shared modules, "
                 "seriated): do adapters group by task, by seed or by rank?")


def fig_merge_losses(data: ReportData) -> Figure:
    """The merge advice against measured losses: the loss increase over each task's own adapter of every
    merged task adapter against the distance the advice computes (left) and the mean cosine of the updates
    (right), with each statistic's Spearman ρ against its stratified permutation null."""
    fr, checks = data.merge_check["table"], data.merge_check["checks"]
    return merge_losses_figure(
        fr, checks, suptitle=f"Merge advice against measured validation losses: {fr['merge'].nunique()} merged "
                             f"adapters of the task adapters, {len(fr)} (adapter, task) losses; does the advice "
                             "predict the damage?")
