"""Exact merges of LoRA adapters, with the interference report, from the factors (no dense ΔW).

Methods, each the same update PEFT's ``add_weighted_adapter`` builds (combination types of the same name;
like PEFT, the merged adapter has ``lora_alpha = r`` so its scale is 1, written with a ``rank_pattern`` where
module ranks differ):

``cat``
    exact Σ wᵢ ΔWᵢ: ``lora_A = [w₁ s₁ A₁; …]``, ``lora_B = [B₁, …]``, rank Σ rᵢ.
``svd``
    the best rank-K approximation of Σ wᵢ ΔWᵢ (Eckart–Young), from the exact SVD of the stacked factors:
    QR of the (d, Σ rᵢ) stacks and an SVD of a Σ rᵢ × Σ rᵢ core. PEFT forms each dense ΔWᵢ and takes a
    full d_out × d_in SVD. K defaults to the largest rank, as in PEFT.
``linear``
    PEFT's factor-wise weighted sum (equal ranks needed): ``lora_A = Σ ±√|wᵢsᵢ| Aᵢ``,
    ``lora_B = Σ √|wᵢsᵢ| Bᵢ``. Its product has cross terms Bᵢ Aⱼ, so it is **not** Σ wᵢ ΔWᵢ; the report
    gives its exact relative error against that sum.

The interference report per module: pairwise Frobenius cosines, ‖Σ wᵢ ΔWᵢ‖² against Σ ‖wᵢ ΔWᵢ‖²
(reinforcing, cancelling or orthogonal, judged against random directions of the same norms:
:func:`analysis.metrics.cosine.interference`) and, for ``svd``, the energy the rank-K truncation keeps.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from analysis.core.adapter import natural_key, split_name
from analysis.core.lowrank import LowRank
from analysis.core.truncate import from_svd
from analysis.errors import AdapterError
from analysis.metrics.cosine import cosine_from_gram, gram_blocks, interference

__all__ = ["MERGE_METHODS", "MergeResult", "merge_adapters", "stacked_update"]

MERGE_METHODS = ("linear", "cat", "svd")


def stacked_update(lrs, weights, *, name=""):
    """Σ wᵢ ΔWᵢ as one LowRank with stacked factors (exact; scale 1).

    Parameters
    ----------
    lrs : sequence of LowRank
        Updates of one shape, scales known.
    weights : sequence of float

    Returns
    -------
    LowRank
        ``lora_A`` (Σ r, d_in) = [w₁ s₁ A₁; …], ``lora_B`` (d_out, Σ r) = [B₁, …].
    """
    A = np.vstack([float(w) * lr.scale * lr.lora_A.astype(np.float64) for lr, w in zip(lrs, weights)])
    B = np.hstack([lr.lora_B.astype(np.float64) for lr in lrs])
    return LowRank(A, B, 1.0, name=name)


def _linear(lrs, weights, name):
    """PEFT's ``linear``: factor-wise weighted sums (√|w s| on both sides, the sign on A)."""
    A = sum(math.copysign(math.sqrt(abs(w * lr.scale)), w * lr.scale) * lr.lora_A.astype(np.float64)
            for lr, w in zip(lrs, weights))  # (r, d_in)
    B = sum(math.sqrt(abs(w * lr.scale)) * lr.lora_B.astype(np.float64) for lr, w in zip(lrs, weights))  # (d_out, r)
    return LowRank(A, B, 1.0, name=name)


