"""``python -m analysis.subspace A B``: per-module subspace similarity of two LoRA adapters.

Exit codes: 0 on success, 2 on bad input (one line on standard error naming
the file and the problem, no traceback: among them two adapters with no module
in common, or none of equal shape), 1 on an internal error.
"""

from __future__ import annotations

import math
import re
import sys
from typing import TYPE_CHECKING

from analysis.cli.common import (Column, Parser, Table, alpha_b, base_path, check_outputs, describe, json_ready,
                                 layer_str, print_only, provenance, refuse_no_equal_shape, run, tolerance_setting,
                                 wants_progress, write_csv, write_json)
from analysis.core.adapter import natural_key
from analysis.errors import AdapterError, InputError
from analysis.io import load_adapter
from analysis.metrics.pair import SIDES, TIE_RTOL
from analysis.metrics.spectrum import NEAR_TIE_GAP
from analysis.sweeps import pair as pair_sweep

if TYPE_CHECKING:
    from collections.abc import Sequence

    from analysis.core.adapter import Adapter

__all__ = ["main", "build_parser", "check_overlap"]

_EPILOG = """\
columns:
  phi11[A]     phi(1,1) on the paper's basis (right-singular vectors of lora_A,
               ordered by A's singular values): squared cosine between the two top
               directions; 1 = same direction, ~1/d for random directions.
  phi11[in]    the same on the right singular vectors of dW (input side).
  phi11[out]   the same on the left singular vectors of dW (output side).
  shared[A]    directions the two updates share beyond chance on the A basis:
               principal cosines^2 between the top-i prefixes above what random
               i-dim subspaces reach (mean + 3 sd), most over i.
  angle        smallest principal angle between the two A row spaces, degrees.
  role         the module's role (q, k, v, o, qkv, cross_q ..., up, gate, down, embedding,
               other) from the roles table, @stack when the adapters span several stacks
               (encoder / decoder, text encoders, UNet blocks); --json and --csv carry
               stack and role per module.
  *            after a phi11: near tie on that side: the top two singular values
               of A or of B (those ordering that basis) are within 10 %
               (sigma2/sigma1 > 0.9), so the top direction is ill-defined and
               phi11 may be low while the top-2 subspaces agree. --json and --csv
               carry near_tie_<side> and top_ratio_a/b_<side> (sigma2/sigma1).

with --base (Table 7 of the paper, per adapter):
  |W|          Frobenius norm of the frozen weight W.
  proj[dW]     |U^T W V|_F with U, V the top-r singular vectors of dW.
  proj[W]      the same with W's own top-r singular vectors (the largest possible).
  proj[rnd]    the same with random r-dim subspaces (mean of 10 seeded draws).
  amp          amplification factor |dW|_F / proj[dW].

examples:
  python -m analysis.subspace checkpoints/r8_seed0 checkpoints/r64_seed0
  python -m analysis.subspace a.pt b.pt --alpha 32 --modules c_attn --json out.json
  python -m analysis.subspace A B --base model.gguf --out figs/ --layers 0-29
"""


def build_parser() -> Parser:
    p = Parser("analysis.subspace",
               description="Compare two LoRA adapters module by module: the subspace similarity "
                           "phi(i, j) of Section 7.2 of the LoRA paper, computed exactly from the "
                           "low-rank factors.",
               epilog=_EPILOG)
    p.add_argument("adapter_a", metavar="A", help="first adapter: PEFT folder or file, loralib .pt/.bin, kohya .safetensors")
    p.add_argument("adapter_b", metavar="B", help="second adapter (same base model)")
    p.add_alpha(pair=True)
    p.add_filters()
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE",
                   help="write one JSON record per module (with the full phi grid on the paper's basis)")
    p.add_argument("--csv", dest="csv_path", default=None, metavar="FILE", help="write the summary table as CSV")
    p.add_base("Adds the W-vs-dW analyses (Table 7: projections, amplification; Fig. 8) to the table, --json, "
               "--csv and --out.")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write figures as PNG into DIR (phi heatmaps, phi(1,1) per layer, spectra; with --base "
                        "also the amplification per layer and Table 7); the folder is written whole or not at all, "
                        "and a non-empty DIR is replaced as a whole only with --force")
    p.add_argument("--figure-layer", type=int, default=None, metavar="N",
                   help="layer of the heatmaps written by --out (default: the middle compared layer)")
    p.add_jobs()
    p.add_cache()
    p.add_tolerance()
    p.add_progress()
    p.add_force()
    return p


#: The sides whose φ(1, 1) the table prints, with their column tags.
_SHOWN = (("A", "A"), ("in", "input"), ("out", "output"))


def _phi_cell(row, side):
    """φ(1, 1) on ``side`` as printed: three decimals and ``*`` when the top two singular values nearly tie."""
    return _fmt(row[f"phi11_{side}"]) + ("*" if row.get(f"near_tie_{side}") else " ")


