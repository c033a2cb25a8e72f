"""Null distributions the report's verdicts are tested against (drawn by the toolkit, or in closed form).

Three nulls, one per kind of claim:

- :func:`phi11_null`: φ(1, 1) between two independent uniformly random lines in R^d. cos²θ of two
  random unit vectors follows Beta(1/2, (d − 1)/2), so the mean is 1/d and the variance
  2(d − 1) / (d² (d + 2)) (closed form).
- :func:`diagonal_phi_draws`: φ(i, i), i = 1 … k, between two independent Haar-random k-frames in R^d
  (seeded draws). By rotation invariance one frame can be fixed to the first k coordinate axes, so a
  draw is the first k rows of one random frame.
- :func:`projection_draws`: ‖Uᵀ W V‖_F for Haar-random U (d_out × k) and V (d_in × k), the random row of
  Table 7 (seeded draws). With W = P Σ Qᵀ, PᵀU and QᵀV are again Haar-random, so the draw needs only
  W's singular values σ, not W. :func:`projection_moments` gives the exact mean and variance of its square.

Tail probabilities (the amended protocol's "tails", PAPER.md): the closed form where one exists
(:func:`phi11_tail`, :func:`top1_overlap_tail`: Beta laws), else the Monte Carlo p-value (1 + #{draws ≥ x}) /
(1 + n) (:func:`mc_tail`), a valid p-value for any n; :func:`adaptive_tail` adds draws only where an effect lies
beyond all of them and the decision needs a smaller p than n draws can show.

Random frames are drawn as U = G L^{-T} with G Gaussian and GᵀG = L Lᵀ: the Q factor of G's QR, hence
Haar-random, from k × k Cholesky factors and matrix products only (batched LAPACK QR of d × k matrices is
tens of times slower on a busy machine).

References: the LoRA paper, Section 7 (random baselines of Fig. 3, 4, 8 and Table 7); for the Beta law of
cos² between random directions, e.g. Muirhead, *Aspects of Multivariate Statistical Theory* (1982), §1.5.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike

__all__ = ["phi11_null", "phi11_tail", "top1_overlap_tail", "diagonal_phi_draws", "projection_draws",
           "projection_moments", "mc_tail", "adaptive_tail", "z_score"]

_BATCH = 64  # draws per batched QR: bounds memory at _BATCH · d · k doubles


def phi11_null(d: int) -> tuple[float, float]:
    """Mean and standard deviation of φ(1, 1) between two uniformly random lines in R^d (closed form).

    Parameters
    ----------
    d : int
        Dimension of the space (≥ 2).

    Returns
    -------
    (float, float)
        ``(1 / d, sqrt(2 (d − 1) / (d² (d + 2))))``.

    Examples
    --------
    >>> [round(x, 4) for x in phi11_null(3)]
    [0.3333, 0.2981]
    """
    d = int(d)
    if d < 2:
        raise InputError(f"d must be >= 2, got {d}")
    return 1.0 / d, math.sqrt(2.0 * (d - 1) / (d * d * (d + 2.0)))


def _haar_rows(rng, n, d, k, rows):
    """The first ``rows`` rows of ``n`` Haar-random orthonormal d × k frames, shape (n, rows, k).

    A frame is U = G L^{-T} for a Gaussian G (d × k) with GᵀG = L Lᵀ (Cholesky): U is the Q of G's QR with
    R = Lᵀ, hence Haar-random; only k × k factorisations and matrix products are needed (no d × k QR).
    """
    G = rng.standard_normal((n, d, k))
    L = np.linalg.cholesky(np.matmul(np.swapaxes(G, 1, 2), G))  # (n, k, k)
    return np.swapaxes(np.linalg.solve(L, np.swapaxes(G[:, :rows, :], 1, 2)), 1, 2)  # (G[:rows] L^{-T})


def diagonal_phi_draws(d: int, k: int, *, n: int = 1000, seed: int = 0) -> np.ndarray:
    """Draws of φ(i, i), i = 1 … k, between two independent Haar-random k-frames in R^d.

    Parameters
    ----------
    d, k : int
        Dimension and frame size (1 ≤ k ≤ d).
    n : int
        Number of draws.
    seed : int

    Returns
    -------
    (n, k) ndarray of float64
        Row t holds φ(1, 1), …, φ(k, k) of draw t; E[φ(i, i)] = i / d.
    """
    d, k, n = int(d), int(k), int(n)
    if not 1 <= k <= d or n < 1:
        raise InputError(f"expected 1 <= k <= d and n >= 1, got d={d}, k={k}, n={n}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, k))
    i = np.arange(1, k + 1)
    for start in range(0, n, _BATCH):
        m = min(_BATCH, n - start)
        M = _haar_rows(rng, m, d, k, k)  # (m, k, k): the other frame is the first k axes
        out[start:start + m] = np.cumsum(np.cumsum(M ** 2, axis=1), axis=2)[:, i - 1, i - 1] / i
    return out


def projection_draws(sigma: ArrayLike, d_out: int, d_in: int, k: int, *, n: int = 1000,
                     seed: int = 0) -> np.ndarray:
    """Draws of ‖Uᵀ W V‖_F for Haar-random U (d_out × k), V (d_in × k), from W's singular values.

    Parameters
    ----------
    sigma : (min(d_out, d_in),) array_like
        Every singular value of W (a full SVD's).
    d_out, d_in, k : int
    n : int
        Number of draws.
    seed : int

    Returns
    -------
    (n,) ndarray of float64
        E[draw²] = ‖W‖²_F k² / (d_out d_in).
    """
    s = np.asarray(sigma, dtype=np.float64).ravel()
    d_out, d_in, k, n = int(d_out), int(d_in), int(k), int(n)
    m = min(d_out, d_in)
    if s.size != m:
        raise InputError(f"expected all {m} singular values of a {d_out} x {d_in} W, got {s.size}")
    if not 1 <= k <= m or n < 1:
        raise InputError(f"expected 1 <= k <= {m} and n >= 1, got k={k}, n={n}")
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for start in range(0, n, _BATCH):
        b = min(_BATCH, n - start)
        # U = G_u L_u^{-T} with G_uᵀG_u = L_u L_uᵀ is the Q of G_u's QR (R = L_uᵀ): Haar-random, and then
        # UᵀΣV = L_u^{-1} (G_uᵀ Σ G_v) L_v^{-T} needs only k × k products and solves (no QR, no d × k frame)
        Gu = rng.standard_normal((b, d_out, k))
        Gv = rng.standard_normal((b, d_in, k))
        Lu = np.linalg.cholesky(np.matmul(np.swapaxes(Gu, 1, 2), Gu))  # (b, k, k)
        Lv = np.linalg.cholesky(np.matmul(np.swapaxes(Gv, 1, 2), Gv))
        P = np.matmul(np.swapaxes(Gu[:, :m, :], 1, 2), s[None, :, None] * Gv[:, :m, :])  # (b, k, k)
        X = np.linalg.solve(Lu, P)  # L_u^{-1} P
        Y = np.linalg.solve(Lv, np.swapaxes(X, 1, 2))  # L_v^{-1} Xᵀ = (X L_v^{-T})ᵀ
        out[start:start + b] = np.sqrt(np.sum(Y ** 2, axis=(1, 2)))
    return out


def z_score(effect: float | None, null_mean: float, null_sd: float) -> float:
    """(effect − null_mean) / null_sd; NaN when the effect is missing or the null has no spread.

    Parameters
    ----------
    effect : float or None
    null_mean, null_sd : float
        Mean and standard deviation of the null distribution.

    Returns
    -------
    float

    Examples
    --------
    >>> z_score(0.5, 0.1, 0.1)
    4.0
    """
    if effect is None or null_sd is None or not null_sd > 0 or not np.isfinite(effect):
        return math.nan
    return float((effect - null_mean) / null_sd)


def phi11_tail(phi: ArrayLike, d: int) -> float | np.ndarray:
    """P(φ(1, 1) ≥ phi) between two random lines in R^d: the upper tail of Beta(1/2, (d − 1)/2) (closed form).

    Parameters
    ----------
    phi : float or array_like
    d : int

    Returns
    -------
    float or ndarray

    Examples
    --------
    >>> float(phi11_tail(0.0, 10)), round(float(phi11_tail(1 / 3, 3)), 4)  # d = 3: cos² > 1/3 w.p. 1 - 1/√3
    (1.0, 0.4226)
    """
    from scipy.stats import beta

    d = int(d)
    if d < 2:
        raise InputError(f"d must be >= 2, got {d}")
    return beta.sf(phi, 0.5, (d - 1) / 2.0)


def top1_overlap_tail(phi: ArrayLike, j: int, d: int) -> float | np.ndarray:
    """P(‖P_j u‖² ≥ phi) for a random unit vector u in R^d and a fixed j-dimensional subspace: Beta(j/2, (d − j)/2).

    φ(1, j) between one direction of ΔW and the top-j directions of W has this null (Fig. 8, i = 1).

    Parameters
    ----------
    phi : float or array_like
    j, d : int
        1 ≤ j < d (j = d gives 1 surely: tail 1 for phi ≤ 1).

    Returns
    -------
    float or ndarray
    """
    from scipy.stats import beta

    j, d = int(j), int(d)
    if not 1 <= j <= d:
        raise InputError(f"expected 1 <= j <= d, got j={j}, d={d}")
    if j == d:
        return np.where(np.asarray(phi) <= 1.0, 1.0, 0.0)
    return beta.sf(phi, j / 2.0, (d - j) / 2.0)


def _haar_pair_coeffs(n, k):
    den = (n - 1) * n * (n + 2)
    return k * (n * k + k - 2) / den, k * (n - k) / den


def projection_moments(sigma: ArrayLike, d_out: int, d_in: int, k: int) -> tuple[float, float]:
    """Exact mean and variance of X = ‖Uᵀ W V‖_F² for independent Haar-random U (d_out × k), V (d_in × k).

    From the second moments of a Haar-random rank-k projection P in R^n,
    E[P_ij P_kl] = α δ_ij δ_kl + β (δ_ik δ_jl + δ_il δ_jk) with α = k(nk + k − 2) / ((n − 1) n (n + 2)),
    β = k(n − k) / ((n − 1) n (n + 2)), applied on both sides with T₁ = Σσ², T₂ = Σσ⁴:
    E[X] = k² T₁ / (d_out d_in) and E[X²] = α_o (α_i T₁² + 2 β_i T₂) + 2 β_o ((α_i + β_i) T₂ + β_i T₁²).

    Parameters
    ----------
    sigma : (min(d_out, d_in),) array_like
        W's singular values (all of them).
    d_out, d_in, k : int
        2 ≤ d, 1 ≤ k ≤ min(d_out, d_in).

    Returns
    -------
    (float, float)
        E[X], Var[X].
    """
    s = np.asarray(sigma, dtype=np.float64).ravel()
    d_out, d_in, k = int(d_out), int(d_in), int(k)
    if min(d_out, d_in) < 2 or not 1 <= k <= min(d_out, d_in):
        raise InputError(f"expected d_out, d_in >= 2 and 1 <= k <= min(d), got {d_out}, {d_in}, k={k}")
    t1, t2 = float(np.sum(s ** 2)), float(np.sum(s ** 4))
    ao, bo = _haar_pair_coeffs(d_out, k)
    ai, bi = _haar_pair_coeffs(d_in, k)
    ex = k * k * t1 / (d_out * d_in)
    ex2 = ao * (ai * t1 * t1 + 2 * bi * t2) + 2 * bo * ((ai + bi) * t2 + bi * t1 * t1)
    return ex, max(ex2 - ex * ex, 0.0)


def mc_tail(x: float, draws: ArrayLike) -> float:
    """The Monte Carlo p-value (1 + #{draws ≥ x}) / (1 + n): valid (never below its level under the null) for any n.

    Parameters
    ----------
    x : float
    draws : (n,) array_like

    Returns
    -------
    float
        NaN for a NaN ``x``.

    Examples
    --------
    >>> mc_tail(5.0, [1.0, 2.0, 3.0])
    0.25
    """
    d = np.asarray(draws, dtype=float).ravel()
    if not np.isfinite(x):
        return math.nan
    return float((1 + np.sum(d >= x)) / (1 + d.size))


def adaptive_tail(x: float, draw: Callable[[int, int], np.ndarray], *, n: int = 1000, need: float | None = None,
                  n_max: int = 200_000, seed: int = 0) -> tuple[float, np.ndarray]:
    """:func:`mc_tail` from ``n`` draws, with more draws only where ``x`` lies beyond all of them and ``need`` asks.

    Parameters
    ----------
    x : float
    draw : callable
        ``draw(n, seed) -> (n,) ndarray`` of null draws.
    n : int
        The first draws (the protocol's 1,000).
    need : float, optional
        The smallest p the decision needs resolved (e.g. a Holm step's level); when every draw lies below ``x`` and
        1 / (n + 1) > ``need``, draws are added (new seeds) until the count resolves ``need`` or ``n_max`` is
        reached.
    n_max : int
    seed : int

    Returns
    -------
    p : float
    draws : (n_used,) ndarray
        Every draw made (the first ``n`` first).
    """
    d = np.asarray(draw(n, seed), dtype=float)
    parts, total, extra = [d], d.size, 1
    while (need is not None and np.isfinite(x) and total < n_max and 1.0 / (total + 1) > need
           and np.sum(np.concatenate(parts) >= x) == 0):
        more = min(n_max - total, max(total, int(math.ceil(1.0 / need)) - total))
        parts.append(np.asarray(draw(more, seed + 7919 * extra), dtype=float))
        total += more
        extra += 1
    d = np.concatenate(parts)
    return mc_tail(x, d), d
