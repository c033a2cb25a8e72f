"""Measured validation losses of merged task adapters, beside the merge advice.

``python -m analysis.reference.merge_losses``.

For every subset of two or more of the task adapters (11 for four), with weights 1 and 1/n each and the
methods linear, svd and ties (66 merged adapters for four), the merged adapter is written under ``--out-root``
(outside the repository) and its validation loss measured on the tasks of its subset
(:class:`analysis.reference.evaluate.TaskEvaluator`: the training script's loss on the first ``n_val``
validation examples). One row per (merged adapter, task) is appended to ``--table`` as soon as it is measured,
with the task's own adapter's and the base model's losses and the advice statistics of that merge for that task
(:func:`analysis.sweeps.merge_advice.merged_distances`, recomputed from the written adapter: retained g,
foreign f, distance d, the merge's suggested scale c*). Rows ``kind = base`` / ``own`` hold the base's and each
adapter's own losses. The run resumes: rows already in the table are skipped, merged adapters already written
are reused (a partly written last line is dropped).

Example::

    python -m analysis.reference.merge_losses --out-root ../merged --table benchmarks/merge_losses.csv
    python -m analysis.reference.merge_losses --table benchmarks/merge_losses.csv --analyse
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from analysis.io import load_adapter
from analysis.reference.evaluate import TaskEvaluator
from analysis.sweeps.merge import merge_adapters
from analysis.sweeps.merge_advice import advice_vs_losses, merged_distances, suggested_scale

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import pandas as pd

__all__ = ["COLUMNS", "DEFAULT_ADAPTERS", "merge_plan", "read_table", "run", "analyse", "main"]

#: The shipped task adapters (task -> checkpoint folder under ``--checkpoints``).
DEFAULT_ADAPTERS = {"define": "r8_seed0", "word": "word_r8_seed0", "hypernym": "hypernym_r8_seed0",
                    "synonyms": "synonyms_r8_seed0"}
METHODS = ("linear", "svd", "ties")
WEIGHTINGS = ("1", "1/n")
COLUMNS = ("kind", "merge", "subset", "n", "weighting", "weight", "method", "density", "task", "loss", "loss_own",
           "loss_base", "increase", "retained", "foreign", "distance", "scale", "distance_at_scale", "ratio_pooled",
           "energy_kept", "mean_cosine", "n_val", "wall_s")


def merge_plan(tasks: Sequence[str], *, methods: Sequence[str] = METHODS,
               weightings: Sequence[str] = WEIGHTINGS) -> list[tuple[str, tuple[str, ...], str, str]]:
    """Every merge: ``(name, subset, weighting, method)``, subsets of two or more tasks in a fixed order."""
    out = []
    for n in range(2, len(tasks) + 1):
        for subset in itertools.combinations(tasks, n):
            for wt in weightings:
                for m in methods:
                    name = "+".join(subset) + f"_w{'1' if wt == '1' else '1n'}_{m}"
                    out.append((name, subset, wt, m))
    return out


def read_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows already measured, ``[dict]``; a partly written last line is dropped from the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        data = fh.read()
    if data and not data.endswith(b"\n"):  # killed while appending: drop the partial line
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "wb") as fh:
            fh.write(data)
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _append(path, row):
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in COLUMNS})
        fh.flush()
        os.fsync(fh.fileno())


def _merged(name, subset, wt, method, paths, out_root, density):
    """The merged adapter's folder (written if missing) and its advice statistics per task."""
    ads = [load_adapter(paths[t]) for t in subset]
    w = [1.0 if wt == "1" else 1.0 / len(subset)] * len(subset)
    folder = os.path.join(out_root, name)
    res = merge_adapters(ads, weights=w, method=method, labels=list(subset),
                         density=density if method == "ties" else None)
    if not os.path.exists(os.path.join(folder, "adapter_config.json")):
        res.write(folder, force=os.path.exists(folder))
    dist = merged_distances(load_adapter(folder), ads, labels=list(subset)).set_index("adapter")
    scale = suggested_scale(dist.reset_index(), float(dist["norm2_merged"].iloc[0]))
    s = res.summary()
    adv = res.advice()
    common = {"kind": "merge", "merge": name, "subset": "+".join(subset), "n": len(subset), "weighting": wt,
              "weight": w[0], "method": method, "density": density if method == "ties" else "",
              "scale": scale, "ratio_pooled": s["ratio_pooled"], "energy_kept": s["energy_kept_pooled"],
              "mean_cosine": float(adv.pairs["cosine"].mean())}
    per_task = {}
    for t in subset:
        d = dist.loc[t]
        at = scale * scale * d["norm2_merged"] / d["norm2"] - 2 * scale * d["retained"] + 1
        per_task[t] = {**common, "retained": d["retained"], "foreign": d["foreign"], "distance": d["distance"],
                       "distance_at_scale": at}
    return folder, per_task


