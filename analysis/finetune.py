"""Low-rank view of a full fine-tune: W_ft − W₀ per module, by seeded randomized SVD.

Both models are read lazily (:func:`analysis.io.base.open_base`: HF folder,
sharded folder, single ``.safetensors``, GGUF for the base), one module at a
time: at most one base and one fine-tuned tensor are in memory. For each 2-D
weight present in both, ΔW = W_ft − W₀ (float64), its top singular values by
:func:`analysis.core.randomized_svd` (fixed seed), ‖ΔW‖_F exactly, and the
energy captured by rank k, Σ_{i≤k} σ_i² / ‖ΔW‖_F². The rank-k truncations can
be saved as a PEFT adapter (the writer of ``python -m analysis.resize``).

Command line::

    python -m analysis.finetune BASE FT --rank K --out DIR [--modules REGEX ...]
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from analysis._cli import Parser, layer_str, run, write_json
from analysis.adapter import split_name
from analysis.core.randomized import randomized_svd
from analysis.errors import AdapterError

__all__ = ["FinetuneDeltas", "finetune_deltas", "is_embedding_name", "main", "build_parser"]

_EMBED_RE = re.compile(r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|position_embeddings|"
                       r"token_type_embeddings|embed_in|embed_positions)$")


def is_embedding_name(name):
    """True for module names of embedding tables (exported as PEFT embedding LoRA).

    >>> is_embedding_name("model.embed_tokens"), is_embedding_name("lm_head")
    (True, False)
    """
    return _EMBED_RE.search(name) is not None


@dataclass(frozen=True)
class FinetuneDeltas:
    """Spectra of W_ft − W₀ per module and their rank-k truncations.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, d_out, d_in, k, fro,
        sigma1, energy_k, rel_error_k, zero, seconds`` (``energy_k``: share
        of ‖ΔW‖_F² captured by the exported rank k).
    long : pandas.DataFrame
        One row per (module, i): ``name, layer, module, i, sigma, energy``
        for the computed spectrum (``energy`` cumulative, exact denominator).
    modules : dict[str, LowRank]
        Rank-k truncations (identical modules are left out).
    rank : int
    alpha : float
        ``lora_alpha`` for export (scale α / k per module).
    base_path, ft_path : str
    skipped : dict[str, str]
        Modules not analysed and why (only in one model, not 2-D).
    """

    frame: object
    long: object
    modules: dict
    rank: int
    alpha: float
    base_path: str = ""
    ft_path: str = ""
    skipped: dict = field(default_factory=dict)

    def to_frame(self):
        """The per-module table (a copy)."""
        return self.frame.copy()

    def write(self, out, *, overwrite=False):
        """Save the truncations as a PEFT adapter folder; returns the config."""
        from analysis.io.peft_writer import write_peft_adapter

        if not self.modules:
            raise AdapterError("no module differs between the two models: nothing to export", path=self.ft_path)
        return write_peft_adapter(out, self.modules, lora_alpha=self.alpha, overwrite=overwrite,
                                  base_model_name_or_path=self.base_path)


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def finetune_deltas(base, finetuned, *, rank, spectrum=None, modules=None, layers=None, alpha=None,
                    fan_in_fan_out=False, oversample=10, n_iter=4, seed=0, progress=False):
    """Randomized low-rank view of every module's fine-tuning update.

    Parameters
    ----------
    base, finetuned : str or os.PathLike
        Model folders / files readable by :func:`analysis.io.base.open_base`.
    rank : int
        Rank k of the truncation (clipped to min(d_out, d_in) per module).
    spectrum : int, optional
        Number of singular values to compute (≥ rank); default ``rank``.
    modules : sequence of str, optional
        Keep names matching any of these regular expressions (``re.search``).
    layers : set of int or str, optional
        Keep these layers (see :func:`analysis.sweep.parse_layers`).
    alpha : float, optional
        ``lora_alpha`` of the export; default ``rank`` (scale 1 at rank k).
    fan_in_fan_out : bool
        The weights are stored (d_in, d_out) (GPT-2 Conv1D): ΔW is transposed
        into the nn.Linear orientation and the export says fan_in_fan_out.
    oversample, n_iter, seed
        Of :func:`analysis.core.randomized_svd`.
    progress : bool
        Progress bar on standard error.

    Returns
    -------
    FinetuneDeltas
    """
    import pandas as pd

    from analysis.io.base import open_base
    from analysis.surgery import from_svd
    from analysis.sweep import select_modules

    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    spectrum = int(rank) if spectrum is None else int(spectrum)
    if spectrum < rank:
        raise ValueError(f"spectrum ({spectrum}) must be >= rank ({rank})")
    alpha = float(rank if alpha is None else alpha)
    rows, longs, out, skipped = [], [], {}, {}
    with open_base(base) as b0, open_base(finetuned) as b1:
        n0, n1 = set(b0.names()), set(b1.names())
        mats = set(b0.names(matrices_only=True)) & set(b1.names(matrices_only=True))
        for n in sorted(n0 ^ n1, key=_natural_key):
            skipped[n] = "only in the base" if n in n0 else "only in the fine-tuned model"
        names = select_modules(sorted(mats, key=_natural_key), modules=modules, layers=layers)
        it = b0.weights(names)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(names), desc="modules", unit="mod", leave=False)
        for name, W0 in it:
            t0 = time.perf_counter()
            W1 = b1.weight(name)
            if W1.shape != W0.shape:
                raise AdapterError(f"expected shape {W0.shape} as in the base, got {W1.shape}",
                                   path=b1.path, key=name + ".weight")
            D = W1.astype(np.float64) - W0  # (d_out, d_in), or (d_in, d_out) stored for Conv1D
            stored = W0.shape
            del W0, W1
            if fan_in_fan_out:
                D = D.T  # (d_out, d_in)
            fro = float(np.linalg.norm(D))
            k = min(int(rank), *D.shape)
            ks = min(spectrum, *D.shape)
            layer, module = split_name(name)
            if fro == 0.0:
                S = np.zeros(0)
            else:
                U, S, V = randomized_svd(D, ks, oversample=oversample, n_iter=n_iter, seed=seed)
                kind = "embedding" if is_embedding_name(name) else "linear"
                out[name] = from_svd(U[:, :k], S[:k], V[:, :k], alpha=alpha, name=name, kind=kind,
                                     weight_shape=stored, source=str(finetuned),
                                     meta={"format": "peft", "fan_in_fan_out": bool(fan_in_fan_out)})
            energy = np.cumsum(S * S) / (fro * fro) if fro > 0 else np.zeros(0)  # (ks,)
            e_k = float(energy[k - 1]) if S.size else 1.0
            rows.append({"name": name, "layer": layer, "module": module, "d_out": D.shape[0], "d_in": D.shape[1],
                         "k": k, "fro": fro, "sigma1": float(S[0]) if S.size else 0.0, "energy_k": e_k,
                         "rel_error_k": math.sqrt(max(1.0 - e_k, 0.0)), "zero": fro == 0.0,
                         "seconds": time.perf_counter() - t0})
            del D
            if S.size:
                longs.append(pd.DataFrame({"name": name, "layer": layer, "module": module,
                                           "i": np.arange(1, S.size + 1), "sigma": S, "energy": energy}))
    long = (pd.concat(longs, ignore_index=True) if longs else
            pd.DataFrame(columns=["name", "layer", "module", "i", "sigma", "energy"]))
    return FinetuneDeltas(frame=pd.DataFrame(rows), long=long, modules=out, rank=int(rank), alpha=alpha,
                          base_path=str(base), ft_path=str(finetuned), skipped=skipped)


# ---------------------------------------------------------------------------- command line
_EPILOG = """\
columns:
  k        rank of the truncation          fro      ||W_ft - W0||_F (exact)
  sigma1   top singular value of the update
  energy   share of ||dW||_F^2 captured by the rank-k truncation (exact denominator)
  rel_err  ||dW - dW_k||_F / ||dW||_F = sqrt(1 - energy)

