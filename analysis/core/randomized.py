"""Seeded randomized top-k SVD of a large dense matrix.

Randomized block Krylov iteration (Musco & Musco, 2015; Halko, Martinsson &
Tropp, 2011, §4.5): the whole Krylov space ``[W Ω, (W Wᵀ) W Ω, …]`` is kept and
a Rayleigh–Ritz step picks the top-k triplets from it. Unlike plain subspace
(power) iteration, which only keeps the last block, it converges on flat
spectra, where neighbouring singular values are close.

Accuracy is set by ``tolerance`` (:func:`krylov_settings`, ``--tolerance`` on the commands): the number of
Krylov iterations that held, on the matrices measured by ``python -m benchmarks.tolerance`` (flat-spectrum
Gaussian 576 × 576 and 2048 × 2048, the hard case; a 4096 × 4096 decaying spectrum; SmolLM2-135M's weights;
k = 1, 8, 24, 64; float64 and float32 products), both

- every singular value: ``max_i |σ_i − σ_i,exact| / σ₁ ≤ tolerance`` over σ₁ … σ_k, and
- every top-j singular subspace, j ≤ k, left and right: ``sin θ_j · (σ_j − σ_{j+1}) / σ₁ ≤ tolerance``, with
  θ_j the largest principal angle to the exact one; that is ``sin θ_j ≤ tolerance · σ₁ / (σ_j − σ_{j+1})``, the
  Davis–Kahan bound of a perturbation of W of norm ``tolerance · σ₁``: where the gap is a fair fraction of σ₁
  the sine itself is about the tolerance; inside near-ties no method defines the vectors, only their span.

The defaults (block ``b = max(2k, k + 10, 48)``, ``n_iter=8``) are the ``1e-3`` setting; below ``1e-6``
LAPACK's full SVD in float64 is used (products in float32 floor the Krylov error near 1e-8 · σ₁). A flat
spectrum larger than those measured converges more slowly. SmolLM2-135M's weights are not much easier on the
subspaces (k = 24: 2e-3 at 1e-2, 4e-4 at the default) and far more accurate on σ; the measured table is in the
README (Performance).

When the Krylov space would span min(d_out, d_in) dimensions or more, the
exact LAPACK SVD is used instead (it is then both cheaper and exact).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.core.lowrank import FactoredSVD, sign_flip
from analysis.errors import InputError

if TYPE_CHECKING:
    from typing import Any

    from numpy.typing import ArrayLike

__all__ = ["randomized_svd", "krylov_settings", "METHODS", "TOLERANCES", "DEFAULT_TOLERANCE", "EXACT",
           "FULL_N_ITER", "work_dtype", "matmul_f64"]

#: Accepted values of ``method``.
METHODS = frozenset({"auto", "krylov", "full"})
_MIN_BLOCK = 48

#: The tolerance ladder, cheapest first: (tolerance, n_iter) with the default oversampling; each met on every
#: matrix measured by ``python -m benchmarks.tolerance`` (the table in the README).
TOLERANCES = ((1e-2, 5), (1e-3, 8), (1e-4, 12), (1e-6, 24))
#: What the defaults of :func:`randomized_svd` (``n_iter=8``, ``oversample=None``) give: ``tolerance=None``.
DEFAULT_TOLERANCE = 1e-3
#: ``tolerance="exact"``: LAPACK's full SVD in float64 (also any tolerance below the last rung).
EXACT = "exact"
#: ``n_iter`` that makes ``method="auto"`` take the full SVD of any matrix with min(d_out, d_in) up to
#: 48 · 2²⁰ (``b (n_iter + 1) >= min(d_out, d_in)``); do not pair it with ``method="krylov"``.
FULL_N_ITER = 2**20
_MAX_TOLERANCE = 0.5


def krylov_settings(tolerance: float | str | None = None) -> dict[str, Any]:
    """Settings of :func:`randomized_svd` that meet ``tolerance``: the cheapest measured rung.

    Parameters
    ----------
    tolerance : float or "exact" or None
        Relative error allowed on each of σ₁ … σ_k (``|σ_i − σ_i,exact| / σ₁``) and, scaled by the relative
        gap, on the top-j singular subspaces (see the module docstring), in (0, 0.5]. None: the defaults
        (``n_iter=8``, ``oversample=None``; :data:`DEFAULT_TOLERANCE`). Below the finest Krylov rung
        (1e-6), or ``"exact"``: LAPACK's full SVD in float64.

    Returns
    -------
    dict
        ``{"n_iter": int, "oversample": int or None}`` for :func:`randomized_svd` (with ``method="auto"``)
        or :func:`~analysis.sweeps.svd_cache.cached_topk_svd`; the full SVD is ``n_iter=FULL_N_ITER``, which
        ``method="auto"`` turns into LAPACK's SVD.

    Raises
    ------
    ValueError
        If ``tolerance`` is not a number in (0, 0.5] (NaN, zero, negative, larger) or ``"exact"``.
    TypeError
        If it is neither a number nor a string.

    Examples
    --------
    >>> krylov_settings()
    {'n_iter': 8, 'oversample': None}
    >>> krylov_settings(1e-2)
    {'n_iter': 5, 'oversample': None}
    >>> krylov_settings(5e-4)  # the cheapest rung at least as accurate: 1e-4
    {'n_iter': 12, 'oversample': None}
    """
    if tolerance is None:
        return {"n_iter": 8, "oversample": None}
    if isinstance(tolerance, str):
        if tolerance.strip().lower() == EXACT:
            return {"n_iter": FULL_N_ITER, "oversample": None}
        raise InputError(f"tolerance must be a number in (0, {_MAX_TOLERANCE}] or {EXACT!r}, got {tolerance!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)):
        raise TypeError(f"tolerance must be a number in (0, {_MAX_TOLERANCE}], {EXACT!r} or None, "
                        f"got {type(tolerance).__name__}")
    t = float(tolerance)
    if not 0.0 < t <= _MAX_TOLERANCE:  # also NaN
        raise InputError(f"tolerance must be in (0, {_MAX_TOLERANCE}] (a relative error, e.g. 1e-4) or "
                         f"{EXACT!r}, got {tolerance!r}")
    for tol, n_iter in TOLERANCES:
        if tol <= t * (1 + 1e-6):  # 1e-2 given in float32 is 1e-2
            return {"n_iter": n_iter, "oversample": None}
    return {"n_iter": FULL_N_ITER, "oversample": None}


def _full(W, k):
    U, S, Vt = np.linalg.svd(W, full_matrices=False)  # (m, q), (q,), (q, n)
    U, V = sign_flip(U[:, :k], Vt[:k].T)
    return FactoredSVD(U, S[:k].copy(), V)


def work_dtype(W: np.ndarray) -> type[np.float32] | type[np.float64]:
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


def matmul_f64(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
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


def randomized_svd(W: ArrayLike, k: int, *, oversample: int | None = None, n_iter: int = 8, seed: int = 0,
                   method: str = "auto") -> FactoredSVD:
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
        with Wᵀ). The Krylov space has ``b (n_iter + 1)`` columns (``"auto"``
        takes the full SVD when that reaches min(d_out, d_in); :data:`FULL_N_ITER`
        always does).
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
    Accuracy: see the module docstring and :func:`krylov_settings` (``**krylov_settings(tolerance)``
    gives ``oversample`` and ``n_iter`` for a tolerance); the defaults are the 1e-3 setting, measured
    on flat (Gaussian) spectra up to 2048 × 2048 and every k; a 576 × 576 Gaussian is within 1e-6 · σ₁.
    The products with W run in W's own precision (float32 for a float32, fp16 or bf16-derived W: its
    data holds no more than that; float64 otherwise); the QRs and SVDs of the small matrices in float64.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.diag([5.0, 4.0, 3.0, 2.0, 1.0])
    >>> randomized_svd(W, 2).S
    array([5., 4.])
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    W = np.asarray(W)
    if W.ndim != 2:
        raise InputError(f"W must be 2-D (d_out, d_in), got shape {W.shape}")
    if W.dtype.kind not in "fiu":
        raise TypeError(f"W must be real, got dtype {W.dtype}")
    m, n = W.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= min(m, n):
        raise InputError(f"k must be an integer in [1, {min(m, n)}] for W of shape {W.shape}, got {k!r}")
    if oversample is None:
        oversample = max(int(k), 10)
    if oversample < 0 or n_iter < 0:
        raise InputError(f"oversample and n_iter must be >= 0, got {oversample} and {n_iter}")
    p = max(int(k) + int(oversample), _MIN_BLOCK)
    if method == "full" or (method == "auto" and p * (n_iter + 1) >= min(m, n)):
        return _full(W.astype(np.float64, copy=False), int(k))
    W = W.astype(work_dtype(W), copy=False)
    p = min(p, min(m, n)) if int(k) + int(oversample) <= min(m, n) else p
    if p > min(m, n):
        raise InputError(f"k + oversample = {p} exceeds min(d_out, d_in) = {min(m, n)} for W of "
                         f"shape {W.shape}; lower oversample or use method='full'")
    return _block_krylov(W, int(k), p, int(n_iter), seed)
