"""Frobenius inner products, cosines and merge interference of low-rank updates, exact from the factors.

For ΔWa = sa Ba Aa and ΔWb = sb Bb Ab (Ba (d_out, ra), Aa (ra, d_in))::

    ⟨ΔWa, ΔWb⟩_F = sa sb tr(Aaᵀ Baᵀ Bb Ab) = sa sb tr((Baᵀ Bb)(Ab Aaᵀ))

costs O((d_out + d_in) ra rb): no d_out × d_in product is formed. For a whole collection of
updates of one module, the factors are stacked side by side (``B = [s₁B₁ … s_N B_N]``,
``A = [A₁; …; A_N]``); the N × N Gram matrix is the block sums of ``(BᵀB) ⊙ (AAᵀ)``.

The same stacking gives the paper's φ(k, k) between the top-k singular bases of every pair from one
product of the stacked bases (:func:`phi_blocks`).

Null of the interference (random directions carrying the same ‖ΔW‖_F, PAPER.md): if the singular
bases of ΔWa and ΔWb are independent Haar-random, E⟨ΔWa, ΔWb⟩ = 0 and
sd = ‖ΔWa‖ ‖ΔWb‖ / √(d_out d_in), exactly, for any spectra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from analysis.core.lowrank import LowRank

__all__ = ["frobenius_inner", "frobenius_cosine", "gram_blocks", "phi_blocks", "cosine_from_gram",
           "cosine_null_std", "Interference", "interference", "INTERFERENCE_Z"]

#: |z| at or above which a merge's cross terms count as reinforcing / cancelling (PAPER.md: z ≥ 3).
INTERFERENCE_Z = 3.0


def _factors(lr):
    """(s B (d_out, r), A (r, d_in)) in float64 for a LowRank (scale folded into B)."""
    if lr.scale is None:
        lr.norm()  # raises MissingAlphaError, naming the file and key
    s = lr.scale
    return lr.lora_B.astype(np.float64) * s, lr.lora_A.astype(np.float64)


def frobenius_inner(a: LowRank, b: LowRank) -> float:
    """⟨ΔWa, ΔWb⟩_F from the factors, float64.

    Parameters
    ----------
    a, b : LowRank
        Updates of the same shape (d_out, d_in); scales must be known.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from analysis.core import LowRank
    >>> a = LowRank(np.eye(2, 3), np.eye(4, 2), scale=2.0)
    >>> float(frobenius_inner(a, a))  # ‖ΔW‖² = 4 · 2
    8.0
    """
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(f"updates must have the same shape (d_out, d_in), got {a.shape} and {b.shape}")
    Ba, Aa = _factors(a)
    Bb, Ab = _factors(b)
    # tr((Baᵀ Bb)(Ab Aaᵀ)) = sum((Baᵀ Bb) ⊙ (Aa Abᵀ))
    return float(np.sum((Ba.T @ Bb) * (Aa @ Ab.T)))  # (ra, rb) ⊙ (ra, rb)


def frobenius_cosine(a: LowRank, b: LowRank) -> float:
    """⟨ΔWa, ΔWb⟩ / (‖ΔWa‖ ‖ΔWb‖), exact from the factors; NaN when either update is zero.

    Parameters
    ----------
    a, b : LowRank

    Returns
    -------
    float
        In [-1, 1]; NaN for a zero update (report it as a zero update, not as a similarity).
    """
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return float("nan")
    return float(np.clip(frobenius_inner(a, b) / (na * nb), -1.0, 1.0))


def _segment_sum(E, off_i, off_j):
    """Block sums of E (R_I, R_J) over row segments ``off_i`` and column segments ``off_j`` (non-empty)."""
    rows = np.add.reduceat(E, off_i[:-1], axis=0) if E.shape[0] else np.zeros((0, E.shape[1]))
    return np.add.reduceat(rows, off_j[:-1], axis=1) if E.shape[1] else np.zeros((rows.shape[0], 0))


def gram_blocks(B_i: np.ndarray, A_i: np.ndarray, off_i: np.ndarray, B_j: np.ndarray, A_j: np.ndarray,
                off_j: np.ndarray) -> np.ndarray:
    """Frobenius inner products between two groups of stacked updates of one module.

    Parameters
    ----------
    B_i : (d_out, R_i) ndarray
        ``[s₁ B₁, …, s_t B_t]``: each update's ``lora_B`` times its scale, side by side.
    A_i : (R_i, d_in) ndarray
        ``[A₁; …; A_t]`` stacked by rows.
    off_i : (t + 1,) int ndarray
        Column offsets of the updates in ``B_i`` (``off_i[0] = 0``, ``off_i[-1] = R_i``); every rank ≥ 1.
    B_j, A_j, off_j
        The second group.

    Returns
    -------
    (t_i, t_j) ndarray of float64
        ``[a, b] = ⟨ΔW_a, ΔW_b⟩_F``.
    """
    off_i, off_j = np.asarray(off_i), np.asarray(off_j)
    if np.any(np.diff(off_i) < 1) or np.any(np.diff(off_j) < 1):
        raise InputError("every stacked update needs rank >= 1 (offsets must increase)")
    E = (B_i.T @ B_j) * (A_i @ A_j.T)  # (R_i, d_out) @ (d_out, R_j) ⊙ (R_i, d_in) @ (d_in, R_j)
    return _segment_sum(E, off_i, off_j)


def phi_blocks(U_i: np.ndarray, k_i: np.ndarray, U_j: np.ndarray, k_j: np.ndarray, *,
               k: int | None = None) -> np.ndarray:
    """φ(k_ab, k_ab) between stacked orthonormal bases, k_ab = min(k, k_a, k_b).

    Parameters
    ----------
    U_i : (d, K_i) ndarray
        The top-k_a basis of each update side by side (K_i = Σ k_a).
    k_i : (t_i,) int ndarray
        Columns per update (0 for a zero update).
    U_j, k_j
        The second group.
    k : int, optional
        Cap on the prefix (default: no cap beyond the columns given).

    Returns
    -------
    (t_i, t_j) ndarray of float64
        φ in [0, 1]; NaN where either update has no column (zero update).
    """
    k_i, k_j = np.asarray(k_i, dtype=np.int64), np.asarray(k_j, dtype=np.int64)
    M = U_i.T @ U_j  # (K_i, d) @ (d, K_j)
    P = np.zeros((M.shape[0] + 1, M.shape[1] + 1))
    P[1:, 1:] = np.cumsum(np.cumsum(M * M, axis=0), axis=1)  # 2-D prefix sums of squared cosines
    o_i = np.concatenate([[0], np.cumsum(k_i)[:-1]])[:, None]  # (t_i, 1)
    o_j = np.concatenate([[0], np.cumsum(k_j)[:-1]])[None, :]  # (1, t_j)
    kk = np.minimum(k_i[:, None], k_j[None, :])  # (t_i, t_j)
    if k is not None:
        kk = np.minimum(kk, int(k))
    tot = P[o_i + kk, o_j + kk] - P[o_i, o_j + kk] - P[o_i + kk, o_j] + P[o_i, o_j]
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.clip(tot / kk, 0.0, 1.0)
    phi[kk == 0] = np.nan
    return phi


def cosine_from_gram(G: np.ndarray) -> np.ndarray:
    """Cosine matrix from a Gram matrix of inner products; NaN rows / columns for zero updates.

    Parameters
    ----------
    G : (N, N) ndarray
        Symmetric, ``G[a, a] = ‖ΔW_a‖²``.

    Returns
    -------
    (N, N) ndarray of float64
    """
    G = np.asarray(G, dtype=np.float64)
    n = np.sqrt(np.clip(np.diag(G), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        C = G / np.outer(n, n)
    C[(n == 0)[:, None] | (n == 0)[None, :]] = np.nan
    return np.clip(C, -1.0, 1.0)


def cosine_null_std(d_out: int, d_in: int) -> float:
    """Standard deviation of the Frobenius cosine of two updates with independent Haar-random singular bases.

    Exactly 1 / √(d_out d_in), whatever their ranks and spectra (the mean is 0).

    Parameters
    ----------
    d_out, d_in : int
        The shape of ΔW (positive).

    Returns
    -------
    float
    """
    if d_out < 1 or d_in < 1:
        raise InputError(f"d_out and d_in must be positive, got {d_out}, {d_in}")
    return 1.0 / np.sqrt(float(d_out) * float(d_in))


@dataclass(frozen=True)
class Interference:
    """How the updates of one module interact in the weighted sum Σ wᵢ ΔWᵢ.

    Attributes
    ----------
    norm2_sum : float
        ‖Σ wᵢ ΔWᵢ‖²_F.
    sum_norm2 : float
        Σ ‖wᵢ ΔWᵢ‖²_F (what the sum would have if the updates were orthogonal).
    ratio : float
        norm2_sum / sum_norm2: > 1 reinforcing, < 1 cancelling, 1 orthogonal (NaN: all zero).
    null_std : float
        Standard deviation of ``ratio`` when every update's singular bases are Haar-random (mean 1).
    z : float
        (ratio − 1) / null_std.
    verdict : {"reinforcing", "cancelling", "orthogonal", "zero"}
        |z| ≥ :data:`INTERFERENCE_Z` decides; "orthogonal" means indistinguishable from random directions.
    """

    norm2_sum: float
    sum_norm2: float
    ratio: float
    null_std: float
    z: float
    verdict: str


def interference(G: np.ndarray, weights: ArrayLike, shape: tuple[int, int], *,
                 z: float = INTERFERENCE_Z) -> Interference:
    """Interference of a weighted sum from the Gram matrix of the updates.

    Parameters
    ----------
    G : (N, N) ndarray
        ``G[a, b] = ⟨ΔW_a, ΔW_b⟩_F`` (e.g. from :func:`gram_blocks`).
    weights : (N,) array_like
    shape : (int, int)
        (d_out, d_in) of the module, for the null.
    z : float
        Threshold on |z|.

    Returns
    -------
    Interference
    """
    G = np.asarray(G, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1] or w.shape != (G.shape[0],):
        raise InputError(f"expected G (N, N) and weights (N,), got {G.shape} and {w.shape}")
    total = float(w @ G @ w)  # ‖Σ wᵢ ΔWᵢ‖²
    diag = w * w * np.diag(G)  # ‖wᵢ ΔWᵢ‖²
    sep = float(diag.sum())
    if sep <= 0:
        return Interference(max(total, 0.0), 0.0, float("nan"), float("nan"), float("nan"), "zero")
    n = np.sqrt(diag)
    iu = np.triu_indices(len(w), 1)
    # ratio − 1 = 2 Σ_{a<b} wa wb G_ab / sep; each G_ab has sd ‖ΔWa‖‖ΔWb‖ / √(d_out d_in), independent terms
    sd = 2.0 * np.sqrt(np.sum((n[iu[0]] * n[iu[1]]) ** 2)) * cosine_null_std(*shape) / sep
    ratio = total / sep
    zz = (ratio - 1.0) / sd if sd > 0 else 0.0
    verdict = "reinforcing" if zz >= z else "cancelling" if zz <= -z else "orthogonal"
    return Interference(total, sep, ratio, float(sd), float(zz), verdict)
