"""``python -m analysis.merge A B ... --method linear|cat|svd --out DIR``: exact merges with an interference report."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING
import warnings

from analysis.cli.common import (Column, Parser, Table, base_path, check_outputs, layer_str, provenance, run,
                                 wants_progress, write_json)
from analysis.errors import InputError
from analysis.io import load_adapter
from analysis.plotting.collection import short_labels
from analysis.sweeps.merge import HEADS, MERGE_METHODS, MergeWarning, SIGN_METHODS, merge_adapters

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main", "build_parser"]

_EPILOG = """\
methods (the same updates as PEFT's add_weighted_adapter, computed module by module, --jobs at once):
  exact from the factors (no dense dW):
    cat      exact sum of w_i dW_i: factors stacked, rank = sum of the ranks
    svd      best rank-K approximation of sum w_i dW_i (Eckart-Young), from the exact SVD of the
             stacked factors; K = --rank, default the largest rank
  factor-wise (PEFT's rule on the stacked lora_A, weights sign*sqrt|w s|, and separately on the stacked
  lora_B, weights sqrt|w s|; equal ranks; no dense dW; the product B'A' is NOT sum w_i dW_i, see rel_err):
    linear            weighted sums of the factors
    ties              magnitude pruning to --density, sign election, disjoint mean
    dare_linear       random pruning to --density (rescaled by 1/density), weighted sum
    dare_ties         random pruning, sign election, disjoint mean
    magnitude_prune   magnitude pruning, weighted sum
  dense (the rule acts on entries: each dW_i = s_i B_i A_i is formed, one module at a time per job, so memory
  is n dense d_out x d_in matrices per job), then the best rank-K approximation (float64 LAPACK SVD):
    ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd
  --density D (0 < D <= 1, share of entries kept) is required by every pruning method; --majority-sign-method
  total|frequency for the ties kinds; --seed N for the dare kinds: the masks are PEFT's after
  torch.manual_seed(N) just before add_weighted_adapter (drawn in PEFT's module order, whatever --jobs; the
  order is taken as the model's: by layer, then q, k, v, o, cross-attention, gate, up, down, as Llama, Mistral,
  GPT-2, BERT and T5 define their blocks; for another model pass module_order= to merge_adapters).

output: PEFT adapters (and every format with the base model's names) -> a PEFT folder; kohya / LyCORIS
.safetensors files -> a kohya .safetensors file (--out names it) with the first file's ss_* header and
ss_network_dim / ss_network_alpha describing the result. A module whose merged update vanishes (the weighted
updates cancel) is left out; when all vanish nothing is written (exit 2).

refused before any work (exit 2, one line): adapters of different models (no module in common, or one
module name with two shapes (d_out, d_in)); DoRA, lora_bias and embedding modules; kohya files mixed
with adapters named after the base model. Adapters naming
different base models (base_model_name_or_path) or task types with the same modules and shapes: one warning
line on stderr, the merge goes on. A module present in only some adapters is merged over those that have it
(a missing module counts as a zero update) and said in a note.

saved modules: what PEFT saves beside the factors (modules_to_save heads such as a classifier, trainable
tokens, bias="all"/"lora_only" biases, saved embedding layers) is written into the merged adapter, with the
task type and modules_to_save that describe it, so PeftModel.from_pretrained loads it:
  identical in every adapter   carried over as it is
  different (or missing)       refused, unless --heads says how:
    --heads first  the first adapter's saved tensors and config fields, the others' ignored
    --heads mean   the weighted mean sum w_i T_i / sum w_i (the merge weights normalised to sum 1; a plain mean
                   with the default weights); needs every adapter to hold the tensor and weights >= 0

interference report (printed before the adapter is written), per module:
  ratio    ||sum w_i dW_i||^2 / sum ||w_i dW_i||^2: > 1 reinforcing, < 1 cancelling, 1 orthogonal
  z        (ratio - 1) / sd of the ratio for random directions of the same norms
           (cosine sd 1/sqrt(d_out d_in)); |z| >= 3 decides the verdict
  kept     share of ||sum w_i dW_i||^2 the merged update keeps (svd: the rank-K truncation)
  rel_err  ||merged - sum w_i dW_i||_F / ||sum w_i dW_i||_F, exact
  and the Frobenius cosine of every pair of adapters (median and range over modules).

advice (pooled over modules, from the same exact inner products; analysis.sweeps.merge_advice):
  pairs       reinforce (z >= 3), cancel (z <= -3) or independent, from the pooled cosine
  g, f        per adapter: the share of its own update the merge keeps (g) and the energy the others add
              outside its direction, in units of its own (f); distance ||M - dW_i||^2/||dW_i||^2 = (1-g)^2 + f
  scale       c*: multiply every weight by it to bring the merge closest to each adapter's own update
  This is weight-space advice: it cannot see how one adapter's update acts on another task's inputs.
  Measured against validation losses on the four shipped task adapters: benchmarks/merge_losses.csv.

examples:
  python -m analysis.merge checkpoints/word_r8_seed0 checkpoints/hypernym_r8_seed0 --method cat --out merged
  python -m analysis.merge A B C --weights 0.5 0.3 0.2 --method svd --rank 8 --out merged --json report.json
  python -m analysis.merge mrpc/checkpoint-500 mrpc/checkpoint-1000 --method cat --heads mean --out merged
  python -m analysis.merge A B --method ties --density 0.5 --out merged
  python -m analysis.merge A B --method dare_ties_svd --density 0.3 --seed 1 --rank 8 --jobs 2 --out merged
  python -m analysis.merge style.safetensors detail.safetensors --method svd --rank 16 --out both.safetensors
"""


def build_parser() -> Parser:
    p = Parser("analysis.merge",
               description="Merge LoRA adapters (cat, svd and PEFT's linear, TIES, DARE and magnitude-prune "
                           "combinations) into one adapter of the sources' format, and report how their updates "
                           "interfere, with advice.", epilog=_EPILOG)
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="two or more adapters of one base model")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", default=None,
                   help="one weight per adapter (default 1 each; negative subtracts)")
    p.add_argument("--method", choices=MERGE_METHODS, required=True, help="how to merge (see below)")
    p.add_argument("--rank", type=int, default=None, metavar="K",
                   help="rank K of the svd and *_svd merges (default: the largest rank)")
    p.add_argument("--density", type=float, default=None, metavar="D",
                   help="share of entries kept by the pruning methods (ties, dare_*, magnitude_prune*), 0 < D <= 1")
    p.add_argument("--majority-sign-method", choices=SIGN_METHODS, default="total",
                   help="TIES's sign election: 'total' (sign of the sum, default) or 'frequency' (most common sign)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="DARE's random masks: PEFT's after torch.manual_seed(N) (default 0)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the merged PEFT adapter (a .safetensors file for kohya sources)")
    p.add_argument("--heads", choices=HEADS, default=None,
                   help="how to combine saved modules (modules_to_save heads, trainable tokens, biases) that differ "
                        "between the adapters: 'first' keeps the first adapter's, 'mean' writes the weighted mean "
                        "sum w_i T_i / sum w_i (a plain mean with the default weights; weights >= 0). Default: "
                        "identical ones are carried over, differing ones refused")
    p.add_base("Only for kohya / LyCORIS sources whose LoHa / LoKr modules store flattened factors, to write conv "
               "layers with their kernel.")
    p.add_alpha(needed="Needed: merging uses the scales.")
    p.add_force()
    p.add_jobs()
    p.add_progress()
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the interference report as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the pairwise cosines and the summary")
    return p


def _method_str(res):
    extra = [f"rank {res.rank}"] if res.rank else []
    if res.density is not None:
        extra.append(f"density {res.density:g}")
    if res.majority_sign_method:
        extra.append(f"sign {res.majority_sign_method}")
    if res.seed is not None:
        extra.append(f"seed {res.seed}")
    return res.method + (f" ({', '.join(extra)})" if extra else "")


def _print(res, out, quiet, names):
    import numpy as np

    print(f"merge {_method_str(res)} of " + ", ".join(f"{w:g} x {names[x]}" for w, x in zip(res.weights, res.labels)),
          file=out)
    print("pairwise Frobenius cosine per module (random directions: 0 +- 1/sqrt(d_out d_in)):", file=out)
    for (a, b), g in res.cosines.groupby(["a", "b"], sort=False):
        c = g["cosine"].to_numpy(dtype=float)
        c = c[np.isfinite(c)]
        if c.size:
            print(f"  {names[a]} / {names[b]}: median {np.median(c):+.3f}, range {c.min():+.3f} to {c.max():+.3f} "
                  f"over {c.size} modules", file=out)
    fr = res.frame
    if not quiet:
        table = Table(Column("layer", 5), Column("module", 18, "<", cut=True), Column("ratio", 7, fmt=".3f"),
                      Column("z", 8, fmt=".1f"), Column("verdict", 12, "<"), Column("kept", 7, fmt=".4f"),
                      Column("rel_err", 8, fmt=".2e"), file=out)
        table.header()
        for r in fr.to_dict(orient="records"):
            table.row(layer_str(r["layer"]), r["module"], r["ratio"], r["z"], r["verdict"], r["energy_kept"],
                      r["rel_error"], tail="  vanishes" if r["cancelled"] else "")
    s = res.summary()
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items()))
    kept = "" if res.method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune") else \
        f"; energy kept {s['energy_kept_pooled']:.4f}"
    print(f"modules: {verdicts}; ||sum w dW||^2 / sum ||w dW||^2 pooled = {s['ratio_pooled']:.3f}{kept}"
          f"; max rel_err {fr['rel_error'].max():.2e}", file=out)
    if s["cancelled"]:
        print(f"||merged||^2 = {s['norm2_merged_pooled']:.3g} of sum ||w dW||^2 = {fr['sum_norm2'].sum():.3g}: "
              f"{s['cancelled']} of {len(fr)} modules vanish (the weighted updates cancel), energy 0 there", file=out)


def _print_advice(res, out, names):
    adv = res.advice()
    print("advice:", file=out)
    for line in adv.lines:
        for lab, short in sorted(names.items(), key=lambda kv: -len(kv[0])):
            line = line.replace(lab, short)
        print(f"  {line}", file=out)
    return adv


def _body(args):
    check_outputs(args, "out", "json_path")
    if len(args.adapters) < 2:
        raise InputError(f"expected at least two adapters to merge, got {len(args.adapters)}")
    if args.weights is not None and len(args.weights) != len(args.adapters):
        raise InputError(f"--weights: expected {len(args.adapters)} numbers (one per adapter), got "
                         f"{len(args.weights)}")
    if args.rank is not None and args.rank < 1:
        raise InputError(f"--rank must be a positive integer, got {args.rank}")
    ads = [load_adapter(p, alpha=args.alpha) for p in args.adapters]
    with warnings.catch_warnings():  # printed below as one line each
        warnings.simplefilter("ignore", MergeWarning)
        res = merge_adapters(ads, weights=args.weights, method=args.method, rank=args.rank, labels=args.adapters,
                             heads=args.heads, density=args.density, majority_sign_method=args.majority_sign_method,
                             seed=args.seed, jobs=args.jobs, progress=wants_progress(args))
    for line in res.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in res.notes:
        print(f"note: {line}", file=sys.stdout)
    names = dict(zip(res.labels, short_labels(res.labels)))
    _print(res, sys.stdout, args.quiet, names)
    adv = _print_advice(res, sys.stdout, names)
    cfg = res.write(args.out, force=args.force, base=base_path(args))  # refuses (exit 2) when every module vanishes
    if cfg.get("format") == "kohya":
        print(f"wrote {args.out}: kohya file, {cfg['modules']} modules, r = {cfg['r']}, "
              f"{len(cfg['rank_pattern'])} modules of another rank, alpha per module", file=sys.stdout)
    else:
        print(f"wrote {args.out}: r = {cfg['r']}, {len(cfg['rank_pattern'])} rank_pattern entries, "
              f"lora_alpha = {cfg['lora_alpha']}, task_type = {cfg.get('task_type')}, {_saved_str(res.saved, cfg)}",
              file=sys.stdout)
    if args.json_path:
        head = provenance("merge", inputs={"adapters": list(args.adapters), "out": args.out, "base": args.base},
                          settings={"method": args.method, "weights": list(res.weights), "rank": res.rank,
                                    "density": res.density, "majority_sign_method": res.majority_sign_method,
                                    "seed": res.seed, "alpha": args.alpha, "heads": args.heads})
        write_json(args.json_path, {**head, "summary": res.summary(), "modules": res.frame.to_dict(orient="records"),
                                    "cosines": res.cosines.to_dict(orient="records"),
                                    "advice": {"scale": adv.scale, "pairs": adv.pairs.to_dict(orient="records"),
                                               "adapters": adv.adapters.to_dict(orient="records"),
                                               "lines": list(adv.lines)},
                                    "saved_modules": {"how": res.saved.how, "keys": sorted(res.saved.tensors),
                                                      "averaged": list(res.saved.averaged)},
                                    "cancelled": list(res.cancelled),
                                    "warnings": list(res.warnings), "notes": list(res.notes)}, force=args.force)


def _saved_str(saved, cfg):
    """``no saved modules`` or ``2 saved tensors (modules_to_save ['classifier']; mean)``."""
    if not saved.tensors:
        return "no saved modules"
    return (f"{len(saved.tensors)} saved tensors (modules_to_save {cfg.get('modules_to_save')!r}; "
            f"{saved.how})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)
