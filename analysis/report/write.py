"""Write a computed report into one folder, whole or not at all: every figure (PNG), table (CSV), the README,
``findings.json`` (one record per claim) and ``report.html`` (the same, one self-contained page).

The folder also holds ``MANIFEST`` (the files the report wrote, one per line): a later run replaces a folder
that holds only those, and refuses a folder with anything else in it (see :func:`check_report_target`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

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
    from analysis.io.outputs import check_target

    check_target(out, force=force, folder=True, manifest=MANIFEST, option="--out")


def write_report(data: ReportData, out: str | os.PathLike[str], *, force: bool = False,
                 progress: bool | Progress | None = None) -> list[str]:
    """Write every figure, table, ``README.md``, ``findings.json`` and ``report.html`` into ``out``, atomically.

    Parameters
    ----------
    data : ReportData
    out : str
    force : bool
        Replace a folder that holds files the report did not write.
    progress : bool, Progress or None
        A stage line while the figures and pages are written (None: the running command's reporter, if any).

    Returns
    -------
    list of str
        File names written.
    """
    from analysis.io.outputs import atomic_output

    check_report_target(out, force=force)
    with (atomic_output(out, force=force, folder=True, manifest=MANIFEST, option="--out") as tmp,
          as_progress(progress).stage("writing figures, findings and pages")):
        written = _write_files(data, tmp)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{n}\n" for n in sorted(written)))
    return written


def _save(fig, path, written):
    """Save a figure as a 256-colour palette PNG (line art, text and colour maps: a third of the RGBA size, no
    visible change; no dithering, so flat areas stay flat)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                   dither=Image.Dither.NONE).save(path, format="PNG", optimize=True)
    written.append(os.path.basename(path))


def _write_files(data, out):
    """Write the report's files into the (new, empty) folder ``out``; returns their names."""
    from analysis.io.frames import save_frame
    from analysis.report import figures as F
    from analysis.report.findings import findings
    from analysis.report.html import write_html
    from analysis.report.readme import write_readme

    w = []
    j = os.path.join
    fs = findings(data)  # first: the figures that state verdicts take them from here
    paper = bool(F.paper_kinds(data))
    if data.rank_pair is not None:
        if paper or data.modules:
            _save(F.fig_rank_pair(data), j(out, "fig3_rank_pair.png"), w)
            _save(F.fig_rank_pair(data, side="input"), j(out, "fig3_dW_input_basis.png"), w)
            _save(F.fig_layers(data, which="rank"), j(out, "fig6_layers_rank.png"), w)
        save_frame(data.rank_pair.frame, j(out, "pair_rank.csv"))
        w.append("pair_rank.csv")
    if data.seed_pair is not None:
        _save(F.fig_seed_pair(data), j(out, "fig4_seed_pair.png"), w)
        _save(F.fig_seed_pair(data, side="input"), j(out, "fig4_dW_input_basis.png"), w)
        _save(F.fig_layers(data, which="seed"), j(out, "fig7_layers_seed.png"), w)
        save_frame(data.seed_pair.frame, j(out, "pair_seed.csv"))
        w.append("pair_seed.csv")
    if data.advice is not None:
        from analysis.io.outputs import write_json

        a, b = data.roles["seed_a"], data.roles["seed_b"]
        stem = (f"rank_advice_{a}_vs_{b.rsplit('_', 1)[-1]}" if not data.config.pairs else "rank_advice")
        _save(F.fig_rank_advice(data), j(out, stem + ".png"), w)
        write_json(j(out, stem + ".json"), data.advice.to_dict())
        w.append(stem + ".json")
    if data.cross_pair is not None:
        save_frame(data.cross_pair.frame, j(out, "pair_cross.csv"))
        w.append("pair_cross.csv")
    if data.rank_pair is not None or data.seed_pair is not None:
        _save(F.fig_phi11_layers(data), j(out, "layers_phi11.png"), w)
    for lab, sw in data.sweeps.items():
        save_frame(sw.frame, j(out, f"sweep_{lab}.csv"))
        w.append(f"sweep_{lab}.csv")
    _save(F.fig_spectra(data), j(out, "spectra.png"), w)
    if data.table7 is not None and paper:
        _save(F.fig_table7(data), j(out, "table7.png"), w)
        F.table7_frame(data).to_csv(j(out, "table7.csv"), index=False)
        w.append("table7.csv")
        _save(F.fig_weight_overlap(data), j(out, "fig8_W_vs_dW.png"), w)
        _save(F.fig_weight_overlap(data, j=1), j(out, "fig8_W_vs_dW_top1.png"), w)
        _save(F.fig_weight_overlap_grid(data), j(out, "fig8_grid.png"), w)
    if data.t7_layers is not None and len(data.t7_layers) and paper:
        _save(F.fig_amplification_layers(data, fs), j(out, "layers_amplification.png"), w)
        _save(F.fig_t7_layers(data, fs), j(out, "table7_layers.png"), w)
        save_frame(data.t7_layers, j(out, "table7_layers.csv"))
        w.append("table7_layers.csv")
    if data.long_run is not None and len(data.long_run):
        _save(F.fig_long_run(data), j(out, "table7_over_training.png"), w)
        save_frame(data.long_run, j(out, "table7_over_training.csv"))
        w.append("table7_over_training.csv")
    if data.init_pairs:
        _save(F.fig_data_vs_init(data, fs), j(out, "fig3_data_vs_init.png"), w)
    if data.control_pair is not None:
        _save(F.fig_control(data, fs), j(out, "fig4_control_qkvo.png"), w)
        save_frame(data.control_pair.frame, j(out, "pair_control_qkvo.csv"))
        w.append("pair_control_qkvo.csv")
    if data.collection is not None:
        _save(F.fig_collection(data), j(out, "collection.png"), w)
        fr = data.collection.to_frame()
        save_frame(fr, j(out, "collection.csv"))
        w.append("collection.csv")
    if data.merge is not None:
        save_frame(data.merge.frame, j(out, "merge_tasks.csv"))
        w.append("merge_tasks.csv")
    if data.merge_check is not None and data.merge_check["rows"] > 2:
        _save(F.fig_merge_losses(data), j(out, "merge_losses.png"), w)
        save_frame(_merge_check_frame(data.merge_check), j(out, "merge_advice.csv"))
        w.append("merge_advice.csv")
    write_findings(data, fs, j(out, "findings.json"))
    w.append("findings.json")
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

    from analysis.io.outputs import provenance, write_json
    from analysis.report import protocol

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
