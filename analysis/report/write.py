"""Write a computed report into one folder, whole or not at all: every figure (PNG), table (CSV), the README,
``findings.json`` (one record per claim) and ``report.html`` (the same, one self-contained page).

The folder also holds ``MANIFEST`` (the files the report wrote, one per line): a later run replaces a folder
that holds only those, and refuses a folder with anything else in it (see :func:`check_report_target`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from analysis.core.threads import resolve_jobs
from analysis.io.frames import save_frame
from analysis.io.outputs import atomic_output, check_target, provenance, write_json
from analysis.report import protocol
from analysis.report.html import write_html
from analysis.report.markdown import remember_webp, webp_entry
from analysis.report.readme import write_readme
from analysis.sweeps.progress import as_progress

if TYPE_CHECKING:
    from analysis.report.compute import ReportData
    from analysis.sweeps.progress import Progress

__all__ = ["write_report", "check_report_target", "MANIFEST"]

#: Name of the list of the report's own files inside its folder.
MANIFEST = "MANIFEST"


def check_report_target(out: str | os.PathLike[str], *, force: bool = False) -> None:
    """Refuse ``out`` if it is, holds or lies above an input, the working directory or the home folder, or holds
    files an earlier report did not write (``--force`` or not: it replaces only what the report wrote).

    Raises
    ------
    AdapterError
    """
    check_target(out, force=force, folder=True, manifest=MANIFEST, option="--out")


def write_report(data: ReportData, out: str | os.PathLike[str], *, force: bool = False,
                 progress: bool | Progress | None = None, jobs: int | None = None) -> list[str]:
    """Write every figure, table, ``README.md``, ``findings.json`` and ``report.html`` into ``out``, atomically.

    Parameters
    ----------
    data : ReportData
    out : str
    force : bool
        Replace a folder that holds files the report did not write.
    progress : bool, Progress or None
        A stage line while the figures and pages are written (None: the running command's reporter, if any).
    jobs : int, optional
        Processes rendering the figures (forked workers, see :mod:`analysis.plotting.render`); default: the
        cores available to the process. The files do not depend on it.

    Returns
    -------
    list of str
        File names written.
    """
    check_report_target(out, force=force)
    with (atomic_output(out, force=force, folder=True, manifest=MANIFEST, option="--out") as tmp,
          as_progress(progress).stage("writing figures, findings and pages")):
        written = _write_files(data, tmp, jobs)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{n}\n" for n in sorted(written)))
    return written


def _figure_plan(data):
    """The report's figures: ``[(file name, build(fs) -> Figure, needs the findings)]``, in the report's order."""
    from analysis.report import figures as F  # local: figures and plotting, +20 ms on report --help

    plan = []

    def add(name, build, needs_findings=False):
        plan.append((name, build, needs_findings))

    paper = bool(F.paper_kinds(data))
    if data.rank_pair is not None and (paper or data.modules):
        add("fig3_rank_pair.png", lambda fs: F.fig_rank_pair(data))
        add("fig3_dW_input_basis.png", lambda fs: F.fig_rank_pair(data, side="input"))
        add("fig6_layers_rank.png", lambda fs: F.fig_layers(data, which="rank"))
    if data.seed_pair is not None:
        add("fig4_seed_pair.png", lambda fs: F.fig_seed_pair(data))
        add("fig4_dW_input_basis.png", lambda fs: F.fig_seed_pair(data, side="input"))
        add("fig7_layers_seed.png", lambda fs: F.fig_layers(data, which="seed"))
    if data.advice is not None:
        add(_advice_stem(data) + ".png", lambda fs: F.fig_rank_advice(data))
    if data.rank_pair is not None or data.seed_pair is not None:
        add("layers_phi11.png", lambda fs: F.fig_phi11_layers(data))
    if F.spectra_labels(data):
        add("spectra.png", lambda fs: F.fig_spectra(data))
    if data.table7 is not None and paper:
        add("table7.png", lambda fs: F.fig_table7(data))
        add("fig8_W_vs_dW.png", lambda fs: F.fig_weight_overlap(data))
        add("fig8_W_vs_dW_top1.png", lambda fs: F.fig_weight_overlap(data, j=1))
        add("fig8_grid.png", lambda fs: F.fig_weight_overlap_grid(data))
    if data.t7_layers is not None and len(data.t7_layers) and paper:
        add("layers_amplification.png", lambda fs: F.fig_amplification_layers(data, fs), True)
        add("table7_layers.png", lambda fs: F.fig_t7_layers(data, fs), True)
    if data.long_run is not None and len(data.long_run):
        add("table7_over_training.png", lambda fs: F.fig_long_run(data))
    if data.init_pairs:
        add("fig3_data_vs_init.png", lambda fs: F.fig_data_vs_init(data, fs), True)
    if data.control_pair is not None:
        add("fig4_control_qkvo.png", lambda fs: F.fig_control(data, fs), True)
    if data.collection is not None:
        add("collection.png", lambda fs: F.fig_collection(data))
    if data.merge_check is not None and data.merge_check["rows"] > 2:
        add("merge_losses.png", lambda fs: F.fig_merge_losses(data))
    return plan


def _advice_stem(data):
    """The rank advice's file name, without extension."""
    a, b = data.roles["seed_a"], data.roles["seed_b"]
    return f"rank_advice_{a}_vs_{b.rsplit('_', 1)[-1]}" if not data.config.pairs else "rank_advice"


def _write_files(data, out, jobs=None):
    """Write the report's files into the (new, empty) folder ``out``; returns their names.

    The figures that need no finding render in forked workers (:class:`~analysis.plotting.render.FigureJobs`)
    while this process computes the findings, renders the figures that state verdicts and writes the tables,
    then renders what the workers have not taken yet; each figure's WebP for the page is encoded right after
    it is saved (:func:`~analysis.report.markdown.webp_entry`); the page, which embeds every figure, comes last.
    """
    from analysis.plotting.render import FigureJobs, render_figures  # local: plotting, +9 ms on report --help
    from analysis.report.findings import findings  # local: the claims and their nulls, +16 ms on report --help

    j = os.path.join
    plan = _figure_plan(data)
    early = [(j(out, name), (lambda b=build: b(None))) for name, build, needs in plan if not needs]
    # each figure's WebP for the page is encoded where it was saved, while this process is busy
    with FigureJobs(early, jobs=resolve_jobs(jobs), after=webp_entry) as running:
        fs = findings(data)  # the figures that state verdicts take them from here
        late = [(j(out, name), (lambda b=build: b(fs))) for name, build, needs in plan if needs]
        remember_webp(render_figures(late, after=webp_entry))
        tables = []
        if data.rank_pair is not None:
            save_frame(data.rank_pair.frame, j(out, "pair_rank.csv"))
            tables.append("pair_rank.csv")
        if data.seed_pair is not None:
            save_frame(data.seed_pair.frame, j(out, "pair_seed.csv"))
            tables.append("pair_seed.csv")
        if data.advice is not None:
            write_json(j(out, _advice_stem(data) + ".json"), data.advice.to_dict())
            tables.append(_advice_stem(data) + ".json")
        if data.cross_pair is not None:
            save_frame(data.cross_pair.frame, j(out, "pair_cross.csv"))
            tables.append("pair_cross.csv")
        for lab, sw in data.sweeps.items():
            save_frame(sw.frame, j(out, f"sweep_{lab}.csv"))
            tables.append(f"sweep_{lab}.csv")
        if any(name == "table7.png" for name, *_ in plan):
            from analysis.report.figures import table7_frame  # local: the figures, +20 ms on report --help

            table7_frame(data).to_csv(j(out, "table7.csv"), index=False)
            tables.append("table7.csv")
        if any(name == "table7_layers.png" for name, *_ in plan):
            save_frame(data.t7_layers, j(out, "table7_layers.csv"))
            tables.append("table7_layers.csv")
        if data.long_run is not None and len(data.long_run):
            save_frame(data.long_run, j(out, "table7_over_training.csv"))
            tables.append("table7_over_training.csv")
        if data.control_pair is not None:
            save_frame(data.control_pair.frame, j(out, "pair_control_qkvo.csv"))
            tables.append("pair_control_qkvo.csv")
        if data.collection is not None:
            save_frame(data.collection.to_frame(), j(out, "collection.csv"))
            tables.append("collection.csv")
        if data.merge is not None:
            save_frame(data.merge.frame, j(out, "merge_tasks.csv"))
            tables.append("merge_tasks.csv")
        if data.merge_check is not None and data.merge_check["rows"] > 2:
            save_frame(_merge_check_frame(data.merge_check), j(out, "merge_advice.csv"))
            tables.append("merge_advice.csv")
        write_findings(data, fs, j(out, "findings.json"))
        remember_webp(running.wait())
    w = [name for name, *_ in plan] + tables + ["findings.json"]
    write_readme(data, out, w, fs)
    w.append("README.md")
    write_html(out)
    w.append("report.html")
    return w


def _merge_check_frame(mc):
    """One row per advice statistic: Spearman ρ against the loss increase, its permutation null and verdict."""
    import pandas as pd

    rows = [{"predictor": c.predictor, "rho": c.rho, "null_mean": c.null_mean, "null_sd": c.null_sd, "z": c.z,
             "p": c.p, "n": c.n, "verdict": c.verdict, **{f"rho_{k}": v for k, v in c.per_task.items()}}
            for c in mc["checks"].values()]
    return pd.DataFrame(rows)


def write_findings(data, fs, path):
    """``findings.json``: the tool, the inputs as given, the settings and one record per claim.

    Parameters
    ----------
    data : ReportData
    fs : list of Finding
    path : str
    """
    from dataclasses import asdict

    cfg = asdict(data.config)
    base, name = cfg.pop("base"), cfg.pop("base_name")
    inputs = {"checkpoints": cfg.pop("checkpoints"), "base": name or (os.path.basename(base) if base else None)}
    if data.config.pairs:
        inputs = {"adapters": dict(data.inputs), "base": inputs["base"]}
        cfg = {k: v for k, v in cfg.items() if k not in ("ranks", "low", "high", "seeds", "long_runs", "init_runs",
                                                         "init_partners", "control_runs")}
    cfg.update(layer=data.layer, layers=list(data.layers), main_stack=data.main_stack)
    settings = {**cfg, "protocol": {"z_min": protocol.Z_MIN, "p_tail": protocol.P_TAIL,
                                    "aggregate_share": protocol.AGGREGATE_SHARE,
                                    "ratio_share": protocol.RATIO_SHARE, "n_draws": protocol.N_DRAWS,
                                    "power_min": protocol.POWER_MIN, "correction": "Holm over covered modules",
                                    "history": protocol.HISTORY}}
    write_json(path, {**provenance("report", inputs=inputs, settings=settings),
                      "findings": [f.to_dict() for f in fs]})
