"""``python -m analysis.resize ADAPTER (--rank K | --energy E | --pattern FILE) --out DIR``: exact rank reduction."""

from __future__ import annotations

import sys

from analysis.cli.common import (Parser, check_outputs, fit, layer_str, provenance, run, wants_progress,
                                 write_json)

__all__ = ["main", "build_parser"]

_EPILOG = """\
what it does:
  For every module, dW = U S V^T is known exactly from the LoRA factors. The new
  adapter holds the best rank-k approximation U_k S_k V_k^T (Eckart-Young), as
  lora_B = U_k sqrt(S_k / s), lora_A = sqrt(S_k / s) V_k^T with PEFT's scale
  s = lora_alpha / k, so PEFT (merge_and_unload, or inference) reproduces it.
  Ranks that differ between modules go into the config's rank_pattern.

columns:
  r        stored rank of the source      k         rank kept (<= numerical rank)
  energy   share of ||dW||_F^2 kept       rel_err   ||dW - dW_k||_F / ||dW||_F
  tied     the cut falls inside near-equal singular values (truncation not unique)

examples:
  python -m analysis.resize checkpoints/r64_seed0 --rank 8 --out r64_to_r8
  python -m analysis.resize checkpoints/r64_seed0 --energy 0.9 --out r64_e90 --json kept.json
  python -m analysis.resize checkpoints/r64_seed0 --pattern advice.json --out r64_advised
"""


def build_parser():
    p = Parser("analysis.resize",
               description="Reduce the rank of a LoRA adapter exactly (best rank-k approximation of every "
                           "module's update, from its factored SVD) and save it as a PEFT adapter.",
               epilog=_EPILOG)
    p.add_argument("adapter", metavar="ADAPTER",
                   help="source adapter: PEFT folder or file, loralib .pt/.bin, kohya / LyCORIS .safetensors "
                        "(written back as a kohya .safetensors file: then --out names that file)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, metavar="K", help="keep the top K directions of every module")
    how.add_argument("--energy", type=float, metavar="E",
                     help="per module, the smallest rank keeping a fraction E (0 < E <= 1) of ||dW||_F^2")
    how.add_argument("--pattern", metavar="FILE",
                     help="per-module ranks from JSON: the --json output of 'python -m analysis.rank', an "
                          "adapter_config.json-like {r, rank_pattern}, or a flat {pattern: rank}; modules "
                          "not covered keep their rank")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the new PEFT adapter (a .safetensors file for a kohya source)")
    p.add_force()
    p.add_jobs()
    p.add_progress()
    p.add_argument("--alpha", type=float, default=None,
                   help="scale numerator of the SOURCE when its format does not store it (loralib)")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="lora_alpha written to the new config (default: the source's lora_alpha, else "
                        "the most common new rank); the factors absorb the scale either way")
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="base model (safetensors file or HF folder): needed only for a kohya / LyCORIS source "
                        "whose LoHa / LoKr modules store flattened factors, to write conv layers with their kernel")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the per-module table as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    return p


def _body(args):
    from analysis.io import load_adapter
    from analysis.sweeps.resize import resize_adapter

    check_outputs(args, "out", "json_path")
    ad = load_adapter(args.adapter, alpha=args.alpha)
    if args.rank is not None and args.rank < 1:
        raise ValueError(f"--rank must be a positive integer, got {args.rank}")
    if args.energy is not None and not 0 < args.energy <= 1:
        raise ValueError(f"--energy must be in (0, 1], got {args.energy}")
    res = resize_adapter(ad, rank=args.rank, energy=args.energy, pattern=args.pattern, alpha=args.lora_alpha,
                         progress=wants_progress(args), jobs=args.jobs)
    cfg = res.write(args.out, overwrite=args.force, base=args.base)
    fr = res.frame
    out = sys.stdout
    if not args.quiet:
        print(f"source: {ad.path} ({ad.format}, {len(ad)} modules)", file=out)
        for note in (*ad.notes, *res.notes):
            print(f"note: {note}", file=out)
        print(f"{'layer':>5} {'module':<24} {'r':>4} {'k':>4} {'energy':>8} {'rel_err':>8} {'tied':>5}", file=out)
        for row in fr.to_dict(orient="records"):
            print(f"{layer_str(row['layer']):>5} {fit(row['module']):<24} {row['r']:>4} {row['k']:>4} {row['energy']:>8.4f} "
                  f"{row['rel_error']:>8.4f} {'yes' if row['cut_tied'] else '':>5}", file=out)
    params_old = int(sum(lr.r * sum(lr.shape) for lr in ad.values()))
    params_new = int(sum(lr.r * sum(lr.shape) for lr in res.modules.values()))
    tot = float((fr["fro"] ** 2).sum())
    overall = float((fr["fro_kept"] ** 2).sum()) / tot if tot > 0 else 1.0
    what = (f"kohya file, r = {cfg['r']}, {len(cfg['rank_pattern'])} modules of another rank, alpha per module"
            if cfg.get("format") == "kohya" else
            f"r = {cfg['r']}, {len(cfg['rank_pattern'])} rank_pattern entries, lora_alpha = {cfg['lora_alpha']}")
    print(f"wrote {args.out}: {what}; parameters {params_old} -> {params_new}; energy kept: min "
          f"{fr['energy'].min():.4f}, median {fr['energy'].median():.4f}, overall {overall:.4f}", file=out)
    if args.json_path:
        head = provenance("resize", inputs={"adapter": args.adapter, "out": args.out},
                          settings={"rank": args.rank, "energy": args.energy, "pattern": args.pattern,
                                    "alpha": args.alpha, "lora_alpha": args.lora_alpha})
        write_json(args.json_path, {**head, "lora_alpha": res.alpha, "r": cfg["r"],
                                    "rank_pattern": cfg["rank_pattern"], "energy_overall": overall,
                                    "modules": fr.to_dict(orient="records")}, force=args.force)


def main(argv=None):
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)