def run(*, out_root: str | os.PathLike[str], table: str | os.PathLike[str], checkpoints: str = "checkpoints",
        adapters: Mapping[str, str] | None = None, n_val: int = 256, threads: int = 2, density: float = 0.5,
        methods: Sequence[str] = METHODS, wordnet: str | os.PathLike[str] | None = None, tiny: bool = False,
        log: Callable[[str], object] = print) -> int:
    """Measure every merge of :func:`merge_plan` not yet in ``table``; returns the number of rows added."""
    adapters = dict(adapters or DEFAULT_ADAPTERS)
    paths = {t: os.path.join(checkpoints, p) for t, p in adapters.items()}
    tasks = list(adapters)
    done = {(r["kind"], r["merge"], r["task"]) for r in read_table(table)}
    os.makedirs(out_root, exist_ok=True)
    todo = [m for m in merge_plan(tasks, methods=methods)
            if any(("merge", m[0], t) not in done for t in m[1])]
    need_ref = any(("base", "", t) not in done or ("own", "", t) not in done for t in tasks)
    if not todo and not need_ref:
        log("nothing to do: every row is in the table")
        return 0
    t0 = time.time()
    ev = TaskEvaluator(tasks, n_val=n_val, threads=threads, wordnet=wordnet, tiny=tiny)
    log(f"base model and {len(tasks)} tasks loaded in {time.time() - t0:.0f} s; {len(todo)} merges to measure")
    added = 0
    ref: dict[tuple[str, str], float] = {}
    for r in read_table(table):
        if r["kind"] in ("base", "own"):
            ref[(r["kind"], r["task"])] = float(r["loss"])
    for t in tasks:
        for kind in ("base", "own"):
            if (kind, t) in ref:
                continue
            t1 = time.time()
            loss = ev.base_losses([t])[t] if kind == "base" else ev.adapter_losses(paths[t], [t])[t]
            ref[(kind, t)] = loss
            _append(table, {"kind": kind, "task": t, "loss": loss, "n_val": n_val, "wall_s": round(time.time() - t1, 1),
                            "merge": "", "subset": adapters[t] if kind == "own" else ""})
            added += 1
            log(f"{kind} {t}: {loss:.4f}")
    for i, (name, subset, wt, method) in enumerate(todo):
        folder, per_task = _merged(name, subset, wt, method, paths, out_root, density)
        for t in subset:
            if ("merge", name, t) in done:
                continue
            t1 = time.time()
            loss = ev.adapter_losses(folder, [t])[t]
            row = {**per_task[t], "task": t, "loss": loss, "loss_own": ref[("own", t)], "loss_base": ref[("base", t)],
                   "increase": loss - ref[("own", t)], "n_val": n_val, "wall_s": round(time.time() - t1, 1)}
            _append(table, row)
            added += 1
            log(f"[{i + 1}/{len(todo)}] {name} on {t}: {loss:.4f} (own {ref[('own', t)]:.4f}; distance "
                f"{row['distance']:.2f})")
    return added


