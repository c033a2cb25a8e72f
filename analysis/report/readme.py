"""figures/README.md: each figure beside the paper's claim, with the measured numbers and a verdict.

The claims, their rules and verdicts are data (:func:`analysis.report.findings.findings`),
so the text stays true when the report is rerun on other checkpoints; this module
only lays them out.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from analysis.report.notes import notes
from analysis.report.protocol import AGGREGATE_SHARE, HISTORY, N_DRAWS, P_TAIL, POWER_MIN, RATIO_SHARE, Z_MIN

if TYPE_CHECKING:
    from collections.abc import Sequence

    from analysis.report.compute import ReportData
    from analysis.report.findings import Finding

__all__ = ["write_readme"]


_FIGS = [
    ("fig3_rank_pair.png", "Fig. 3", "φ(A_small, A_large, i, j) for ΔWq and ΔWv at the middle layer "
     "(paper: layer 48 of 96), i ≤ the smaller rank and j ≤ the larger, with the zoom j ≤ the smaller rank; the "
     "paper's basis (A's right-singular vectors)."),
    ("fig3_dW_input_basis.png", "Fig. 3 (variant)", "the same on ΔW's right-singular vectors (input side)."),
    ("fig4_seed_pair.png", "Fig. 4", "two seeds of one rank, and two random Gaussian matrices; right: the statistic "
     "the verdict tests (mean φ(i, i), i ≤ 16) at every layer, with each module's null band."),
    ("fig4_dW_input_basis.png", "Fig. 4 (variant)", "the same on ΔW's right-singular vectors."),
    ("fig6_layers_rank.png", "Fig. 6", "Fig. 3 at four layers spread over the depth (paper: 1, 32, 64, 96 of 96)."),
    ("fig7_layers_seed.png", "Fig. 7", "Fig. 4 at the same four layers."),
    ("fig4_control_qkvo.png", "Fig. 4 (control)", "two seeds of r = 64 on q, k, v and o: mean φ(i, i) across seeds at "
     "every layer for each projection, with each shape's null (q and o have one shape, k and v another)."),
    ("table7.png", "Table 7", "‖UᵀWV‖_F with U, V from ΔW, from W, random; ‖W‖_F, ‖ΔW‖_F, amplification "
     "(CSV: table7.csv; the paper's rows shaded)."),
    ("table7_layers.png", "Table 7 (every layer)", "z of ‖UᵀWV‖ against Haar-random U, V at every layer, ΔWq and "
     "ΔWv, every rank, with the thresholds; filled markers hold after the Holm correction (CSV: "
     "table7_layers.csv)."),
    ("fig8_W_vs_dW.png", "Fig. 8", "φ between W's top-i singular directions and all of ΔW's, as i goes down W's "
     "spectrum, every rank, both sides, with the random null."),
    ("fig8_W_vs_dW_top1.png", "Fig. 8 (variant)", "the same for ΔW's top direction only (j = 1)."),
    ("fig8_grid.png", "Fig. 8 (grid)", "where ΔW's top direction sits in W's spectrum: its share of W's top-j "
     "directions, j = 1 … 256, per rank and side, against a random direction's mean and the band a p of 0.00135 "
     "needs after the correction over the grid."),
    ("fig3_data_vs_init.png", "Fig. 3 (cause)", "φ(1,1) at every layer between each r = 8 run and each r = 64 "
     "partner; 'data shared' from the manifests, 'A shared' checked from the step-0 adapters (beyond the paper)."),
    ("layers_phi11.png", "beyond the paper", "φ(1,1) at every layer: rank pair, seed pair and the control pair "
     "(different ranks and different seeds), two bases, log scale with the random null 1/d; rings mark modules "
     "whose top two singular values lie within 10 % (φ(1,1) can dip there while the top-2 subspaces agree)."),
    ("table7_over_training.png", "Table 7 (over training)", "ΔWq's ‖UᵀWV‖ z-score against random, the "
     "amplification next to its random counterpart and ‖ΔW‖/‖W‖ at every saved step of the long runs, at the "
     "focus layer and as the median over layers (CSV: table7_over_training.csv, ΔWq and ΔWv)."),
    ("collection.png", "collection", "every shipped adapter against every other: φ(1,1) of the top input "
     "directions and the Frobenius cosine of the updates, means over the shared modules, rows and columns "
     "seriated (CSV: collection.csv, per module and pair; merge_tasks.csv: the interference of merging the "
     "task adapters, per module)."),
    ("merge_losses.png", "merge advice", "the validation loss increase over each task's own adapter of every merged "
     "task adapter (subsets of two or more, weights 1 and 1/n, linear / svd / ties) against the advised distance "
     "‖M − ΔWᵢ‖² / ‖ΔWᵢ‖² and against the mean cosine of the updates, each with its Spearman ρ and permutation "
     "null (CSV: merge_advice.csv; the measured table is benchmarks/merge_losses.csv)."),
    ("layers_amplification.png", "beyond the paper", "the amplification factor at every layer and rank, next to what "
     "the same ‖ΔW‖ along random directions gives (the protocol's null mean), with the every-layer verdicts."),
    ("spectra.png", "beyond the paper", "singular values of ΔW per layer."),
    ("rank_advice_r64_seed0_vs_seed1.png", "rank advice", "per layer and module, the number of ΔW's leading "
     "directions that the two seeds reproduce beyond chance (principal angles between their top-i "
     "singular subspaces against random subspaces, mean + 3 sd), on ΔW's input and output sides (the smaller "
     "is advised); the PEFT `rank_pattern` is in the JSON next to it (`python -m analysis.resize ADAPTER "
     "--pattern` applies it)."),
]


def _cell(text):
    """Text for a Markdown table cell: pipes escaped, line breaks removed."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(x, fmt):
    return "–" if x is None or x != x else fmt.format(x)


