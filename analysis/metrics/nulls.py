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
  W's singular values σ, not W.

Random frames are drawn as U = G L^{-T} with G Gaussian and GᵀG = L Lᵀ: the Q factor of G's QR, hence
Haar-random, from k × k Cholesky factors and matrix products only (batched LAPACK QR of d × k matrices is
tens of times slower on a busy machine).

References: the LoRA paper, Section 7 (random baselines of Fig. 3, 4, 8 and Table 7); for the Beta law of
cos² between random directions, e.g. Muirhead, *Aspects of Multivariate Statistical Theory* (1982), §1.5.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["phi11_null", "diagonal_phi_draws", "projection_draws", "z_score"]

_BATCH = 64  # draws per batched QR: bounds memory at _BATCH · d · k doubles


def phi11_null(d):
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
        raise ValueError(f"d must be >= 2, got {d}")
    return 1.0 / d, math.sqrt(2.0 * (d - 1) / (d * d * (d + 2.0)))


def _haar_rows(rng, n, d, k, rows):
    """The first ``rows`` rows of ``n`` Haar-random orthonormal d × k frames, shape (n, rows, k).

    A frame is U = G L^{-T} for a Gaussian G (d × k) with GᵀG = L Lᵀ (Cholesky): U is the Q of G's QR with
    R = Lᵀ, hence Haar-random; only k × k factorisations and matrix products are needed (no d × k QR).
    """
    G = rng.standard_normal((n, d, k))
    L = np.linalg.cholesky(np.matmul(np.swapaxes(G, 1, 2), G))  # (n, k, k)
    return np.swapaxes(np.linalg.solve(L, np.swapaxes(G[:, :rows, :], 1, 2)), 1, 2)  # (G[:rows] L^{-T})


def diagonal_phi_draws(d, k, *, n=1000, seed=0):
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
        raise ValueError(f"expected 1 <= k <= d and n >= 1, got d={d}, k={k}, n={n}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, k))
    i = np.arange(1, k + 1)
    for start in range(0, n, _BATCH):
        m = min(_BATCH, n - start)
        M = _haar_rows(rng, m, d, k, k)  # (m, k, k): the other frame is the first k axes
        out[start:start + m] = np.cumsum(np.cumsum(M ** 2, axis=1), axis=2)[:, i - 1, i - 1] / i
    return out


def projection_draws(sigma, d_out, d_in, k, *, n=1000, seed=0):
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
        raise ValueError(f"expected all {m} singular values of a {d_out} x {d_in} W, got {s.size}")
    if not 1 <= k <= m or n < 1:
        raise ValueError(f"expected 1 <= k <= {m} and n >= 1, got k={k}, n={n}")
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


def z_score(effect, null_mean, null_sd):
    """(effect − null_mean) / null_sd; NaN when the effect is missing or the null has no spread.

    >>> z_score(0.5, 0.1, 0.1)
    4.0
    """
    if effect is None or null_sd is None or not null_sd > 0 or not np.isfinite(effect):
        return math.nan
    return float((effect - null_mean) / null_sd)