@dataclass(frozen=True, eq=False)
class MergeResult:
    """A merged adapter and its interference report.

    Attributes
    ----------
    modules : dict of str to LowRank
        The merged update per module, ``scale = lora_alpha / r`` (ready for the PEFT writer).
    lora_alpha : float
    method : str
    rank : int or None
        K for ``svd``.
    weights : tuple of float
    labels : tuple of str
        The adapters merged.
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, n`` (adapters having it), ``r`` (merged rank),
        ``norm2_sum`` (‖Σ wᵢΔWᵢ‖²), ``sum_norm2`` (Σ ‖wᵢΔWᵢ‖²), ``ratio``, ``null_std``, ``z``,
        ``verdict``, ``energy_kept`` (share of ‖Σ wᵢΔWᵢ‖² the merged update keeps: 1 for cat, the rank-K
        truncation's for svd, NaN for linear), ``rel_error`` (‖merged − Σ wᵢΔWᵢ‖ / ‖Σ wᵢΔWᵢ‖, exact).
    cosines : pandas.DataFrame
        One row per module and pair: ``name, a, b, cosine`` (NaN for a zero update).
    config : dict
        The source adapter's config (first adapter), carried over by :meth:`write`.
    """

    modules: dict
    lora_alpha: float
    method: str
    rank: int | None
    weights: tuple
    labels: tuple
    frame: object
    cosines: object
    config: dict

    def write(self, out, *, overwrite=False):
        """Write the merged adapter as a PEFT folder (whole or not at all); returns the config written."""
        from analysis.io.peft_writer import write_peft_adapter

        cfg = dict(self.config or {})
        return write_peft_adapter(out, self.modules, lora_alpha=self.lora_alpha, config=cfg,
                                  base_model_name_or_path=cfg.get("base_model_name_or_path"),
                                  task_type=cfg.get("task_type"), overwrite=overwrite)

    def summary(self):
        """Counts of verdicts and the overall numbers (pooled over modules)."""
        fr = self.frame
        tot = float(fr["norm2_sum"].sum())
        sep = float(fr["sum_norm2"].sum())
        kept = float((fr["energy_kept"] * fr["norm2_sum"]).sum() / tot) if tot > 0 else float("nan")
        return {"verdicts": {k: int(v) for k, v in Counter(fr["verdict"]).items()},
                "ratio_pooled": tot / sep if sep > 0 else float("nan"),
                "energy_kept_pooled": kept if self.method != "linear" else float("nan"),
                "median_cosine": float(np.nanmedian(self.cosines["cosine"])) if len(self.cosines) else float("nan")}


def _rescale(lr, alpha, fan_in_fan_out):
    """The same update with ``scale = alpha / r`` (the factor ``scale_old / scale_new`` absorbed by lora_A)."""
    s = alpha / lr.r
    return LowRank(lr.lora_A * (lr.scale / s), lr.lora_B, s, name=lr.name,
                   meta={"format": "peft", "r": lr.r, "alpha": alpha, "fan_in_fan_out": bool(fan_in_fan_out)})