def write_readme(data: ReportData, out: str, files: Sequence[str], fs: Sequence[Finding]) -> None:
    """Write ``out/README.md`` for the files written by :func:`analysis.report.write_report`.

    Parameters
    ----------
    data : ReportData
    out : str
        Folder to write into.
    files : list of str
        File names already written there (figures listed in :data:`_FIGS` that
        are missing are skipped; CSV files are listed).
    fs : list of Finding
        The judged claims (:func:`analysis.report.findings.findings`).
    """
    cfg = data.config
    n_layers = data.n_layers or "?"
    L: list[str] = []
    w = L.append
    w("# LoRA Section 7 / Appendix H, reproduced on real adapters\n")
    w(f"Generated by `python -m analysis.report{' --pair …' if cfg.pairs else ''}` (do not edit by hand; rerun it). "
      f"Base model: `{os.path.basename(cfg.base) if cfg.base else 'none'}`. {_where(data, n_layers)}\n")
    if data.missing:
        w(f"**Missing checkpoints (their analyses are skipped):** {', '.join(data.missing)}.\n")
    w("## Verdicts\n")
    w(f"Every verdict is a test against a null the toolkit draws ({N_DRAWS:,} seeded draws, more where a tail needs "
      f"them, or the closed form), by the protocol of PAPER.md ({HISTORY}): **reproduces** = the paper's direction "
      f"holds with p ≤ {P_TAIL:.5f} (a Gaussian z = {Z_MIN:g}, taken from the null's own tail) in every covered "
      f"module after a Holm correction over them (≥ {100 * AGGREGATE_SHARE:.0f} % for claims over all layers) and the "
      f"effect is at least {RATIO_SHARE:g} × the paper's; **partly** = some modules hold, or more exceed the level "
      f"than chance predicts (binomial test); **does not reproduce** = the main case fails while the test had power "
      f"≥ {POWER_MIN:g} against the paper's own effect planted into this geometry, or the effect lies significantly "
      f"the other way; **inconclusive** = the main case fails but the power is below {POWER_MIN:g} (the data could "
      "not have shown the paper's effect); **not applicable** = the adapters have no module the claim is about. For "
      "φ the effect is compared with the paper's φ itself (φ is a fraction; its null 1/d depends on the width). "
      "One record per claim, with these numbers, its per-layer rows and its conditions, is in `findings.json`; "
      "`report.html` is this page with the figures embedded.\n")
    w("| | paper | measured here | null (mean ± sd) | z | p | holding / modules | power | verdict |\n"
      "|---|---|---|---|---|---|---|---|---|")
    for f in fs:
        null = "–" if f.null_mean != f.null_mean else f"{f.null_mean:.4g} ± {_num(f.null_sd, '{:.2g}')}"
        held = f"{f.n_holding} / {f.n_modules}" if f.n_modules else "–"
        power = "–" if f.power is None else f"{f.power:.2f}"
        w(f"| {_cell(f.figure)} | {_cell(f.paper)} | {_cell(f.measured)} | {null} | {_num(f.z, '{:+.1f}')} | "
          f"{_num(f.p_tail, '{:.2g}')} | {held} | {power} | **{f.verdict}** |")
    w("")
    ns = notes(data)
    if ns:
        w("## Reading these results\n")
        for n in ns:
            w(f"- {n}")
        w("")
    w("## Figures\n")
    by_fig: dict[str, list[Finding]] = {}
    for f in fs:
        by_fig.setdefault(f.figure, []).append(f)
    advice = next((f for f in files if f.startswith("rank_advice") and f.endswith(".png")), None)
    for name, fig, what in _FIGS:
        name = advice if name.startswith("rank_advice") and advice else name
        if name not in files:
            continue
        w(f"### {fig}: `{name}`\n")
        w(f"{what}\n")
        w(f"![{fig}]({name})\n")
        for f in by_fig.get(fig, []):
            w(f"- {f.id}: **{f.verdict}** (power {'unknown' if f.power is None else f'{f.power:.2f}'}; "
              f"{f.correction or 'one module'}). Conditions: {f.conditions}.")
        w("")
    w("## Inputs, settings and conditions\n")
    if cfg.pairs:
        w("| adapter | path as given | role |\n|---|---|---|")
        roles: dict[str, list[str]] = {}
        for role, lab in data.roles.items():
            roles.setdefault(lab, []).append({"low": "rank pair, smaller r", "high": "rank pair, larger r",
                                              "seed_a": "seed pair, first", "seed_b": "seed pair, second"}[role])
        for lab, path in data.inputs.items():
            w(f"| {_cell(data.text[lab])} | `{_cell(path)}` | {', '.join(roles.get(lab, []))} |")
        w("")
    else:
        w(f"Adapters: {', '.join(sorted(data.adapters))} from `{cfg.checkpoints}` (see each `manifest.json` and "
          "`checkpoints/README.md`).\n")
    w("## Tables (CSV)\n")
    for name in files:
        if name.endswith(".csv"):
            w(f"- `{name}`" + (" — reload with `analysis.io.frames.load_frame` (dtypes restored)"
                               if name.startswith(("sweep_", "pair_", "table7_")) else "")
              + (" (control pair: different ranks and seeds)" if name == "pair_cross.csv" else ""))
    t = data.timings
    w(f"\nComputed in {t.get('total_s', float('nan')):.0f} s (pairs {t.get('pairs_s', 0):.0f} s, per-adapter "
      f"sweeps with the base {t.get('sweeps_s', 0):.0f} s).\n")
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write("\n".join(L))


def _where(data, n_layers):
    """The mapping of the paper's layers to these adapters', and the modules, all from the data."""
    from analysis.plotting.common import module_label  # local: the plotting package, +7 ms on report --help

    q, v = data.role_kind("q"), data.role_kind("v")
    mods = ", ".join(module_label(k, plain=True) + f" (`{k}`)" for k in (q, v) if k is not None) or \
        "no separate self-attention q and v modules"
    stacks = data.stacks()
    return (f"Main stack: **{data.main_stack or 'the model'}**"
            + (f" (of {', '.join(stacks)})" if len(stacks) > 1 else "")
            + f", {n_layers} layers; the paper's ΔWq and ΔWv are {mods}. Where the paper uses layer 48 of GPT-3's 96 "
              f"this report uses layer **{data.layer}**; for its layers 1, 32, 64, 96 (1-based) it uses layers "
              f"**{', '.join(map(str, data.layers))}** (0-based, spread over the depth). φ is the paper's normalised "
              "subspace similarity, φ(i, j) = ‖U₁^(i)ᵀ U₂^(j)‖²_F / min(i, j); random subspaces give max(i, j)/d.")
