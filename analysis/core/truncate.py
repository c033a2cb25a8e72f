"""Exact rank reduction of one LoRA update (Eckart–Young, from the factored SVD).

The best rank-k approximation of ΔW = U diag(S) Vᵀ in Frobenius and spectral
norm is ΔW_k = U_k diag(S_k) V_kᵀ. Written as LoRA factors for a PEFT scale
s = α / k::

    lora_B = U_k · √(S_k / s)      (d_out, k)
    lora_A = √(S_k / s) · V_kᵀ     (k, d_in)      so  s · lora_B lora_A = ΔW_k

(balanced factors, the scale absorbed). The energy kept is Σ_{i≤k} σ_i² / Σ σ_i²
and the relative error ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = √(1 − energy)
(:func:`analysis.metrics.spectrum.energy_retained`, :func:`~analysis.metrics.spectrum.relative_error`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.lowrank import LowRank
from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["from_svd", "truncate"]


def from_svd(U: np.ndarray, S: np.ndarray, V: np.ndarray, *, alpha: float, name: str = "", kind: str = "linear",
             weight_shape: tuple[int, ...] | None = None, meta: Mapping[str, Any] | None = None,
             source: str | None = None) -> LowRank:
    """LoRA factors of ``U diag(S) Vᵀ`` for PEFT's scale ``alpha / k``.

    Parameters
    ----------
    U : (d_out, k) ndarray
        Orthonormal left singular vectors.
    S : (k,) ndarray
        Singular values (non-negative).
    V : (d_in, k) ndarray
        Orthonormal right singular vectors.
    alpha : float
        PEFT's ``lora_alpha``; the scale is ``alpha / k``.
    name, kind, weight_shape, meta, source
        Passed to :class:`~analysis.core.LowRank`. For k = 0 a rank-1 zero
        update is returned (PEFT cannot hold r = 0).

    Returns
    -------
    LowRank
        Float64 factors with ``scale · lora_B @ lora_A == U diag(S) Vᵀ``.
    """
    U = np.asarray(U, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    if U.ndim != 2 or V.ndim != 2 or S.ndim != 1 or not U.shape[1] == V.shape[1] == S.size:
        raise InputError(f"expected U (d_out, k), S (k,), V (d_in, k), got {U.shape}, {S.shape}, {V.shape}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise InputError(f"alpha must be a positive number, got {alpha!r}")
    k = S.size
    meta = dict(meta or {})
    if k == 0:
        A, B, k = np.zeros((1, V.shape[0])), np.zeros((U.shape[0], 1)), 1
    else:
        scale = alpha / k
        root = np.sqrt(S / scale)  # (k,)
        B = U * root  # (d_out, k)
        A = (V * root).T  # (k, d_in)
    meta.update(r=k, alpha=alpha)
    return LowRank(A, B, alpha / k, name=name, source=source, kind=kind, weight_shape=weight_shape, meta=meta)


def truncate(lr: LowRank, k: int, *, alpha: float | None = None) -> LowRank:
    """Best rank-k approximation of one update, as LoRA factors.

    Parameters
    ----------
    lr : LowRank
        Scale must be known.
    k : int
        Target rank (≥ 0); ranks above the numerical rank keep everything.
    alpha : float, optional
        ``lora_alpha`` of the result (scale α / k); default k (scale 1).

    Returns
    -------
    LowRank
        ``kind`` linear (a merged module is truncated as one whole update),
        conv or embedding, ``meta`` keeping ``fan_in_fan_out``.
    """
    if int(k) != k or k < 0:
        raise InputError(f"k must be a non-negative integer, got {k!r}")
    U, S, V = lr.svd()  # (d_out, n), (n,), (d_in, n): U diag(S) Vᵀ = ΔW, sign of the scale included
    k = min(int(k), S.size)
    kind = "linear" if lr.kind == "merged" else lr.kind
    meta = {"format": "peft", "fan_in_fan_out": bool(lr.meta.get("fan_in_fan_out")), "source_r": lr.r}
    return from_svd(U[:, :k], S[:k], V[:, :k], alpha=float(alpha if alpha is not None else max(k, 1)),
                    name=lr.name, kind=kind, weight_shape=lr.weight_shape, meta=meta, source=lr.source)
