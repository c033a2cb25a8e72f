"""``python -m analysis.rank A B``: advised LoRA rank per module from two adapters (stability across runs)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from analysis.cli.common import (Column, Parser, Table, alpha_b, check_outputs, describe, layer_str, print_only,
                                 provenance, refuse_no_equal_shape, run, save_figure, wants_progress, write_csv,
                                 write_json)
from analysis.errors import InputError
from analysis.io import load_adapter
from analysis.plotting import plot_advised_rank
from analysis.sweeps.advice import ADVICE_SIDES, advise_ranks, check_min_rank
from analysis.sweeps.driver import pair_modules

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main", "build_parser"]

_EPILOG = """\
how the advice is made:
  For each module both adapters share, take the top-i singular directions of the two
  updates and the principal angles between these two i-dim subspaces. A squared
  cosine counts as shared when it exceeds the mean + N sd (--n-std) of the largest
  one between random i-dim subspaces of R^d (seeded Monte Carlo). shared = the most
  directions shared over all prefixes i; needed = the smallest prefix holding them.
  advised = max(needed, --min-rank) (PEFT cannot hold r = 0), at most the smaller
  numerical rank of the two updates (the cap; '*': every direction up to the cap is
  shared, so the need may be higher: compare with a larger rank).

sides (--side):
  both     min of the input and output sides of dW (default; a direction u v^T is
           reproduced only if u and v both are; the order is dW's, as truncation keeps)
  input    right singular vectors of dW      output   left singular vectors of dW
  A, B     the LoRA paper's bases (singular vectors of lora_A / lora_B, ordered by
           their own singular values)

output:
  a table (one line per layer, one column per module type), the PEFT suggestion
  (r = the most common advice, rank_pattern for the others) and, with --json, a file
  whose "lora_config" is ready for peft.LoraConfig(**cfg, lora_alpha=...) and for
  'python -m analysis.resize ADAPTER --pattern FILE'.

examples:
  python -m analysis.rank checkpoints/r64_seed0 checkpoints/r64_seed1 --json advice.json
  python -m analysis.rank checkpoints/r8_seed0 checkpoints/r64_seed0 --side output --plot advice.png
