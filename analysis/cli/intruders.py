"""``python -m analysis.intruders ADAPTER --base MODEL``: intruder dimensions per module."""

from __future__ import annotations


import sys
from typing import TYPE_CHECKING

from analysis.cli.common import (Column, Parser, Table, base_path, check_outputs, layer_str, provenance, run,
                                 save_figure, wants_progress, write_csv, write_json)
from analysis.errors import InputError
from analysis.io import load_adapter
from analysis.metrics.intruders import INTRUDER_METHODS, INTRUDER_SIDES

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main", "build_parser"]

_EPILOG = """\
definition (Shuttleworth et al. 2024, arXiv 2410.21228):
  a singular vector y_j of W + dW is an intruder dimension when
  max_i |cos(y_j, x_i)| < threshold over ALL singular vectors x_i of the base W;
  counted over the top --top-k singular vectors of W + dW. Defaults k = 10 and
  threshold 0.5 on the left (output-side) vectors, the paper's main setting.
  A direction spread evenly over m >= 4 of W's singular vectors already scores
  <= 0.5, so an intruder means "not aligned with any single direction of W".

columns:
  count    intruders among the top k     ranks     their positions in W + dW's spectrum
  min_cos  smallest max|cos| of the top k
  share    share of sum_{j<=k} sigma_j^2 carried by the intruders
  ms       time for the module (read, W's full SVD unless cached, and the top k of W + dW)

examples:
  python -m analysis.intruders checkpoints/r64_seed0 --base smollm2
  python -m analysis.intruders adapter/ --base base_model/ --top-k 20 --threshold 0.6 --json intr.json
"""


def build_parser() -> Parser:
    p = Parser("analysis.intruders",
               description="Count the intruder dimensions a LoRA adapter creates: top singular vectors of "
                           "W + dW that are close to no singular vector of the base weight W.",
               epilog=_EPILOG)
    p.add_argument("adapter", metavar="ADAPTER", help="PEFT folder or file, or loralib .pt/.bin (with --alpha)")
    p.add_base("Its top singular vectors are tested against W + dW.", required=True)
    p.add_argument("--top-k", type=int, default=10, metavar="K",
                   help="number of top singular vectors of W + dW tested (default 10)")
    p.add_argument("--threshold", type=float, default=0.5, metavar="EPS",
                   help="intruder when max |cos| to every singular vector of W is below EPS (default 0.5)")
    p.add_argument("--side", choices=INTRUDER_SIDES, default="left",
                   help="left (output-side) or right (input-side) singular vectors (default left)")
    p.add_argument("--method", choices=INTRUDER_METHODS, default="topk",
                   help="top k of W + dW: topk (default) from its Gram matrix on the smaller side, built from "
                        "W's and dW's factors without forming dW; full: LAPACK SVD of the dense W + dW; "
                        "randomized: seeded randomized SVD")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD (default 0)")
    p.add_alpha(needed="Needed here (ΔW enters W + ΔW).")
    p.add_filters()
    p.add_jobs()
    p.add_cache()
    p.add_progress()
    p.add_force()
    p.add_argument("--json", dest="json_path", metavar="FILE",
                   help="write one record per module, with max|cos| and sigma of each top vector")
    p.add_argument("--csv", dest="csv_path", metavar="FILE", help="write the per-module table as CSV")
    p.add_argument("--plot", dest="plot_path", metavar="FILE",
                   help="save a figure of intruders per layer (format from the suffix)")
    return p


def _body(args):
    base = base_path(args)
    if args.top_k < 1:
        raise InputError(f"--top-k must be a positive integer, got {args.top_k}")
    if not 0 < args.threshold <= 1:
        raise InputError(f"--threshold must be in (0, 1], got {args.threshold}")
    check_outputs(args, "json_path", "csv_path", "plot_path")
    ad = load_adapter(args.adapter, alpha=args.alpha)
    from analysis.sweeps.intruders import intruder_sweep  # local: the base readers and SVD cache, +24 ms on --help

    sw = intruder_sweep(ad, base, top_k=args.top_k, threshold=args.threshold, side=args.side,
                        method=args.method, seed=args.seed, modules=args.modules, layers=args.layers,
                        progress=wants_progress(args), jobs=args.jobs, cache=not args.no_cache)
    fr = sw.frame
    if not len(fr):
        raise InputError(f"{args.adapter}: no module left after --modules/--layers filters")
    print(f"adapter: {ad.path} ({ad.format}, {len(ad)} modules); base: {args.base}")
    print(f"top {args.top_k} {args.side} singular vectors of W + dW, threshold {args.threshold:g}, {args.method} SVD")
    table = Table(Column("layer", 5), Column("module", 24, "<", cut=True), Column("count", 5), Column("ranks", 16, "<"),
                  Column("min_cos", 8, fmt=".3f"), Column("share", 7, fmt=".3f"), Column("ms", 7, fmt=".1f"))
    table.header()
    for row in fr.to_dict(orient="records"):
        ranks = "zero update" if row["zero"] else (row["ranks"] or "-")
        table.row(layer_str(row["layer"]), row["module"], row["count"], ranks, row["min_max_cos"], row["energy_share"],
                  1000 * row["seconds"])
    for t, g in fr.groupby("module", sort=False):
        print(f"{t}: {int(g['count'].sum())} intruders in {len(g)} modules (mean {g['count'].mean():.2f}, "
              f"modules with any {int((g['count'] > 0).sum())})")
    print(f"time: {fr['seconds'].sum():.2f} s, median {1000 * fr['seconds'].median():.1f} ms per module",
          file=sys.stderr)
    if args.json_path:
        recs = fr.drop(columns=["seconds"]).to_dict(orient="records")  # no timings: reruns write the same bytes
        for rec in recs:
            res = sw.results[rec["name"]]
            rec["ranks"] = [int(j) for j in res.ranks]
            rec["max_cos"] = res.max_cos.tolist()
            rec["sigma"] = res.sigma.tolist()
        head = provenance("intruders", inputs={"adapter": args.adapter, "base": args.base},
                          settings={"top_k": args.top_k, "threshold": args.threshold, "side": args.side,
                                    "method": args.method, "seed": args.seed, "alpha": args.alpha,
                                    "modules": args.modules, "layers": args.layers})
        write_json(args.json_path, {**head, "modules": recs}, force=args.force)
    if args.csv_path:
        write_csv(fr, args.csv_path, force=args.force)
    if args.plot_path:
        from matplotlib.figure import Figure

        from analysis.plotting import plot_intruders  # local: +12 ms on --help

        art = plot_intruders(fr, ax=Figure(figsize=(6, 3.5), layout="constrained").add_subplot(), top_k=args.top_k)
        save_figure(art.fig, args.plot_path, force=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)

