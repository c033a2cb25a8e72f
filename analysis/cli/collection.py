"""``python -m analysis.collection ADAPTER...``: N × N similarity and cosine matrices of a collection."""

from __future__ import annotations

import os
import sys

from analysis.cli.common import Parser, check_outputs, provenance, run, write_csv, write_json

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
  Dask tasks (one per adapter to read and summarise it, one per block of adapter pairs and
  group of modules); locally by default, on a running Dask cluster with --scheduler ADDRESS
  (workers must see the paths: a shared filesystem, or fsspec URLs such as s3://...).

a folder holding checkpoint-N subfolders (one training run) stands for all of them, in step order.

examples:
  python -m analysis.collection checkpoints/*_r8_seed? checkpoints/r8_seed? --json sim.json --out figs
  python -m analysis.collection A B C --k 4 --side output --scheduler tcp://10.0.0.5:8786
"""


def build_parser():
    from analysis.sweeps.collection import COLLECTION_SIDES

    p = Parser("analysis.collection",
               description="Similarity (phi(k, k) of the top-k singular directions) and Frobenius cosine of "
                           "every pair of adapters in a collection, per module and over all modules.",
               epilog=_EPILOG)
    p.add_argument("adapters", nargs="+", metavar="ADAPTER",
                   help="two or more adapters of one base model (PEFT folders or files, loralib, kohya; "
                        "fsspec URLs), or folders of checkpoint-N subfolders")
    p.add_argument("--k", type=int, default=1, help="top-k singular directions compared (default 1)")
    p.add_argument("--side", choices=COLLECTION_SIDES, default="input",
                   help="input / output: right / left singular vectors of dW; A / B: the paper's bases "
                        "(default input)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="address of a running Dask scheduler (default: run locally, no cluster)")
    p.add_argument("--tile", type=int, default=None, metavar="T",
                   help="adapters per block task (default min(N, 64))")
    p.add_alpha(needed="Needed for the cosine.")
    p.add_filters()
    p.add_force()
    p.add_argument("--json", dest="json_path", metavar="FILE",
                   help="write {adapters, similarity, cosine, modules: {name: {similarity, cosine}}}")
    p.add_argument("--csv", dest="csv_path", metavar="FILE", help="write the tidy per-pair, per-module table")
    p.add_argument("--out", metavar="DIR", help="folder for the figures (matrices, seriated, with the spread "
                                                "over modules)")
    p.add_argument("--no-modules", action="store_true",
                   help="keep only the pooled matrices (for very large collections)")
    return p


def expand_sources(paths, *, runs=None):
    """Each path as is, except a folder of ``checkpoint-N`` subfolders: those, in step order.

    ``runs``, a dict, receives ``{folder: [(step, path), …]}`` for every such folder.
    """
    from analysis.sweeps.trajectory import checkpoint_steps

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


def _print(res, out):
    import numpy as np

    from analysis.plotting.collection import short_labels

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
                cells = " ".join("  zero" if not np.isfinite(M[i, j]) else fmt.format(M[i, j]) for j in order)
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


def write_figures(res, out, *, force, trajectories=None):
    """``similarity.png`` and ``cosine.png`` in ``out`` (whole or not at all): the seriated matrix and its
    spread over modules side by side; ``trajectory_<run>.png`` for each run in ``trajectories``."""
    from matplotlib.figure import Figure

    from analysis.io.outputs import atomic_output
    from analysis.plotting.collection import plot_collection_matrix, short_labels

    n = len(res.labels)
    size = min(6.0, 2.5 + 0.18 * n)
    with atomic_output(out, force=force, folder=True) as tmp:
        for kind in ("similarity", "cosine"):
            fig = Figure(figsize=(2 * size + 1.5, size), layout="constrained")
            axes = fig.subplots(1, 2)
            order = res.order(kind)
            plot_collection_matrix(res, kind=kind, order=order, ax=axes[0],
                                   title=("φ(k, k), k = %d, side %s: mean over modules" % (res.k, res.side))
                                   if kind == "similarity" else "Frobenius cosine, pooled over modules")
            if res.module_similarity is not None:
                plot_collection_matrix(res.spread(kind), labels=short_labels(res.labels), order=order,
                                       kind="spread", ax=axes[1], title=f"{kind}: sd over modules")
                axes[1].set_yticklabels([])
            else:
                axes[1].set_axis_off()
            fig.savefig(os.path.join(tmp, f"{kind}.png"), dpi=120)
        for folder, tr in (trajectories or {}).items():
            _trajectory_figure(folder, tr).savefig(
                os.path.join(tmp, f"trajectory_{os.path.basename(os.path.normpath(folder))}.png"), dpi=120)


def _trajectory_figure(run, tr):
    from matplotlib.figure import Figure

    from analysis.plotting.collection import plot_trajectory
    from analysis.sweeps.trajectory import phi11_null

    fig = Figure(figsize=(13, 3.4), layout="constrained")
    axes = fig.subplots(1, 4)
    d = int(tr.present_from["d"].min())
    for ax, y, title, null in ((axes[0], "drift_final", f"drift of the top-{tr.k} subspace from the final", None),
                               (axes[1], "phi_final", "φ(1, 1) with the final top direction",
                                phi11_null(d, n_std=tr.n_std)[2]),
                               (axes[2], "norm_growth", "‖ΔW‖ / final ‖ΔW‖", None),
                               (axes[3], "effective_rank", "effective rank", None)):
        plot_trajectory(tr.frame, y=y, ax=ax, null=null, title=title, legend=ax is axes[0])
    fig.suptitle(f"{run}: median over layers, inter-quartile band", fontsize="medium")
    return fig


def _body(args):
    from analysis.sweeps.collection import collection_similarity

    if args.k < 1:
        raise ValueError(f"--k must be a positive integer, got {args.k}")
    check_outputs(args, "json_path", "csv_path", "out")
    runs = {}
    srcs = expand_sources(args.adapters, runs=runs)
    if len(srcs) < 2:
        raise ValueError(f"expected at least two adapters, got {len(srcs)}: {', '.join(srcs)}")
    res = collection_similarity(srcs, k=args.k, side=args.side, alpha=args.alpha, modules=args.modules,
                                layers=args.layers, client=args.scheduler, tile=args.tile,
                                keep_modules=not args.no_modules)
    _print(res, sys.stdout)
    trajs = {}
    for folder, steps in runs.items():
        if len(steps) >= 2:
            from analysis.sweeps.trajectory import trajectory

            trajs[folder] = trajectory(steps, k=args.k, side=args.side, alpha=args.alpha, modules=args.modules,
                                    layers=args.layers, client=args.scheduler)
            _print_trajectory(folder, trajs[folder], sys.stdout)
    if args.json_path:
        head = provenance("collection", inputs={"adapters": list(args.adapters)},
                          settings={"k": args.k, "side": args.side, "alpha": args.alpha, "modules": args.modules,
                                    "layers": args.layers})
        body = {**head, **res.to_dict()}
        if trajs:
            body["trajectories"] = {folder: tr.to_dict() for folder, tr in trajs.items()}
        write_json(args.json_path, body, force=args.force)
    if args.csv_path:
        write_csv(res.to_frame(), args.csv_path, force=args.force)
    if args.out:
        write_figures(res, args.out, force=args.force, trajectories=trajs)


def main(argv=None):
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run(_body, args)