def merge_adapters(adapters, *, weights=None, method="svd", rank=None, labels=None):
    """Merge LoRA adapters exactly into one, with the interference report.

    Parameters
    ----------
    adapters : sequence of Adapter
        Two or more adapters of one base model (modules present in only some are merged over those).
    weights : sequence of float, optional
        wᵢ (default 1 each; may be negative).
    method : {"linear", "cat", "svd"}
    rank : int, optional
        K of ``svd`` (default: the largest stored rank, as PEFT).
    labels : sequence of str, optional
        Names of the adapters in the report (default their paths).

    Returns
    -------
    MergeResult
    """
    import pandas as pd

    from analysis.sweeps.common import require_adapter

    ads = [require_adapter(a, base_names="merge") for a in adapters]
    if len(ads) < 2:
        raise ValueError(f"expected at least two adapters to merge, got {len(ads)}")
    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    w = [1.0] * len(ads) if weights is None else [float(x) for x in weights]
    if len(w) != len(ads):
        raise ValueError(f"expected one weight per adapter ({len(ads)}), got {len(w)}")
    if not all(math.isfinite(x) for x in w):
        raise ValueError(f"weights must be finite numbers, got {w}")
    if rank is not None and (int(rank) != rank or rank < 1):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if method != "svd" and rank is not None:
        raise ValueError(f"--rank applies to method svd only, got method {method!r}")
    labels = tuple(str(a.path) for a in ads) if labels is None else tuple(labels)
    mods = [a.expanded() for a in ads]
    names = sorted(set().union(*mods), key=natural_key)
    if method == "linear":
        ranks = {(lab, m[n].r) for lab, m in zip(labels, mods) for n in m}
        rs = sorted({r for _, r in ranks})
        if len(rs) > 1:
            raise AdapterError(f"method linear needs one rank in every module of every adapter (as PEFT), got ranks "
                               f"{rs}; use cat or svd", path=next(lab for lab, r in ranks if r != rs[0]))
    K = int(rank) if rank is not None else max(lr.r for m in mods for lr in m.values())
    merged, rows, cos_rows, fan = {}, [], [], {}
    for n in names:
        idx = [i for i, m in enumerate(mods) if n in m]
        lrs = [mods[i][n] for i in idx]
        ws = [w[i] for i in idx]
        shape = lrs[0].shape
        for i, lr in zip(idx, lrs):
            if lr.shape != shape:
                raise AdapterError(f"expected ΔW of shape {shape} as in {labels[idx[0]]}, got {lr.shape}",
                                   path=labels[i], key=n)
            if lr.kind not in ("linear", "merged"):
                raise AdapterError(f"merging {lr.kind} modules is not supported (linear layers only)",
                                   path=labels[i], key=n)
            if lr.scale is None:
                lr.norm()  # raises MissingAlphaError naming file and key
        exact = stacked_update(lrs, ws, name=n)  # Σ wᵢ ΔWᵢ, exact
        B = np.hstack([lr.lora_B.astype(np.float64) * lr.scale for lr in lrs])
        A = np.vstack([lr.lora_A.astype(np.float64) for lr in lrs])
        off = np.concatenate([[0], np.cumsum([lr.r for lr in lrs])])
        G = gram_blocks(B, A, off, B, A, off)  # (n, n) ⟨ΔWᵢ, ΔWⱼ⟩
        it = interference(G, ws, shape)
        C = cosine_from_gram(G)
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                cos_rows.append({"name": n, "a": labels[idx[a]], "b": labels[idx[b]], "cosine": C[a, b]})
        total = it.norm2_sum  # ‖Σ wᵢ ΔWᵢ‖² = wᵀ G w
        if method == "cat":
            out, kept, err = exact, 1.0, 0.0  # the stacked factors are the sum itself
        elif method == "svd":
            U, S, V = exact.svd()  # exact thin SVD of Σ wᵢ ΔWᵢ from the stacked factors
            k = min(K, S.size)
            out = from_svd(U[:, :k], S[:k], V[:, :k], alpha=float(max(k, 1)), name=n)
            s2 = float(np.sum(S * S))
            kept = float(np.sum(S[:k] ** 2) / s2) if s2 > 0 else 1.0
            err = math.sqrt(max(1.0 - kept, 0.0))  # Eckart–Young: ‖ΔW − ΔW_k‖² = Σ_{i>k} σᵢ²
        else:
            out, kept = _linear(lrs, ws, n), float("nan")
            # ‖merged − exact‖ from the factors: one more stacked update
            diff = LowRank(np.vstack([out.lora_A * out.scale, -exact.lora_A]), np.hstack([out.lora_B, exact.lora_B]),
                           1.0)
            err = diff.norm() / math.sqrt(total) if total > 0 else (0.0 if diff.norm() == 0 else float("inf"))
        merged[n] = out
        fan[n] = lrs[0].meta.get("fan_in_fan_out", False)
        layer, module = split_name(n)
        rows.append({"name": n, "layer": layer, "module": module, "n": len(idx), "r": out.r,
                     "norm2_sum": it.norm2_sum, "sum_norm2": it.sum_norm2, "ratio": it.ratio,
                     "null_std": it.null_std, "z": it.z, "verdict": it.verdict, "energy_kept": kept,
                     "rel_error": err})
    counts = Counter(lr.r for lr in merged.values())
    alpha = float(max(counts, key=lambda r: (counts[r], r)))
    merged = {n: _rescale(lr, alpha, fan[n]) for n, lr in merged.items()}
    return MergeResult(merged, alpha, method, K if method == "svd" else None, tuple(w), labels,
                       pd.DataFrame(rows), pd.DataFrame(cos_rows, columns=["name", "a", "b", "cosine"]),
                       dict(ads[0].config or {}))
