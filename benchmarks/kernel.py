"""Kernel: the exact factored SVD of ΔW = B A against the dense ways of the peers.

Three ways to get the thin SVD of a rank-r update of a d × d weight:

* ``factored``: :meth:`analysis.core.LowRank.svd` — QR of B and Aᵀ, SVD of the
  r × r core, float64 (from the float32 factors);
* ``dense_full``: ΔW = B @ A in float32 with torch, then ``torch.linalg.svd``
  (what PEFT-based scripts, kohya's tools, mergekit do);
* ``dense_lowrank``: the same ΔW, then ``torch.svd_lowrank(ΔW, q=r+10, niter=2)``.

Times are medians of repeats interleaved in one run (so background load hits
all three alike); accuracy is measured against a float64 reference: the dense
LAPACK SVD of ΔW formed in float64 (for d ≤ ``ref_dense_max``), or, above it,
the float64 factored SVD itself — it is an exact algorithm, and agreement with
the dense float64 reference at the smaller sizes is reported as its error.
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = ["make_factors", "run_kernel", "accuracy"]


def make_factors(d, r, seed=0):
    """Seeded float32 factors A (r, d), B (d, r) of a generic rank-r update."""
    rng = np.random.default_rng([seed, d, r])
    A = (rng.standard_normal((r, d), dtype=np.float32) / np.float32(math.sqrt(d)))  # (r, d_in)
    B = rng.standard_normal((d, r), dtype=np.float32) * np.float32(0.02)  # (d_out, r)
    return A, B


def _sin_max(U, Uref):
    """Sine of the largest principal angle between span(U) and span(Uref) (both orthonormal, r columns)."""
    U, Uref = U.astype(np.float64), Uref.astype(np.float64)
    R = U - Uref @ (Uref.T @ U)  # (d, r): the part of span(U) outside span(Uref)
    return float(np.linalg.norm(R, 2))  # from sines, accurate for small angles


def accuracy(U, S, V, ref):
    """``(sv_err, sub_err)``: max |σ_i − σ_i,ref| / σ₁,ref over the top r, and the largest principal-angle
    sine of the left and right r-dim singular subspaces."""
    Ur, Sr, Vr = ref
    r = Sr.size
    S = np.asarray(S, dtype=np.float64)[:r]
    sv = float(np.max(np.abs(S - Sr)) / Sr[0])
    sub = max(_sin_max(np.asarray(U)[:, :r], Ur), _sin_max(np.asarray(V)[:, :r], Vr))
    return sv, sub


def _time(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def run_kernel(sizes=(1024, 4096, 8192), ranks=(8, 64), *, repeats=None, dense_repeats=None,
               ref_dense_max=4096, dense_all_ranks_max=4096, seed=0, log=print):
    """Time and check the three ways at every (d, r).

    Parameters
    ----------
    sizes, ranks : sequences of int
    repeats : callable or None
        ``repeats(d)`` -> repeats of the factored and low-rank ways (default 7).
    dense_repeats : callable or None
        ``dense_repeats(d)`` -> repeats of the dense full SVD (default 3 up to
        d = 4096, then 1).
    ref_dense_max : int
        Largest d with a float64 dense reference.
    dense_all_ranks_max : int
        Above this d the dense full SVD (whose cost does not depend on r:
        LAPACK does not exploit the rank) is run for the largest rank only and
        its time is used for the other ranks (marked ``dense_full_from_r``).

    Returns
    -------
    list of dict
        One record per (d, r).
    """
    import torch

    from analysis.core import LowRank

    repeats = repeats or (lambda d: 7)
    dense_repeats = dense_repeats or (lambda d: 3 if d <= 4096 else 1)
    out = []
    for d in sizes:
        for r in ranks:
            A, B = make_factors(d, r, seed)
            At, Bt = torch.from_numpy(A), torch.from_numpy(B)
            lr = LowRank(A, B, 1.0)
            q = min(d, r + 10)

            def factored():
                lr.clear_cache()
                return tuple(lr.svd())

            def dense_full():
                D = Bt @ At  # (d, r) @ (r, d) -> (d, d), float32
                U, S, Vh = torch.linalg.svd(D, full_matrices=False)
                return U[:, :r].numpy(), S[:r].numpy(), Vh[:r].T.numpy()

            def dense_lowrank():
                torch.manual_seed(seed)
                D = Bt @ At  # (d, r) @ (r, d) -> (d, d), float32
                U, S, V = torch.svd_lowrank(D, q=q, niter=2)
                return U[:, :r].numpy(), S[:r].numpy(), V[:, :r].numpy()

            times = {"factored": [], "dense_full": [], "dense_lowrank": []}
            results = {}
            n_fast, n_dense = int(repeats(d)), int(dense_repeats(d))
            if d > dense_all_ranks_max and r != max(ranks):
                n_dense = 0
            for i in range(max(n_fast, n_dense)):  # interleaved
                for name, f in (("factored", factored), ("dense_lowrank", dense_lowrank),
                                ("dense_full", dense_full)):
                    if i >= (n_dense if name == "dense_full" else n_fast):
                        continue
                    t, res = _time(f)
                    times[name].append(t)
                    results[name] = res
            ref_kind = "dense float64 LAPACK SVD" if d <= ref_dense_max else "factored float64 (exact algorithm)"
            t_ref = None
            if d <= ref_dense_max:
                B64, A64 = B.astype(np.float64), A.astype(np.float64)

                def ref_svd():
                    U, S, Vt = np.linalg.svd(B64 @ A64, full_matrices=False)  # (d, d) float64
                    return U[:, :r], S[:r], Vt[:r].T

                t_ref, ref = _time(ref_svd)
            else:
                ref = tuple(np.asarray(x) for x in results["factored"])
            rec = {"d": d, "r": r, "reference": ref_kind, "t_ref_s": t_ref,
                   "repeats": {k: len(v) for k, v in times.items()}}
            for name, ts in times.items():
                if not ts:  # dense full SVD not run at this r: filled in from the largest r below
                    rec[f"t_{name}_s"], rec[f"t_{name}_all_s"] = None, []
                    rec[f"sv_err_{name}"] = rec[f"sub_err_{name}"] = None
                    continue
                rec[f"t_{name}_s"] = float(np.median(ts))
                rec[f"t_{name}_all_s"] = [float(t) for t in ts]
                sv, sub = accuracy(*results[name], ref)
                exact_ref = name == "factored" and d > ref_dense_max
                rec[f"sv_err_{name}"] = None if exact_ref else sv
                rec[f"sub_err_{name}"] = None if exact_ref else sub
            out.append(rec)
            log(f"kernel d={d} r={r} measured: " + ", ".join(
                f"{k} {np.median(v):.4g} s" for k, v in times.items() if v))
            del lr, At, Bt, A, B, results
    for rec in out:
        if rec["t_dense_full_s"] is None:
            donor = max((x for x in out if x["d"] == rec["d"] and x["t_dense_full_s"] is not None
                         and x.get("dense_full_from_r") is None), key=lambda x: x["r"])
            rec["t_dense_full_s"] = donor["t_dense_full_s"]
            rec["dense_full_from_r"] = donor["r"]
        rec["speedup_full"] = rec["t_dense_full_s"] / rec["t_factored_s"]
        rec["speedup_lowrank"] = rec["t_dense_lowrank_s"] / rec["t_factored_s"]
        d, r = rec["d"], rec["r"]
        log(f"kernel d={d} r={r}: factored {rec['t_factored_s'] * 1e3:.2f} ms, dense+svd "
            f"{rec['t_dense_full_s']:.3f} s ({rec['speedup_full']:.0f}x), dense+svd_lowrank "
            f"{rec['t_dense_lowrank_s'] * 1e3:.1f} ms ({rec['speedup_lowrank']:.0f}x)")
    return out
