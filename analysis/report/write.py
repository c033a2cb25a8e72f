"""Write a computed report: every figure (PNG), table (CSV) and the README into one folder."""

from __future__ import annotations

import os

__all__ = ["write_report"]


def _save(fig, path, written):
    fig.savefig(path, dpi=110)
    written.append(os.path.basename(path))


def write_report(data, out):
    """Write every figure (PNG), table (CSV) and ``README.md`` of a computed report into ``out``.

    Parameters
    ----------
    data : ReportData
    out : str

    Returns
    -------
    list of str
        File names written.
    """
    from analysis.io.frames import save_frame
    from analysis.report import figures as F
    from analysis.report.readme import write_readme

    os.makedirs(out, exist_ok=True)
    w = []
    j = os.path.join
    if data.rank_pair is not None:
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

        cfg = data.config
        stem = f"rank_advice_r{cfg.high}_seed{cfg.seeds[0]}_vs_seed{cfg.seeds[1]}"
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
    if data.table7 is not None:
        _save(F.fig_table7(data), j(out, "table7.png"), w)
        F.table7_frame(data).to_csv(j(out, "table7.csv"), index=False)
        w.append("table7.csv")
        _save(F.fig_weight_overlap(data), j(out, "fig8_W_vs_dW.png"), w)
        _save(F.fig_weight_overlap(data, j=1), j(out, "fig8_W_vs_dW_top1.png"), w)
        _save(F.fig_weight_overlap_heatmap(data), j(out, "fig8_heatmap.png"), w)
        _save(F.fig_amplification_layers(data), j(out, "layers_amplification.png"), w)
    write_readme(data, out, w)
    w.append("README.md")
    return w