def analyse(table: str | os.PathLike[str] | pd.DataFrame, *, n_perm: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The advice checked against the measured losses: ``{predictor: AdviceCheck}`` and the scale choice.

    Returns
    -------
    dict
        ``checks``: Spearman ρ of ``distance``, ``foreign`` and ``1 - retained`` (and the pooled ratio, the mean
        cosine) against the loss increase, with the permutation null within tasks; ``scale_choice``: for every
        (subset, method), whether the weighting the advice prefers (the smaller mean distance of weights 1 and
        1/n) is the one with the smaller mean measured increase; ``agreement``, how often, and ``agreement_p``,
        the one-sided binomial p of that many against a coin flip; ``table``: the merge rows, numbers as numbers.
    """
    import pandas as pd
    from scipy.stats import binomtest

    fr = pd.DataFrame(read_table(table)) if isinstance(table, (str, os.PathLike)) else table.copy()
    fr = fr[fr["kind"] == "merge"].copy()
    for c in ("increase", "retained", "foreign", "distance", "ratio_pooled", "mean_cosine", "loss"):
        fr[c] = pd.to_numeric(fr[c], errors="coerce")
    fr["lost_own"] = (1 - fr["retained"]) ** 2
    checks = {p: advice_vs_losses(fr, predictor=p, n_perm=n_perm, seed=seed)
              for p in ("distance", "foreign", "lost_own", "ratio_pooled", "mean_cosine") if fr[p].notna().sum() > 2}
    g = fr.groupby(["subset", "method", "weighting"]).agg(distance=("distance", "mean"),
                                                          increase=("increase", "mean"), tasks=("task", "count"))
    rows = []
    for (subset, method), sub in g.groupby(level=[0, 1]):
        sub = sub.droplevel([0, 1])
        if set(sub.index) >= {"1", "1/n"}:
            pred = sub["distance"].idxmin()
            real = sub["increase"].idxmin()
            rows.append({"subset": subset, "method": method, "advised": pred, "measured": real, "agree": pred == real,
                         "increase_1": sub.loc["1", "increase"], "increase_1n": sub.loc["1/n", "increase"]})
    choice = pd.DataFrame(rows)
    n_agree = int(choice["agree"].sum()) if len(choice) else 0
    p_agree = float(binomtest(n_agree, len(choice), 0.5, alternative="greater").pvalue) if len(choice) else float("nan")
    return {"checks": checks, "scale_choice": choice,
            "agreement": float(choice["agree"].mean()) if len(choice) else float("nan"), "agreement_p": p_agree,
            "rows": int(len(fr)), "table": fr}


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the measurements, or ``--analyse`` the table; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m analysis.reference.merge_losses", description=__doc__.split("\n")[0])
    p.add_argument("--table", required=True, help="CSV the rows are appended to (resumed if it exists)")
    p.add_argument("--out-root", help="folder for the merged adapters (outside the repository)")
    p.add_argument("--checkpoints", default="checkpoints", help="folder of the task adapters (default checkpoints)")
    p.add_argument("--density", type=float, default=0.5, help="density of the ties merges (default 0.5)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--n-val", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--wordnet", default=None)
    p.add_argument("--tiny", action="store_true", help="the tiny random Llama (smoke tests)")
    p.add_argument("--analyse", action="store_true", help="print how well the advice predicts the measured losses")
    args = p.parse_args(argv)
    if args.analyse:
        res = analyse(args.table)
        for c in res["checks"].values():
            print(f"{c.predictor:>13}: Spearman rho {c.rho:+.3f} (null {c.null_mean:+.3f} +- {c.null_sd:.3f}, z "
                  f"{c.z:+.1f}, p {c.p:.4f}, n {c.n}): {c.verdict}; per task "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in c.per_task.items()))
        print(f"weights 1 vs 1/n: the advice picks the measured better one in {res['agreement']:.0%} of "
              f"{len(res['scale_choice'])} (subset, method) cases (binomial p {res['agreement_p']:.3f} against a "
              "coin flip)")
        return 0
    if not args.out_root:
        p.error("--out-root is needed to measure (the merged adapters go there)")
    run(out_root=args.out_root, table=args.table, checkpoints=args.checkpoints, n_val=args.n_val,
        threads=args.threads, density=args.density, methods=args.methods, wordnet=args.wordnet, tiny=args.tiny,
        log=lambda s: print(time.strftime("%H:%M:%S"), s, flush=True))
    print("ALLDONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
