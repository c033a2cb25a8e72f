"""``python -m analysis.collection ADAPTER...``: N × N similarity and cosine matrices of a collection."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from analysis.cli.common import Parser, check_outputs, provenance, run, write_csv, write_json
from analysis.errors import InputError
from analysis.io.outputs import atomic_output
from analysis.plotting.collection import short_labels
from analysis.plotting.composite import collection_figure, trajectory_figure
from analysis.sweeps.collection import COLLECTION_SIDES, collection_similarity
from analysis.sweeps.trajectory import checkpoint_steps, trajectory

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["main", "build_parser", "expand_sources"]

_EPILOG = """\
what it computes (every pair, every module both adapters have, exact from the LoRA factors):
  similarity  phi(k, k) between the top-k singular directions of the two updates on
              --side (k capped by both ranks), and its mean over the shared modules
  cosine      <dWa, dWb>_F / (||dWa|| ||dWb||) = tr((Ba^T Bb)(Ab Aa^T)) scaled (no d_out x d_in
              product), per module and pooled: sum of inner products over the square root
              of the product of the summed squared norms
  random directions give phi(1, 1) ~ 1/d and cosines ~ 0 +- 1/sqrt(d_out d_in).

execution:
  Dask tasks (one per adapter to read its module shapes, one to summarise it, one per block of
  adapter pairs and group of modules); locally by default, on a running Dask cluster with --scheduler ADDRESS
  (workers must see the paths: a shared filesystem, or fsspec URLs such as s3://...).

a folder holding checkpoint-N subfolders (one training run) stands for all of them, in step order.

inputs that are no adapter (a README.md or manifest.json caught by a glob, a folder with no checkpoint)
are skipped with a one-line note on stderr, before any work; an adapter that cannot be read stops the
command at once (exit 2, one line naming it).

adapters of several base models in one call (a folder of adapters for different bases): each
adapter's module names and shapes are read first (PEFT safetensors: the header only) and the
adapters are grouped into models (those sharing modules, all of equal shapes, belong together;
partial overlaps join when no shared module contradicts). Each model's adapters are compared among
themselves; pairs across models are never compared (null in --json, '-' in the tables), and a note
on stderr names the models and why they differ. --json has "groups" (the models) and "not_compared"
(per pair of models: different shapes, with the module and both shapes, or no module in common).
--one-model refuses adapters whose shared modules differ in shape instead (exit 2). Shapes are the
only evidence: two bases of one architecture and size cannot be told apart.

examples:
  python -m analysis.collection checkpoints/*_r8_seed? checkpoints/r8_seed? --json sim.json --out figs
  python -m analysis.collection A B C --k 4 --side output --scheduler tcp://10.0.0.5:8786
"""


def build_parser() -> Parser:
    p = Parser("analysis.collection",
               description="Similarity (phi(k, k) of the top-k singular directions) and Frobenius cosine of "
                           "every pair of adapters in a collection, per module and over all modules.",
               epilog=_EPILOG)
    p.add_argument("adapters", nargs="+", metavar="ADAPTER",
                   help="two or more adapters (PEFT folders or files, loralib, kohya; fsspec URLs), or folders "
                        "of checkpoint-N subfolders; adapters of several base models are compared model by model")
    p.add_argument("--k", type=int, default=1, help="top-k singular directions compared (default 1)")
    p.add_argument("--side", choices=COLLECTION_SIDES, default="input",
                   help="input / output: right / left singular vectors of dW; A / B: the paper's bases "
                        "(default input)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="address of a running Dask scheduler (default: run locally, no cluster)")
    p.add_argument("--tile", type=int, default=None, metavar="T",
                   help="adapters per block task (default min(N, 64)); it sets the order of the sums, so results "
                        "differ in the last bits (~1e-15) with it: recorded in --json's settings")
    p.add_alpha(needed="Needed for the cosine.")
    p.add_filters()
    p.add_force()
    p.add_argument("--json", dest="json_path", metavar="FILE",
                   help="write {adapters, similarity, cosine, modules: {name: {similarity, cosine}}, groups, "
                        "not_compared, skipped} (null: not compared)")
    p.add_argument("--csv", dest="csv_path", metavar="FILE", help="write the tidy per-pair, per-module table")
    p.add_argument("--out", metavar="DIR", help="folder for the figures (matrices, seriated, with the spread "
                                                "over modules)")
    p.add_argument("--no-modules", action="store_true",
                   help="keep only the pooled matrices (for very large collections)")
    p.add_argument("--one-model", action="store_true",
                   help="refuse adapters of several base models (shared module names with different shapes) "
                        "with exit 2, instead of comparing each model's adapters apart")
    return p


def expand_sources(paths: Iterable[str | os.PathLike[str]], *,
                   runs: dict[str, list[tuple[int, str]]] | None = None) -> list[str]:
    """Each path as is, except a folder of ``checkpoint-N`` subfolders: those, in step order.

    ``runs``, a dict, receives ``{folder: [(step, path), …]}`` for every such folder.
    """
    out = []
    for p in paths:
        s = str(p)
        if "://" not in s and os.path.isdir(s) and not os.path.exists(os.path.join(s, "adapter_config.json")):
            steps = checkpoint_steps(s, strict=False)
            if steps:
                out += [path for _, path in steps]
                if runs is not None:
                    runs[s] = steps
                continue
        out.append(s)
    return out


def _print_trajectory(run, tr, out):
    fr, pf = tr.frame, tr.present_from
    steps = sorted(fr["step"].unique())
    first = fr[fr["step"] == steps[0]]
    print(f"run {run}: {len(steps)} checkpoints (steps {steps[0]}-{steps[-1]}); top direction of the final "
          f"update present (phi(1,1) above random + {tr.n_std:g} sd) from step "
          f"{pf['step'].median():g} (median over {len(pf)} modules, latest {pf['step'].max():g}); at the first "
          f"checkpoint: drift from the final {first['drift_final'].median():.3f}, norm "
          f"{first['norm_growth'].median():.2f} of the final (medians)", file=out)


def _cell(value, shared, fmt):
    """A matrix cell: the number, ``-`` for a pair with no module compared (no module in common, or
    adapters of different models), ``zero`` where the updates compared are zero."""
    if np.isfinite(value):
        return fmt.format(value)
    return "     -" if shared == 0 else "  zero"


def _print(res, out):
    n = len(res.labels)
    labels = short_labels(res.labels)
    print(f"{n} adapters, {len(res.module_names)} modules; phi(k, k) with k = {res.k} on side {res.side}",
          file=out)
    order = res.order()
    if n <= 24:
        w = max(len(x) for x in labels)
        for title, M, fmt in (("similarity (mean phi over shared modules)", res.similarity, "{:6.2f}"),
                              ("cosine (pooled over shared modules)", res.cosine, "{:6.2f}")):
            print(f"{title}, rows in clustered order:", file=out)
            for i in order:
                cells = " ".join(_cell(M[i, j], res.shared[i, j], fmt) for j in order)
                print(f"  {labels[i]:>{w}} {cells}", file=out)
    iu = np.triu_indices(n, 1)
    for title, M in (("similarity", res.similarity), ("cosine", res.cosine)):
        v = M[iu]
        v = v[np.isfinite(v)]
        if v.size:
            j = int(np.nanargmax(np.where(np.isfinite(M[iu]), M[iu], -np.inf)))
            print(f"{title} off the diagonal: median {np.median(v):.3f}, range {v.min():.3f} to {v.max():.3f}; "
                  f"most similar pair {labels[iu[0][j]]} / {labels[iu[1][j]]}", file=out)
    if res.zero:
        print(f"zero updates ({len(res.zero)}, no similarity): "
              + ", ".join(f"{a}:{m}" for a, m in res.zero[:6]) + (" …" if len(res.zero) > 6 else ""), file=out)
    if res.only_some:
        names = list(res.only_some)
        print(f"modules not in every adapter ({len(names)}, compared where present): {', '.join(names[:6])}"
              + (" …" if len(names) > 6 else ""), file=out)
    if len(res.groups) > 1:
        print(f"{len(res.groups)} models: " + ", ".join(f"{g.name} = {', '.join(labels[i] for i in g.members[:4])}"
                                                         + (" …" if len(g.members) > 4 else "")
                                                         for g in res.groups)
              + "; pairs across models not compared ('-')", file=out)


def write_figures(res, out, *, force, trajectories=None):
    """``similarity.png`` and ``cosine.png`` in ``out`` (whole or not at all): the seriated matrix and its
    spread over modules side by side; ``trajectory_<run>.png`` for each run in ``trajectories``."""
    with atomic_output(out, force=force, folder=True, option="--out") as tmp:
        for kind in ("similarity", "cosine"):
            collection_figure(res, kind).savefig(os.path.join(tmp, f"{kind}.png"), dpi=120)
        for folder, tr in (trajectories or {}).items():
            trajectory_figure(folder, tr).savefig(
                os.path.join(tmp, f"trajectory_{os.path.basename(os.path.normpath(folder))}.png"), dpi=120)


def _note(line):
    """A note on stderr, at once (before the heavy work it precedes)."""
    print(f"note: {line}", file=sys.stderr, flush=True)


def _body(args):
    if args.k < 1:
        raise InputError(f"--k must be a positive integer, got {args.k}")
    if args.tile is not None and args.tile < 1:
        raise InputError(f"--tile must be a positive integer, got {args.tile}")
    check_outputs(args, "json_path", "csv_path", "out")
    runs = {}
    srcs = expand_sources(args.adapters, runs=runs)
    if len(srcs) < 2:
        raise InputError(f"expected at least two adapters, got {len(srcs)}: {', '.join(srcs)}")
    res = collection_similarity(srcs, k=args.k, side=args.side, alpha=args.alpha, modules=args.modules,
                                layers=args.layers, client=args.scheduler, tile=args.tile,
                                keep_modules=not args.no_modules, not_adapters="skip",
                                mixed_models="error" if args.one_model else "split", notes=_note)
    _print(res, sys.stdout)
    trajs = {}
    for folder, steps in runs.items():
        if len(steps) >= 2:
            trajs[folder] = trajectory(steps, k=args.k, side=args.side, alpha=args.alpha, modules=args.modules,
                                    layers=args.layers, client=args.scheduler)
            _print_trajectory(folder, trajs[folder], sys.stdout)
    if args.json_path:
        # every setting that changes a number: the tile changes the order of the sums (results at ~1e-15)
        tile = args.tile if args.tile is not None else min(len(res.labels), 64)
        head = provenance("collection", inputs={"adapters": list(args.adapters)},
                          settings={"k": args.k, "side": args.side, "alpha": args.alpha, "modules": args.modules,
                                    "layers": args.layers, "one_model": args.one_model, "tile": tile,
                                    "keep_modules": not args.no_modules})
        body = {**head, **res.to_dict()}
        if trajs:
            body["trajectories"] = {folder: tr.to_dict() for folder, tr in trajs.items()}
        write_json(args.json_path, body, force=args.force)
    if args.csv_path:
        write_csv(res.to_frame(), args.csv_path, force=args.force)
    if args.out:
        write_figures(res, args.out, force=args.force, trajectories=trajs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)
