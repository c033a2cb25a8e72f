"""``python -m analysis.merge A B ... --method linear|cat|svd --out DIR``: exact merges with an interference report."""

from __future__ import annotations

import sys

from analysis.cli.common import Parser, check_outputs, fit, layer_str, provenance, run, write_json

__all__ = ["main", "build_parser"]

_EPILOG = """\
methods (the same updates as PEFT's add_weighted_adapter, computed from the factors):
  cat      exact sum of w_i dW_i: factors stacked, rank = sum of the ranks
  svd      best rank-K approximation of sum w_i dW_i (Eckart-Young), from the exact SVD of the
           stacked factors (no dense dW); K = --rank, default the largest rank
  linear   PEFT's factor-wise sum (equal ranks): A = sum sqrt(w s) A_i, B = sum sqrt(w s) B_i; its
           product has cross terms B_i A_j, so it is NOT sum w_i dW_i (see rel_err)

interference report (printed before the adapter is written), per module:
  ratio    ||sum w_i dW_i||^2 / sum ||w_i dW_i||^2: > 1 reinforcing, < 1 cancelling, 1 orthogonal
  z        (ratio - 1) / sd of the ratio for random directions of the same norms
           (cosine sd 1/sqrt(d_out d_in)); |z| >= 3 decides the verdict
  kept     share of ||sum w_i dW_i||^2 the merged update keeps (svd: the rank-K truncation)
  rel_err  ||merged - sum w_i dW_i||_F / ||sum w_i dW_i||_F, exact
  and the Frobenius cosine of every pair of adapters (median and range over modules).

examples:
  python -m analysis.merge checkpoints/word_r8_seed0 checkpoints/hypernym_r8_seed0 --method cat --out merged
  python -m analysis.merge A B C --weights 0.5 0.3 0.2 --method svd --rank 8 --out merged --json report.json
"""


def build_parser():
    from analysis.sweeps.merge import MERGE_METHODS

    p = Parser("analysis.merge",
               description="Merge LoRA adapters exactly (cat, svd, PEFT's linear) into a PEFT adapter, and "
                           "report how their updates interfere.", epilog=_EPILOG)
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="two or more adapters of one base model")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", default=None,
                   help="one weight per adapter (default 1 each; negative subtracts)")
    p.add_argument("--method", choices=MERGE_METHODS, required=True, help="how to merge (see below)")
    p.add_argument("--rank", type=int, default=None, metavar="K", help="rank of the svd merge (default: largest)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the merged PEFT adapter")
    p.add_alpha(needed="Needed: merging uses the scales.")
    p.add_force()
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the interference report as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the pairwise cosines and the summary")
    return p


def _print(res, out, quiet):
    import numpy as np

    from analysis.plotting.collection import short_labels

    names = dict(zip(res.labels, short_labels(res.labels)))
    print(f"merge {res.method}" + (f" to rank {res.rank}" if res.rank else "") + " of "
          + ", ".join(f"{w:g} x {names[x]}" for w, x in zip(res.weights, res.labels)), file=out)
    print("pairwise Frobenius cosine per module (random directions: 0 +- 1/sqrt(d_out d_in)):", file=out)
    for (a, b), g in res.cosines.groupby(["a", "b"], sort=False):
        c = g["cosine"].to_numpy(dtype=float)
        c = c[np.isfinite(c)]
        if c.size:
            print(f"  {names[a]} / {names[b]}: median {np.median(c):+.3f}, range {c.min():+.3f} to {c.max():+.3f} "
                  f"over {c.size} modules", file=out)
    fr = res.frame
    if not quiet:
        print(f"{'layer':>5} {'module':<18} {'ratio':>7} {'z':>8} {'verdict':<12} {'kept':>7} {'rel_err':>8}", file=out)
        for r in fr.to_dict(orient="records"):
            print(f"{layer_str(r['layer']):>5} {fit(r['module'], 18):<18} {r['ratio']:>7.3f} {r['z']:>8.1f} "
                  f"{r['verdict']:<12} {r['energy_kept']:>7.4f} {r['rel_error']:>8.2e}", file=out)
    s = res.summary()
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items()))
    print(f"modules: {verdicts}; ||sum w dW||^2 / sum ||w dW||^2 pooled = {s['ratio_pooled']:.3f}"
          + ("" if res.method == "linear" else f"; energy kept {s['energy_kept_pooled']:.4f}")
          + f"; max rel_err {fr['rel_error'].max():.2e}", file=out)


def _body(args):
    from analysis.io import load_adapter
    from analysis.sweeps.merge import merge_adapters

    check_outputs(args, "out", "json_path")
    if len(args.adapters) < 2:
        raise ValueError(f"expected at least two adapters to merge, got {len(args.adapters)}")
    if args.weights is not None and len(args.weights) != len(args.adapters):
        raise ValueError(f"--weights: expected {len(args.adapters)} numbers (one per adapter), got "
                         f"{len(args.weights)}")
    if args.rank is not None and args.rank < 1:
        raise ValueError(f"--rank must be a positive integer, got {args.rank}")
    ads = [load_adapter(p, alpha=args.alpha) for p in args.adapters]
    res = merge_adapters(ads, weights=args.weights, method=args.method, rank=args.rank, labels=args.adapters)
    _print(res, sys.stdout, args.quiet)
    cfg = res.write(args.out, overwrite=args.force)
    print(f"wrote {args.out}: r = {cfg['r']}, {len(cfg['rank_pattern'])} rank_pattern entries, "
          f"lora_alpha = {cfg['lora_alpha']}", file=sys.stdout)
    if args.json_path:
        head = provenance("merge", inputs={"adapters": list(args.adapters), "out": args.out},
                          settings={"method": args.method, "weights": list(res.weights), "rank": res.rank,
                                    "alpha": args.alpha})
        write_json(args.json_path, {**head, "summary": res.summary(), "modules": res.frame.to_dict(orient="records"),
                                    "cosines": res.cosines.to_dict(orient="records")}, force=args.force)


def main(argv=None):
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)