"""


def build_parser() -> Parser:
    p = Parser("analysis.rank",
               description="Advise a LoRA rank per module: the number of leading directions of dW that two "
                           "trainings (two seeds, or rank r and a larger rank) agree on beyond chance.",
               epilog=_EPILOG)
    p.add_argument("adapter_a", metavar="A", help="first adapter: PEFT folder or file, loralib .pt/.bin, kohya file")
    p.add_argument("adapter_b", metavar="B", help="second adapter of the same base model (other seed or larger rank)")
    p.add_argument("--side", choices=ADVICE_SIDES, default="both", help="basis compared (default: both)")
    p.add_argument("--n-std", type=float, default=3.0, metavar="N",
                   help="a principal cosine^2 counts as shared above the random mean + N standard deviations "
                        "(default 3)")
    p.add_argument("--trials", type=int, default=200, metavar="T",
                   help="Monte-Carlo draws of the random null (default 200, seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random null (default 0)")
    p.add_argument("--min-rank", type=int, default=1, metavar="K",
                   help="floor of the advice, from 1 to the smallest rank r of the modules compared (default 1; "
                        "PEFT cannot hold rank 0)")
    p.add_alpha(pair=True, needed="Not needed for the advice itself.")
    p.add_filters()
    p.add_jobs()
    p.add_progress()
    p.add_force()
    p.add_argument("--json", dest="json_path", metavar="FILE",
                   help="write the advice: settings, lora_config (r, rank_pattern, target_modules) and one "
                        "record per module")
    p.add_argument("--csv", dest="csv_path", metavar="FILE", help="write the per-module table as CSV")
    p.add_argument("--plot", dest="plot_path", metavar="FILE",
                   help="save a figure of the advised rank per layer (format from the suffix: .png, .pdf, .svg)")
    return p


def _print(adv, a, b, out):
    fr = adv.frame
    print(describe(a, "A"), file=out)
    print(describe(b, "B"), file=out)
    print(f"side {adv.side}, threshold: random mean + {adv.n_std:g} sd of the largest cos^2, floor {adv.min_rank}",
          file=out)
    types = list(dict.fromkeys(fr["module"]))
    table = Table(Column("layer", 5), *(Column(t.rsplit(".", 1)[-1], 12) for t in types), file=out)
    table.header()
    for layer, g in fr.groupby(fr["layer"].fillna(-1), sort=True):
        cells = []
        for t in types:
            r = g[g["module"] == t]
            if not len(r):
                cells.append("")
                continue
            r = r.iloc[0]
            cells.append("zero" if r["zero"] else f"{int(r['needed'])}{'*' if r['capped'] else ''}/{int(r['cap'])}")
        table.row(layer_str(layer if layer >= 0 else None), *cells)
    print(f"cells: needed/cap ('*' = every direction up to the cap shared); advised = max(needed, {adv.min_rank})",
          file=out)
    for t in types:
        g = fr[fr["module"] == t]
        print(f"{t}: advised median {g['advised'].median():g}, range {g['advised'].min()}-{g['advised'].max()}; "
              f"shared median {g['shared'].median():g}; at cap {int(g['capped'].sum())}/{len(g)}", file=out)
    r0, pat = adv.rank_pattern()
    print(f"PEFT: r = {r0}, rank_pattern with {len(pat)} entries", file=out)
    print_only(adv.only_a, adv.only_b, mismatched=adv.mismatched, what="not advised on", limit=6, out=out)


def _plot(adv, path, force):
    from matplotlib.figure import Figure

    art = plot_advised_rank(adv, ax=Figure(figsize=(6, 3.5), layout="constrained").add_subplot())
    art.ax.set_title("rank advice: directions shared by the two adapters", fontsize="medium")
    save_figure(art.fig, path, force=force)


def _body(args):
    if args.min_rank < 1:
        raise InputError(f"--min-rank must be at least 1 (PEFT cannot hold r = 0), got {args.min_rank}")
    if not args.n_std >= 0:
        raise InputError(f"--n-std must be >= 0, got {args.n_std}")
    if args.trials < 2:
        raise InputError(f"--trials must be >= 2, got {args.trials}")
    check_outputs(args, "json_path", "csv_path", "plot_path")
    a = load_adapter(args.adapter_a, alpha=args.alpha)
    b = load_adapter(args.adapter_b, alpha=alpha_b(args))
    pairs = pair_modules(a, b, modules=args.modules, layers=args.layers)
    check_min_rank(args.min_rank, pairs.a, pairs.b, pairs.names, what="--min-rank")
    adv = advise_ranks(a, b, side=args.side, n_std=args.n_std, min_rank=args.min_rank, modules=args.modules,
                       layers=args.layers, trials=args.trials, seed=args.seed, progress=wants_progress(args),
                       jobs=args.jobs)
    if not len(adv.frame):
        refuse_no_equal_shape(adv.mismatched, a, b, args.adapter_a, args.adapter_b)
        why = ("after the --modules/--layers filters" if args.modules or args.layers else
               "(adapters of different base models or of different target modules?)")
        raise InputError(f"{b.path}: no module shared with {a.path} {why}")
    _print(adv, a, b, sys.stdout)
    if args.json_path:
        head = provenance("rank", inputs={"a": args.adapter_a, "b": args.adapter_b},
                          settings={"side": args.side, "n_std": args.n_std, "trials": args.trials, "seed": args.seed,
                                    "min_rank": args.min_rank, "alpha": args.alpha, "alpha_b": alpha_b(args),
                                    "modules": args.modules, "layers": args.layers})
        write_json(args.json_path, {**head, **adv.to_dict()}, force=args.force)
    if args.csv_path:
        write_csv(adv.frame, args.csv_path, force=args.force)
    if args.plot_path:
        _plot(adv, args.plot_path, args.force)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)

