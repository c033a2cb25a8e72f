"""``python -m analysis.resize ADAPTER… (--rank K | --energy E | --pattern FILE | --sv-fro F | … | --size MB)``:
exact rank reduction, kohya's dynamic criteria, a size budget, layer weights, DoRA → LoRA (``--out DIR``)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from analysis.cli.common import (Column, Parser, Table, base_path, check_outputs, layer_str, provenance, run,
                                 wants_progress, write_json)
from analysis.errors import InputError
from analysis.io import load_adapter
from analysis.io.outputs import atomic_output

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["main", "build_parser", "expand_sources"]

_EPILOG = """\
what it does:
  For every module, dW = U S V^T is known exactly from the LoRA factors. The new
  adapter holds the best rank-k approximation U_k S_k V_k^T (Eckart-Young), as
  lora_B = U_k sqrt(S_k / s), lora_A = sqrt(S_k / s) V_k^T with PEFT's scale
  s = lora_alpha / k, so PEFT (merge_and_unload, or inference) reproduces it.
  Ranks that differ between modules go into the config's rank_pattern. A kohya /
  LyCORIS source is written back as a kohya file with alpha = scale * k per module
  (its scale kept, as sd-scripts' resize_lora.py does).

which k (one of these; none keeps every rank, with --layer-weights or a DoRA --base):
  --rank K            the top K directions everywhere
  --energy E          per module, the smallest k keeping a share E of ||dW||_F^2
  --pattern FILE      per-module ranks (rank's --json, an adapter_config.json, {pattern: rank})
  --sv-ratio R        kohya's sv_ratio: k = #{s_i > s_1 / R} + 1
  --sv-fro F          kohya's sv_fro: k = (first i with cumsum(s^2)/sum(s^2) >= F^2) + 2
  --sv-cumulative C   kohya's sv_cumulative: k = (first i with cumsum(s)/sum(s) >= C) + 2
                      (sd-scripts' networks/resize_lora.py --dynamic_method/--dynamic_param, exactly: its
                      spectrum is that of lora_up @ lora_down, its count is clamped to [1, min(d_out, d_in) - 1]
                      and one is added; 1 for a zero update; capped at --max-rank, which is its --new_rank,
                      default here each module's rank r, default there 4. ss_network_dim / ss_network_alpha
                      are written "Dynamic", as there)
  --size MB           the weights file fits MB (10^6 bytes): every module keeps one direction, then the
                      direction with the most ||dW||^2 per byte is added, globally, until the next does not fit

--layer-weights SPEC multiplies each module's update by a weight (through lora_B; lora_A and alpha unchanged;
weight 0 leaves the module out): a list with one weight per layer ("1,1,0.5,..."; for kohya SD files 12/17/20/26
values are sd-scripts' block weights BASE, IN.., MID, OUT..), a map ("10-19=0.5,decoder:3=0,attention=1.2,*=1":
layer or range, stack:layer, stack, role, block name, *), or a preset (first-half, second-half, ramp-up,
ramp-down, attention-only, mlp-only, unet-only, text-encoder-only).

DoRA with --base: each module's effective update W' - W = m (W + s B A) / ||W + s B A||_row - W is formed
densely (one module at a time) and its best rank-k approximation written as a plain LoRA (default k: the
module's r); energy is the share of ||W' - W||^2 kept. Without --base a DoRA adapter cannot be written.

several adapters (several ADAPTER arguments, or a folder of adapters: PEFT subfolders, .safetensors / .pt
files): --out is a folder; each result is written under the source's name.

columns:
  r        stored rank of the source      k         rank kept (<= numerical rank, but see kohya's + 1)
  energy   share of ||dW||_F^2 kept       rel_err   ||dW - dW_k||_F / ||dW||_F
  tied     the cut falls inside near-equal singular values (truncation not unique)

examples:
  python -m analysis.resize checkpoints/r64_seed0 --rank 8 --out r64_to_r8
  python -m analysis.resize checkpoints/r64_seed0 --energy 0.9 --out r64_e90 --json kept.json
  python -m analysis.resize checkpoints/r64_seed0 --pattern advice.json --out r64_advised
  python -m analysis.resize style.safetensors --sv-fro 0.9 --max-rank 32 --out style_fro90.safetensors
  python -m analysis.resize loras/ --size 20 --out loras_20MB
  python -m analysis.resize checkpoints/r8_seed0 --layer-weights second-half --out r8_late
  python -m analysis.resize dora_adapter --base base_model --rank 16 --out as_lora
"""


def build_parser() -> Parser:
    p = Parser("analysis.resize",
               description="Reduce the rank of LoRA adapters exactly (best rank-k approximation of every "
                           "module's update, from its factored SVD; ranks by a rank, an energy, kohya's criteria or "
                           "a file size), apply layer weights, turn DoRA into LoRA, and save in the source's format.",
               epilog=_EPILOG)
    p.add_argument("adapters", nargs="+", metavar="ADAPTER",
                   help="source adapter(s): PEFT folder or file, loralib .pt/.bin, kohya / LyCORIS .safetensors "
                        "(written back as a kohya .safetensors file: then --out names that file), or a folder of "
                        "adapters")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--rank", type=int, metavar="K", help="keep the top K directions of every module")
    how.add_argument("--energy", type=float, metavar="E",
                     help="per module, the smallest rank keeping a fraction E (0 < E <= 1) of ||dW||_F^2")
    how.add_argument("--pattern", metavar="FILE",
                     help="per-module ranks from JSON: the --json output of 'python -m analysis.rank', an "
                          "adapter_config.json-like {r, rank_pattern}, or a flat {pattern: rank}; modules "
                          "not covered keep their rank")
    how.add_argument("--sv-ratio", type=float, metavar="R", help="kohya's sv_ratio (see below)")
    how.add_argument("--sv-fro", type=float, metavar="F", help="kohya's sv_fro (see below)")
    how.add_argument("--sv-cumulative", type=float, metavar="C", help="kohya's sv_cumulative (see below)")
    how.add_argument("--size", type=float, metavar="MB", help="the weights file fits MB megabytes (10^6 bytes)")
    p.add_argument("--max-rank", type=int, metavar="K", default=None,
                   help="cap of --sv-* and --size (kohya's --new_rank; default: each module's rank)")
    p.add_argument("--layer-weights", metavar="SPEC", default=None,
                   help="multiply each module's update by a weight (list, key=weight map or preset; see below)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the new PEFT adapter (a .safetensors file for a kohya source; a folder for "
                        "several adapters)")
    p.add_force()
    p.add_jobs()
    p.add_progress()
    p.add_argument("--alpha", type=float, default=None,
                   help="scale numerator of the SOURCE when its format does not store it (loralib)")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="lora_alpha written to the new config (default: the source's lora_alpha, else "
                        "the most common new rank); the factors absorb the scale either way")
    p.add_base("For a DoRA source (written as a plain LoRA of W' - W), and for a kohya / LyCORIS source whose "
               "LoHa / LoKr modules store flattened factors (to write conv layers with their kernel).")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the per-module table as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    return p


def _is_adapter_file(name):
    return name.endswith((".safetensors", ".pt", ".bin", ".pth"))


def expand_sources(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The adapters named: each path, or the adapters inside a folder that is not itself one.

    Returns
    -------
    list of str
    """
    out = []
    for p in paths:
        p = str(p)
        if os.path.isdir(p) and not any(os.path.exists(os.path.join(p, f)) for f in (
                "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")):
            inner = sorted(os.path.join(p, e) for e in os.listdir(p)
                           if os.path.isfile(os.path.join(p, e, "adapter_config.json"))
                           or (os.path.isfile(os.path.join(p, e)) and _is_adapter_file(e)))
            if len(inner) > 1 or (inner and _is_adapter_file(inner[0])):
                out.extend(inner)
                continue
        out.append(p)
    return out


def _target(out, src, ad, folder):
    """Where one result goes: ``out`` itself, or ``folder/<the source's name>`` for several adapters."""
    if folder is None:
        return out
    name = os.path.basename(os.path.normpath(src))
    if ad.format == "kohya" and not name.endswith(".safetensors"):
        name = os.path.splitext(name)[0] + ".safetensors"
    return os.path.join(folder, name)


def _criterion(args):
    return dict(rank=args.rank, energy=args.energy, pattern=args.pattern, sv_ratio=args.sv_ratio,
                sv_fro=args.sv_fro, sv_cumulative=args.sv_cumulative, size=args.size)


def _one(args, src, folder):
    from analysis.sweeps.resize import resize_adapter  # local: its readers and writers, +27 ms on --help

    ad = load_adapter(src, alpha=args.alpha)
    out = _target(args.out, src, ad, folder)
    dora = any(lr.meta.get("dora") for lr in ad.values())
    res = resize_adapter(ad, **_criterion(args), max_rank=args.max_rank, layer_weights=args.layer_weights,
                         base=base_path(args) if dora else None, alpha=args.lora_alpha, progress=wants_progress(args),
                         jobs=args.jobs)
    cfg = res.write(out, force=args.force, base=base_path(args))
    return ad, res, cfg, out


def _bytes(res, cfg):
    """The weights file's size (the command puts its outputs in place when it ends: not read from disk)."""
    return cfg["bytes"] if cfg.get("format") == "kohya" else res.peft_bytes()


def _report(ad, res, cfg, out_path, args, stream):
    fr = res.frame
    if not args.quiet:
        print(f"source: {ad.path} ({ad.format}, {len(ad)} modules); ranks: {res.criterion}", file=stream)
        for note in (*ad.notes, *res.notes):
            print(f"note: {note}", file=stream)
        table = Table(Column("layer", 5), Column("module", 24, "<", cut=True), Column("r", 4), Column("k", 4),
                      Column("energy", 8, fmt=".4f"), Column("rel_err", 8, fmt=".4f"), Column("tied", 5), file=stream)
        table.header()
        for row in fr.to_dict(orient="records"):
            table.row(layer_str(row["layer"]), row["module"], row["r"], row["k"], row["energy"], row["rel_error"],
                      "yes" if row["cut_tied"] else "")
    params_old = int(sum(lr.r * sum(lr.shape) for lr in ad.values()))
    params_new = int(sum(lr.r * sum(lr.shape) for lr in res.modules.values()))
    tot = float((fr["fro"] ** 2).sum())
    overall = float((fr["fro_kept"] ** 2).sum()) / tot if tot > 0 else 1.0
    what = (f"kohya file, r = {cfg['r']}, {len(cfg['rank_pattern'])} modules of another rank, alpha per module"
            if cfg.get("format") == "kohya" else
            f"r = {cfg['r']}, {len(cfg['rank_pattern'])} rank_pattern entries, lora_alpha = {cfg['lora_alpha']}")
    size = _bytes(res, cfg)
    print(f"wrote {out_path}: {what}; parameters {params_old} -> {params_new}"
          + (f"; {size / 1e6:.3f} MB" if size is not None else "")
          + f"; energy kept: min {fr['energy'].min():.4f}, median {fr['energy'].median():.4f}, overall "
          f"{overall:.4f}", file=stream)
    return {"adapter": str(ad.path), "out": str(out_path), "criterion": res.criterion, "lora_alpha": res.alpha,
            "r": cfg["r"], "rank_pattern": cfg["rank_pattern"], "energy_overall": overall, "bytes": size,
            "dropped": list(res.dropped), "modules": fr.to_dict(orient="records")}


def _body(args):
    check_outputs(args, "out", "json_path")
    if args.rank is not None and args.rank < 1:
        raise InputError(f"--rank must be a positive integer, got {args.rank}")
    if args.energy is not None and not 0 < args.energy <= 1:
        raise InputError(f"--energy must be in (0, 1], got {args.energy}")
    if args.max_rank is not None and args.max_rank < 1:
        raise InputError(f"--max-rank must be a positive integer, got {args.max_rank}")
    if all(v is None for v in _criterion(args).values()) and args.layer_weights is None and args.base is None:
        raise InputError("expected one of --rank, --energy, --pattern, --sv-ratio, --sv-fro, --sv-cumulative, "
                         "--size (or --layer-weights alone, or --base for a DoRA adapter)")
    sources = expand_sources(args.adapters)
    several = len(sources) > 1
    records = []
    if several:  # one folder holding every result, whole or not at all
        with atomic_output(args.out, force=args.force, folder=True, option="--out") as tmp:
            for src in sources:
                ad, res, cfg, out = _one(args, src, tmp)
                shown = os.path.join(args.out, os.path.relpath(out, tmp))
                records.append(_report(ad, res, cfg, shown, args, sys.stdout))
    else:
        ad, res, cfg, out = _one(args, sources[0], None)
        records.append(_report(ad, res, cfg, out, args, sys.stdout))
    if args.json_path:
        given = {"adapter": args.adapters[0]} if len(args.adapters) == 1 else {"adapters": list(args.adapters)}
        head = provenance("resize", inputs={**given, "out": args.out, "base": args.base},
                          settings={"rank": args.rank, "energy": args.energy, "pattern": args.pattern,
                                    "sv_ratio": args.sv_ratio, "sv_fro": args.sv_fro,
                                    "sv_cumulative": args.sv_cumulative, "size_mb": args.size,
                                    "max_rank": args.max_rank, "layer_weights": args.layer_weights,
                                    "alpha": args.alpha, "lora_alpha": args.lora_alpha})
        body = {k: v for k, v in records[0].items() if k not in ("adapter", "out")} if not several else \
            {"results": records}
        write_json(args.json_path, {**head, **body}, force=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)
