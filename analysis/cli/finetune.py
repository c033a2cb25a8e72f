"""``python -m analysis.finetune BASE FT --rank K``: the low-rank view of a full fine-tune."""

from __future__ import annotations


from typing import TYPE_CHECKING

from analysis.cli.common import (Column, Parser, Table, check_outputs, layer_str, provenance, run, wants_progress,
                                 write_csv, write_json)
from analysis.core.randomized import krylov_settings
from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main", "build_parser"]

_EPILOG = """\
columns:
  k        rank of the truncation          fro      ||W_ft - W0||_F (exact)
  sigma1   top singular value of the update
  energy   share of ||dW||_F^2 captured by the rank-k truncation (exact denominator)
  rel_err  ||dW - dW_k||_F / ||dW||_F = sqrt(1 - energy)

The top singular triplets come from a seeded randomized SVD (subspace iteration,
--n-iter power steps, --oversample extra directions): deterministic for a seed.
Memory: --jobs N modules are decomposed at once (default: the cores available),
so about N + 1 pairs of base and fine-tuned tensors are in memory.

examples:
  python -m analysis.finetune base_model/ finetuned_model/ --rank 16 --out ft_r16 --modules "q_proj|v_proj"
  python -m analysis.finetune base.safetensors ft.safetensors --rank 8 --spectrum 32 --json spectra.json
"""


def build_parser() -> Parser:
    p = Parser("analysis.finetune",
               description="Low-rank view of a full fine-tune: per module, the spectrum of W_ft - W0 by a "
                           "seeded randomized SVD, the energy captured by rank k, and the rank-k truncation "
                           "saved as a PEFT LoRA adapter.", epilog=_EPILOG)
    p.add_argument("base", metavar="BASE", help="base model: HF folder (single or sharded safetensors), a "
                                                ".safetensors file, or a Llama .gguf file")
    p.add_argument("finetuned", metavar="FT", help="fully fine-tuned model, same layout rules as BASE")
    p.add_argument("--rank", type=int, required=True, metavar="K", help="rank of the truncation to report and export")
    p.add_argument("--out", metavar="DIR", help="save the rank-K truncations as a PEFT adapter in DIR")
    p.add_force()
    p.add_filters()
    p.add_jobs()
    p.add_progress()
    p.add_argument("--spectrum", type=int, default=None, metavar="N",
                   help="compute the top N singular values (N >= K; default K) for the long-form output")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="lora_alpha written to the adapter (default K: scale 1); the factors absorb the scale")
    p.add_argument("--fan-in-fan-out", action="store_true",
                   help="weights are stored (d_in, d_out) as GPT-2's Conv1D: transpose, and export with "
                        "fan_in_fan_out = true")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD (default 0)")
    p.add_tolerance()
    p.add_argument("--n-iter", type=int, default=4, help="power iterations of the randomized SVD (default 4; "
                   "--tolerance, when given, sets it and --oversample from the measured ladder instead)")
    p.add_argument("--oversample", type=int, default=10, help="extra random directions (default 10)")
    p.add_argument("--json", dest="json_path", metavar="FILE",
                   help="write per-module records, each with its computed spectrum")
    p.add_argument("--csv", dest="csv_path", metavar="FILE", help="write the per-module table as CSV")
    return p


def _body(args):
    if args.rank < 1:
        raise InputError(f"--rank must be a positive integer, got {args.rank}")
    if args.n_iter < 0 or args.oversample < 0:
        raise InputError("--n-iter and --oversample must be >= 0")
    check_outputs(args, "out", "json_path", "csv_path")
    from analysis.sweeps.finetune import finetune_deltas  # local: its readers and writer, +18 ms on --help

    if args.tolerance is not None:  # one vocabulary for the SVD's accuracy: the measured ladder of every command
        ladder = krylov_settings(args.tolerance)
        args.n_iter, args.oversample = ladder["n_iter"], ladder["oversample"]  # None: the default block

    res = finetune_deltas(args.base, args.finetuned, rank=args.rank, spectrum=args.spectrum,
                          modules=args.modules, layers=args.layers, alpha=args.lora_alpha,
                          fan_in_fan_out=args.fan_in_fan_out, oversample=args.oversample, n_iter=args.n_iter,
                          seed=args.seed, progress=wants_progress(args), jobs=args.jobs)
    fr = res.frame
    if not len(fr):
        raise InputError(f"{args.finetuned}: no 2-D weight shared with {args.base} (after --modules/--layers)")
    print(f"base: {args.base}\nfine-tuned: {args.finetuned}\n{len(fr)} modules, rank {args.rank}")
    table = Table(Column("layer", 5), Column("module", 28, "<", cut=True), Column("shape", 11),
                  Column("fro", 10, fmt=".4g"), Column("sigma1", 10, fmt=".4g"), Column("energy", 8, fmt=".4f"),
                  Column("rel_err", 8, fmt=".4f"))
    table.header()
    for row in fr.to_dict(orient="records"):
        if row["zero"]:
            table.row(layer_str(row["layer"]), row["module"], tail=" identical in both models (not exported)")
            continue
        table.row(layer_str(row["layer"]), row["module"], f"{row['d_out']}x{row['d_in']}", row["fro"], row["sigma1"],
                  row["energy_k"], row["rel_error_k"])
    live = fr[~fr["zero"]]
    if len(live):
        tot = float((live["fro"] ** 2).sum())
        kept = float((live["energy_k"] * live["fro"] ** 2).sum())
        print(f"energy captured by rank {args.rank}: median {live['energy_k'].median():.4f}, overall "
              f"{kept / tot:.4f}; {fr['seconds'].sum():.2f} s")
    if res.skipped:
        print(f"skipped {len(res.skipped)} weights present in one model only, e.g. {next(iter(res.skipped))}")
    if args.out:
        cfg = res.write(args.out, force=args.force)
        print(f"wrote {args.out}: r = {cfg['r']}, lora_alpha = {cfg['lora_alpha']}, {len(res.modules)} modules")
    if args.json_path:
        recs = fr.drop(columns=["seconds"]).to_dict(orient="records")  # no timings: reruns write the same bytes
        for rec in recs:
            g = res.long[res.long["name"] == rec["name"]]
            rec["sigma"] = g["sigma"].tolist()
            rec["energy"] = g["energy"].tolist()
        head = provenance("finetune", inputs={"base": args.base, "finetuned": args.finetuned, "out": args.out},
                          settings={"rank": args.rank, "spectrum": args.spectrum, "modules": args.modules,
                                    "layers": args.layers, "lora_alpha": args.lora_alpha,
                                    "fan_in_fan_out": args.fan_in_fan_out, "seed": args.seed,
                                    "n_iter": args.n_iter, "oversample": args.oversample,
                                    **({"tolerance": args.tolerance} if args.tolerance is not None else {})})
        write_json(args.json_path, {**head, "skipped": res.skipped, "modules": recs}, force=args.force)
    if args.csv_path:
        write_csv(fr, args.csv_path, force=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)