def _fmt(x, nd=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def _load(path, alpha):
    # lazy: a PEFT safetensors adapter is read one module at a time as the sweep reaches it,
    # so memory stays bounded by one module per adapter (see benchmarks/)
    return load_adapter(path, alpha=alpha, lazy=True)


def _records(sweep):
    """One JSON record per module: the frame's row; on the paper's basis the φ grid and angles; on every side
    the tied cuts of each adapter (``ties_<side>: {"a": [i, …], "b": [i, …]}``, see the README)."""
    recs = json_ready(sweep.frame.to_dict(orient="records"))
    for rec in recs:
        for side, res in sweep.results[rec["name"]].items():
            rec[f"ties_{side}"] = {"a": list(res.ties1), "b": list(res.ties2)}
        res = sweep.results[rec["name"]].get("A")
        if res is not None:
            rec["phi_A"] = res.phi
            rec["angles_deg_A"] = [math.degrees(t) for t in res.angles]
    return recs  # made JSON-ready (numpy values, NaN) once, by write_json


def _shapes_differ(sweep, a, b):
    """The shared module names whose ΔW shapes differ (not compared), as in the table: one record each,
    ``{"name", "shape_a": [d_out, d_in], "shape_b": [d_out, d_in]}``."""
    ea, eb = a.expanded(), b.expanded()
    return [{"name": n, "shape_a": [int(x) for x in ea[n].shape], "shape_b": [int(x) for x in eb[n].shape]}
            for n in sweep.mismatched]


def _tie_counts(sweep):
    """``{side: number of modules with a near tie on that side}`` (``near_tie_<side>`` of the frame)."""
    fr = sweep.frame
    return {s: int(fr[f"near_tie_{s}"].sum()) for s in ("A", "B", "input", "output") if f"near_tie_{s}" in fr}


def _print_table(sweep, a, b, out):
    fr = sweep.frame
    print(describe(a, "A"), file=out)
    print(describe(b, "B"), file=out)
    table = Table(Column("layer", 5), Column("module", 24, "<", cut=True), Column("role", 14, "<", cut=True),
                  Column("r_a", 4), Column("r_b", 4), Column("phi11[A]", 9), Column("phi11[in]", 9),
                  Column("phi11[out]", 10), Column("shared[A]", 9), Column("angle", 7), file=out)
    table.header()
    several = "stack" in fr and fr["stack"].nunique() > 1
    for row in fr.to_dict(orient="records"):
        role = str(row.get("role", "")) + (f"@{row['stack']}" if several else "")
        head = (layer_str(row["layer"]), row["module"], role, row["r_a"], row["r_b"])
        if row["zero_a"] or row["zero_b"]:
            which = " and ".join(t for t, z in (("A", row["zero_a"]), ("B", row["zero_b"])) if z)
            table.row(*head, tail=f"  zero update in {which} (B = 0, untrained, or alpha = 0); no similarity defined")
            continue
        table.row(*head, _phi_cell(row, "A"), _phi_cell(row, "input"), _phi_cell(row, "output"), row["shared_dims_A"],
                  _fmt(row["min_angle_deg_A"], 1))
    if len(fr):
        live = fr[~(fr["zero_a"] | fr["zero_b"])]
        if len(live):
            ties = {tag: int(live[f"near_tie_{s}"].sum()) for tag, s in _SHOWN if f"near_tie_{s}" in live}
            differ = f"; {len(sweep.mismatched)} more with shapes that differ, not compared" if sweep.mismatched else ""
            print(f"summary: {len(fr)} shared modules{differ}; median phi11[A] {live['phi11_A'].median():.3f}; "
                  f"median shared[A] {live['shared_dims_A'].median():.0f}; near ties (*) in "
                  + ", ".join(f"{n} ({tag})" for tag, n in ties.items()) + " modules", file=out)
            if any(ties.values()):
                print(f"* near tie: sigma2/sigma1 > {1 - NEAR_TIE_GAP:g} in A or B on that side (top two singular "
                      "values within 10 %): the top direction is ill-defined, phi11 there may be low while the "
                      "top-2 subspaces agree", file=out)
    print_only(sweep.only_a, sweep.only_b, mismatched=sweep.mismatched, out=out)


_BASE_COLS = ("proj_delta", "proj_w", "proj_random", "proj_random_expected", "amplification", "over_random",
              "phi_w_output", "phi_w_input", "null_w_output", "null_w_input")


def _with_base(sweep, a, b, base, progress, args):
    """Per-adapter W analyses merged into the pair frame (columns ``…_a``, ``…_b``, ``w_norm``)."""
    from analysis.io.base import open_base  # local: +8 ms on --help
    from analysis.sweeps.adapter import analyse_adapters  # local: the SVD cache, +23 ms on --help (with io.base)

    names = list(sweep.frame["name"]) if len(sweep.frame) else []
    pat = ["^" + re.escape(n) + "$" for n in names]
    with open_base(base) as bw:  # one pass over the base: each W read and decomposed once for both
        sa, sb = analyse_adapters([a, b], base=bw, modules=pat, progress=progress, jobs=args.jobs,
                                  cache=not args.no_cache, tolerance=args.tolerance)
    fr = sweep.frame
    ia, ib = sa.frame.set_index("name"), sb.frame.set_index("name")
    fr["w_norm"] = fr["name"].map(ia["w_norm"])
    for col in _BASE_COLS:
        fr[f"{col}_a"] = fr["name"].map(ia[col])
        fr[f"{col}_b"] = fr["name"].map(ib[col])
    return sa, sb


def _print_base_table(sweep, out):
    fr = sweep.frame
    print("W vs dW (Table 7 of the LoRA paper; U, V = top-r singular vectors):", file=out)
    table = Table(Column("layer", 5), Column("module", 24, "<", cut=True), Column("|W|", 7), Column("proj[dW]a", 9),
                  Column("amp a", 7), Column("proj[dW]b", 9), Column("amp b", 7), Column("proj[W]a", 8),
                  Column("proj[rnd]a", 10), file=out)
    table.header()
    for row in fr.to_dict(orient="records"):
        table.row(layer_str(row["layer"]), row["module"], _fmt(row["w_norm"], 2), _fmt(row["proj_delta_a"]),
                  _fmt(row["amplification_a"], 2), _fmt(row["proj_delta_b"]), _fmt(row["amplification_b"], 2),
                  _fmt(row["proj_w_a"], 2), _fmt(row["proj_random_a"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    return run(_compare, build_parser().parse_args(argv))


def _first(names):
    return min(names, key=natural_key)


def check_overlap(a: Adapter, b: Adapter, path_a: str, path_b: str) -> None:
    """Refuse two adapters that have no module name in common (adapters of different base models, or of
    disjoint target modules): one line naming both and the first module of each.

    Raises
    ------
    AdapterError
    """
    na, nb = set(a.expanded()), set(b.expanded())
    if na and nb and not na & nb:
        raise AdapterError(f"{path_a} and {path_b} share no module, nothing to compare (adapters of different base "
                           f"models or of different target modules?): A has {len(na)} modules, the first "
                           f"'{_first(na)}'; B has {len(nb)}, the first '{_first(nb)}'")


def _nothing_compared(sweep, a, b, args):
    """No shared module was compared: say why (shapes differ, or the filters left none) on one line."""
    refuse_no_equal_shape(sweep.mismatched, a, b, args.adapter_a, args.adapter_b)
    if args.modules or args.layers:
        raise InputError(f"{args.adapter_a} and {args.adapter_b}: no module left to compare after the "
                         "--modules/--layers filters")
    raise InputError(f"{args.adapter_a} and {args.adapter_b}: no module to compare")


def _compare(args):
    check_outputs(args, "json_path", "csv_path", "out")  # refused before any work
    a = _load(args.adapter_a, args.alpha)
    b = _load(args.adapter_b, alpha_b(args))
    check_overlap(a, b, args.adapter_a, args.adapter_b)  # before any work
    progress = wants_progress(args)
    sweep = pair_sweep.compare_adapters(a, b, modules=args.modules, layers=args.layers, progress=progress,
                                        jobs=args.jobs)
    if not len(sweep.frame):
        _nothing_compared(sweep, a, b, args)
    sweeps = None
    if args.base is not None and len(sweep.frame):

        sweeps = _with_base(sweep, a, b, base_path(args), progress, args)
    _print_table(sweep, a, b, sys.stdout)
    if sweeps is not None:
        _print_base_table(sweep, sys.stdout)
    if args.out:
        from analysis.cli.subspace_figures import write_pair_figures  # local: the plotting package, +16 ms on --help

        files = write_pair_figures(sweep, a, b, args.out, sweeps=sweeps, layer=args.figure_layer, force=args.force)
        print(f"figures: {len(files)} PNG files in {args.out}: {', '.join(files)}", file=sys.stdout)
    if args.json_path:
        settings = {"alpha": args.alpha, "alpha_b": args.alpha_b, "modules": args.modules, "layers": args.layers,
                    "sides": list(SIDES), "tie_rtol": TIE_RTOL, "near_tie_gap": NEAR_TIE_GAP, "n_random": 10,
                    "seed": 0}
        if args.base is not None:  # the accuracy of W's top singular triplets
            settings["tolerance"] = tolerance_setting(args)
        head = provenance("subspace", inputs={"a": args.adapter_a, "b": args.adapter_b, "base": args.base},
                          settings=settings)
        write_json(args.json_path, {**head, "a": args.adapter_a, "b": args.adapter_b, "only_a": sweep.only_a,
                                    "only_b": sweep.only_b, "shapes_differ": _shapes_differ(sweep, a, b),
                                    "near_ties": _tie_counts(sweep), "modules": _records(sweep)}, force=args.force)
    if args.csv_path:
        write_csv(sweep.frame, args.csv_path, force=args.force)
    return 0
