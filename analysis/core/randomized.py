"""Seeded randomized top-k SVD of a large dense matrix.

Randomized block Krylov iteration (Musco & Musco, 2015; Halko, Martinsson &
Tropp, 2011, §4.5): the whole Krylov space ``[W Ω, (W Wᵀ) W Ω, …]`` is kept and
a Rayleigh–Ritz step picks the top-k triplets from it. Unlike plain subspace
(power) iteration, which only keeps the last block, it converges on flat
spectra, where neighbouring singular values are close.

Tolerance with the defaults (block ``b = max(2k, k + 10, 48)``, ``n_iter=8``), as tests/test_randomized.py
checks against LAPACK's full SVD: ≤ 1e-6 · σ₁ on every σ₁ … σ_k, for any k, on flat (Gaussian) and decaying
spectra, in float64 and with float32 products. Singular vectors inside near-ties are not well defined by any
method; their span is. The accuracy measured on real weights and larger matrices is in the README
(Performance).

When the Krylov space would span min(d_out, d_in) dimensions or more, the
exact LAPACK SVD is used instead (it is then both cheaper and exact).
"""

from __future__ import annotations

import numpy as np

from analysis.core.lowrank import FactoredSVD, sign_flip

__all__ = ["randomized_svd", "METHODS", "work_dtype", "matmul_f64"]

#: Accepted values of ``method``.
METHODS = frozenset({"auto", "krylov", "full"})
_MIN_BLOCK = 48


def _full(W, k):
    U, S, Vt = np.linalg.svd(W, full_matrices=False)  # (m, q), (q,), (q, n)
    U, V = sign_flip(U[:, :k], Vt[:k].T)
    return FactoredSVD(U, S[:k].copy(), V)


def work_dtype(W):
    """Precision of the products with a large matrix W: its own for float32 and below, float64 otherwise.

    Parameters
    ----------
    W : ndarray

    Returns
    -------
    numpy dtype class
        ``np.float32`` or ``np.float64``.
    """
    return np.float32 if W.dtype.kind == "f" and W.dtype.itemsize <= 4 else np.float64


def matmul_f64(X, Y):
    """``X @ Y`` in X's precision (see :func:`work_dtype`), returned in float64.

    The large products with a base weight run in its own precision; the small factorisations that follow
    stay in float64.

    Parameters
    ----------
    X : (m, n) ndarray
    Y : (n, p) ndarray

    Returns
    -------
    (m, p) ndarray of float64
    """
    return (X @ Y.astype(X.dtype, copy=False)).astype(np.float64, copy=False)


def _block_krylov(W, k, p, n_iter, seed):
    m, n = W.shape
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(matmul_f64(W, rng.standard_normal((n, p))))[0]  # (m, n) @ (n, p) -> (m, p)
    blocks = [Q]
    for _ in range(n_iter):
        Z = np.linalg.qr(matmul_f64(W.T, Q))[0]  # (n, m) @ (m, p) -> (n, p)
        Q = np.linalg.qr(matmul_f64(W, Z))[0]  # (m, n) @ (n, p) -> (m, p)
        blocks.append(Q)
    K = np.linalg.qr(np.hstack(blocks))[0]  # (m, P), orthonormal, P = p (n_iter + 1)
    Bs = matmul_f64(W.T, K).T  # ((n, m) @ (m, P))ᵀ -> (P, n) = Kᵀ W
    Ub, S, Vt = np.linalg.svd(Bs, full_matrices=False)  # (P, P), (P,), (P, n)
    U = K @ Ub[:, :k]  # (m, P) @ (P, k) -> (m, k)
    U, V = sign_flip(U, Vt[:k].T)
    return FactoredSVD(U, S[:k].copy(), V)


def randomized_svd(W, k, *, oversample=None, n_iter=8, seed=0, method="auto"):
    """Top-k singular triplets of ``W``, seeded and deterministic.

    Parameters
    ----------
    W : (d_out, d_in) array_like
        The matrix (e.g. a base weight); converted to float64.
    k : int
        Number of singular triplets, 1 ≤ k ≤ min(d_out, d_in).
    oversample : int, optional
        Block size is ``b = max(k + oversample, 48)``; default oversample =
        max(k, 10), i.e. b = max(2k, k + 10, 48) (a floor of 48 columns keeps
        small k accurate on flat spectra; the cost is small).
    n_iter : int
        Krylov blocks after the first (each costs one product with W and one
        with Wᵀ). The Krylov space has ``b (n_iter + 1)`` columns.
    seed : int
        Seed of the Gaussian starting block.
    method : {"auto", "krylov", "full"}
        ``"krylov"``: randomized block Krylov; ``"full"``: LAPACK SVD of the
        whole matrix; ``"auto"``: Krylov unless its space would span
        min(d_out, d_in) dimensions, then full.

    Returns
    -------
    FactoredSVD
        U (d_out, k), S (k,), V (d_in, k), float64, with the sign convention
        of :func:`~analysis.core.sign_flip`.

    Notes
    -----
    Tolerance with the defaults: ≤ 1e-6 relative on each σ₁ … σ_k for any k
    on a flat (Gaussian) 576 × 576 spectrum; see the module docstring for
    larger matrices. The products with W run in W's own precision (float32
    for a float32, fp16 or bf16-derived W: its data holds no more than that;
    float64 otherwise); the QRs and SVDs of the small matrices in float64.
    For a float32 W the error is then of order 1e-6 · σ₁.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.diag([5.0, 4.0, 3.0, 2.0, 1.0])
    >>> randomized_svd(W, 2).S
    array([5., 4.])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (d_out, d_in), got shape {W.shape}")
    if W.dtype.kind not in "fiu":
        raise TypeError(f"W must be real, got dtype {W.dtype}")
    m, n = W.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= min(m, n):
        raise ValueError(f"k must be an integer in [1, {min(m, n)}] for W of shape {W.shape}, got {k!r}")
    if oversample is None:
        oversample = max(int(k), 10)
    if oversample < 0 or n_iter < 0:
        raise ValueError(f"oversample and n_iter must be >= 0, got {oversample} and {n_iter}")
    p = max(int(k) + int(oversample), _MIN_BLOCK)
    if method == "full" or (method == "auto" and p * (n_iter + 1) >= min(m, n)):
        return _full(W.astype(np.float64, copy=False), int(k))
    W = W.astype(work_dtype(W), copy=False)
    p = min(p, min(m, n)) if int(k) + int(oversample) <= min(m, n) else p
    if p > min(m, n):
        raise ValueError(f"k + oversample = {p} exceeds min(d_out, d_in) = {min(m, n)} for W of "
                         f"shape {W.shape}; lower oversample or use method='full'")
    return _block_krylov(W, int(k), p, int(n_iter), seed)