The top singular triplets come from a seeded randomized SVD (subspace iteration,
--n-iter power steps, --oversample extra directions): deterministic for a seed.
Memory: one base and one fine-tuned tensor at a time.

examples:
  python -m analysis.finetune base_model/ finetuned_model/ --rank 16 --out ft_r16 --modules "q_proj|v_proj"
  python -m analysis.finetune base.safetensors ft.safetensors --rank 8 --spectrum 32 --json spectra.json
"""


def build_parser():
    p = Parser(prog="python -m analysis.finetune",
               description="Low-rank view of a full fine-tune: per module, the spectrum of W_ft - W0 by a "
                           "seeded randomized SVD, the energy captured by rank k, and the rank-k truncation "
                           "saved as a PEFT LoRA adapter.", epilog=_EPILOG)
    p.add_argument("base", metavar="BASE", help="base model: HF folder (single or sharded safetensors), a "
                                                ".safetensors file, or a Llama .gguf file")
    p.add_argument("finetuned", metavar="FT", help="fully fine-tuned model, same layout rules as BASE")
    p.add_argument("--rank", type=int, required=True, metavar="K", help="rank of the truncation to report and export")
    p.add_argument("--out", metavar="DIR", help="save the rank-K truncations as a PEFT adapter in DIR")
    p.add_argument("--force", action="store_true", help="overwrite an adapter already in --out")
    p.add_argument("--modules", nargs="+", metavar="REGEX", default=None,
                   help="only weights whose module name matches one of these regular expressions "
                        "(default: every 2-D weight present in both models)")
    p.add_argument("--layers", default=None, metavar="SPEC", help="only these layers, e.g. '0,15,29' or '10-19'")
    p.add_argument("--spectrum", type=int, default=None, metavar="N",
                   help="compute the top N singular values (N >= K; default K) for the long-form output")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="lora_alpha written to the adapter (default K: scale 1); the factors absorb the scale")
    p.add_argument("--fan-in-fan-out", action="store_true",
                   help="weights are stored (d_in, d_out) as GPT-2's Conv1D: transpose, and export with "
                        "fan_in_fan_out = true")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD (default 0)")
    p.add_argument("--n-iter", type=int, default=4, help="power iterations of the randomized SVD (default 4)")
    p.add_argument("--oversample", type=int, default=10, help="extra random directions (default 10)")
    p.add_argument("--json", dest="json_path", metavar="FILE",
                   help="write per-module records, each with its computed spectrum")
    p.add_argument("--csv", dest="csv_path", metavar="FILE", help="write the per-module table as CSV")
    return p


def _body(args):
    if args.rank < 1:
        raise ValueError(f"--rank must be a positive integer, got {args.rank}")
    if args.n_iter < 0 or args.oversample < 0:
        raise ValueError("--n-iter and --oversample must be >= 0")
    res = finetune_deltas(args.base, args.finetuned, rank=args.rank, spectrum=args.spectrum,
                          modules=args.modules, layers=args.layers, alpha=args.lora_alpha,
                          fan_in_fan_out=args.fan_in_fan_out, oversample=args.oversample, n_iter=args.n_iter,
                          seed=args.seed, progress=sys.stderr.isatty())
    fr = res.frame
    if not len(fr):
        raise ValueError(f"{args.finetuned}: no 2-D weight shared with {args.base} (after --modules/--layers)")
    print(f"base: {args.base}\nfine-tuned: {args.finetuned}\n{len(fr)} modules, rank {args.rank}")
    print(f"{'layer':>5} {'module':<28} {'shape':>11} {'fro':>10} {'sigma1':>10} {'energy':>8} {'rel_err':>8}")
    for row in fr.to_dict(orient="records"):
        mod = row["module"] if len(row["module"]) <= 28 else "…" + row["module"][-27:]
        if row["zero"]:
            print(f"{layer_str(row['layer']):>5} {mod:<28} identical in both models (not exported)")
            continue
        shape = f"{row['d_out']}x{row['d_in']}"
        print(f"{layer_str(row['layer']):>5} {mod:<28} {shape:>11} {row['fro']:>10.4g} {row['sigma1']:>10.4g} "
              f"{row['energy_k']:>8.4f} {row['rel_error_k']:>8.4f}")
    live = fr[~fr["zero"]]
    if len(live):
        tot = float((live["fro"] ** 2).sum())
        kept = float((live["energy_k"] * live["fro"] ** 2).sum())
        print(f"energy captured by rank {args.rank}: median {live['energy_k'].median():.4f}, overall "
              f"{kept / tot:.4f}; {fr['seconds'].sum():.2f} s")
    if res.skipped:
        print(f"skipped {len(res.skipped)} weights present in one model only, e.g. {next(iter(res.skipped))}")
    if args.out:
        cfg = res.write(args.out, overwrite=args.force)
        print(f"wrote {args.out}: r = {cfg['r']}, lora_alpha = {cfg['lora_alpha']}, {len(res.modules)} modules")
    if args.json_path:
        recs = fr.to_dict(orient="records")
        for rec in recs:
            g = res.long[res.long["name"] == rec["name"]]
            rec["sigma"] = g["sigma"].tolist()
            rec["energy"] = g["energy"].tolist()
        write_json(args.json_path, {"base": args.base, "finetuned": args.finetuned, "rank": args.rank,
                                    "seed": args.seed, "skipped": res.skipped, "modules": recs})
    if args.csv_path:
        fr.to_csv(args.csv_path, index=False)


def main(argv=None):
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)


if __name__ == "__main__":
    sys.exit(main())
