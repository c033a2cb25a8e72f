"""Intruder dimensions (Shuttleworth et al., 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence").

A singular vector y_j of the fine-tuned weight W + ΔW is an *intruder
dimension* when it is close to none of the singular vectors x_i of the base
weight W: max_i |cos(y_j, x_i)| < ε. It is counted over the top k singular
vectors of W + ΔW. Defaults: k = 10, ε = 0.5 and the left (output-side)
singular vectors, the setting of the paper's main text; the absolute value
because singular vectors are defined up to sign.

What it measures: W is (nearly) full rank, so no direction lies outside the
span of its singular vectors; the test asks whether y_j is aligned with a
*single* x_i. A direction spread evenly over m of W's singular vectors scores
1/√m (m ≥ 4 fails ε = 0.5), and a random direction in R^d scores about
√(2 ln d / d). Near-tied singular values of W (or of W + ΔW) make the
individual vectors, hence the count, ill-defined inside the tie.

Cost per module: one thin SVD of W (all its singular vectors are needed; the sweep keeps it in the
persistent cache, :mod:`analysis.sweeps.svd_cache`) and the top k of W + ΔW: by default the top-k
eigenpairs of its Gram matrix on the smaller side, formed from W's Gram and ΔW's factors (ΔW is never
formed), O(d² (d' + k)) and one partial symmetric eigensolve; or the full / randomized SVD of the dense
W + ΔW.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.bases import full_basis
from analysis.core.lowrank import LowRank
from analysis.core.randomized import randomized_svd
from analysis.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    from numpy.typing import ArrayLike

__all__ = ["IntruderResult", "intruder_dimensions", "base_singular_vectors", "INTRUDER_SIDES", "INTRUDER_METHODS"]

INTRUDER_SIDES = ("left", "right")  # W's output / input sides by their aliases (analysis.core.sides)
INTRUDER_METHODS = ("topk", "full", "randomized")


@dataclass(frozen=True)
class IntruderResult:
    """Intruder test of the top singular vectors of W + ΔW for one module.

    Attributes
    ----------
    name : str
    top_k : int
        Number of top singular vectors of W + ΔW tested (≤ min(d_out, d_in)).
    threshold : float
        ε: a vector is an intruder when its max |cos| is below it.
    side : {"left", "right"}
    sigma : (top_k,) ndarray of float64
        Singular values of W + ΔW.
    max_cos : (top_k,) ndarray of float64
        max_i |cos(y_j, x_i)| over all singular vectors x_i of W.
    best_match : (top_k,) ndarray of int
        0-based index (in W's spectrum) of the x_i reaching it.
    zero : bool
        ΔW is exactly zero (then W + ΔW = W and nothing intrudes).
    seconds : float
        Wall time of the computation.
    """

    name: str
    top_k: int
    threshold: float
    side: str
    sigma: np.ndarray
    max_cos: np.ndarray
    best_match: np.ndarray
    zero: bool
    seconds: float

    @property
    def is_intruder(self) -> np.ndarray:
        """(top_k,) bool: which of the top singular vectors are intruders."""
        return self.max_cos < self.threshold

    @property
    def count(self) -> int:
        """Number of intruder dimensions among the top k."""
        return int(np.count_nonzero(self.is_intruder))

    @property
    def ranks(self) -> tuple:
        """1-based positions of the intruders in the spectrum of W + ΔW."""
        return tuple(int(i) + 1 for i in np.flatnonzero(self.is_intruder))

    @property
    def energy_share(self) -> float:
        """Share of Σ_{j≤k} σ_j² carried by the intruders (0 when there are none)."""
        tot = float(np.sum(self.sigma ** 2))
        return float(np.sum(self.sigma[self.is_intruder] ** 2)) / tot if tot > 0 else 0.0

    def to_frame(self) -> pd.DataFrame:
        """One row per tested vector: ``name, j, sigma, max_cos, best_match, intruder``."""
        import pandas as pd

        return pd.DataFrame({"name": self.name, "j": np.arange(1, self.top_k + 1), "sigma": self.sigma,
                             "max_cos": self.max_cos, "best_match": self.best_match + 1,
                             "intruder": self.is_intruder})


def base_singular_vectors(W: ArrayLike, *, side: str = "left") -> np.ndarray:
    """All singular vectors of W on one side (thin SVD, float64).

    Parameters
    ----------
    W : (d_out, d_in) array_like
    side : {"left", "right"}

    Returns
    -------
    (d_out, n) or (d_in, n) ndarray of float64
        n = min(d_out, d_in); columns ordered by W's singular values.
    """
    if side not in INTRUDER_SIDES:
        raise InputError(f"side must be one of {INTRUDER_SIDES}, got {side!r}")

    return full_basis(W, side=side)[0]


def _dense_delta(delta, shape):
    if isinstance(delta, LowRank):
        if delta.shape != shape:
            raise InputError(f"ΔW of {delta.name!r} has shape {delta.shape}, W has {shape}; pass W in the "
                             "nn.Linear orientation (transpose a Conv1D / fan_in_fan_out weight)")
        return None if delta.is_zero else delta.delta()  # (d_out, d_in) float64
    D = np.asarray(delta, dtype=np.float64)
    if D.shape != shape:
        raise InputError(f"ΔW has shape {D.shape}, W has {shape}; they must match")
    return None if not D.any() else D


def _topk_gram(W, P, Q, k, side):
    """Top-k singular values and ``side`` vectors of M = W + P Qᵀ without forming M.

    The Gram matrix of M on its smaller side (M Mᵀ or Mᵀ M) is W's Gram plus rank-2k terms
    (W Q Pᵀ + P Qᵀ Wᵀ + P (QᵀQ) Pᵀ); its top-k eigenpairs (LAPACK ``syevr`` on that subset) give σ² and the
    vectors; the other side's vectors, when asked for, are M V / σ. P: (d_out, q), Q: (d_in, q).
    """
    from scipy.linalg import eigh

    m, n = W.shape
    left = m <= n
    if not left:  # work on Mᵀ = Wᵀ + Q Pᵀ
        W, P, Q = W.T, Q, P
    Wd = W if W.dtype == np.float64 else W.astype(np.float64)
    C = Wd @ Q  # (d, n') @ (n', q) -> (d, q)
    G = Wd @ Wd.T  # (d, n') @ (n', d) -> (d, d)
    QtQ = Q.T @ Q  # (q, q)
    G += C @ P.T  # (d, q) @ (q, d)
    G += P @ C.T
    G += P @ (QtQ @ P.T)  # (d, q) @ (q, d)
    d = G.shape[0]
    lam, Y = eigh(G, subset_by_index=[d - k, d - 1], overwrite_a=True, check_finite=False)  # ascending
    lam, Y = lam[::-1], Y[:, ::-1]
    S = np.sqrt(np.clip(lam, 0.0, None))
    if left == (side == "left"):
        return S, Y
    # the other side: Z = Mᵀ Y / σ (Mᵀ = Wdᵀ + Q Pᵀ in the working orientation)
    Z = Wd.T @ Y + Q @ (P.T @ Y)  # (n', d) @ (d, k) -> (n', k)
    with np.errstate(divide="ignore", invalid="ignore"):
        Z = np.where(S > 0, Z / np.where(S > 0, S, 1.0), 0.0)
    return S, Z


def _topk_in_basis(W, P, Q, X, S_w, k, side):
    """Top-k of M = W + P Qᵀ in the coordinates of W's full singular basis X on ``side``.

    With X (d, d) orthonormal and W's Gram on ``side`` equal to X diag(S_w²) Xᵀ, M's Gram there is
    Xᵀ(M Mᵀ)X = diag(S_w²) + B Aᵀ + A Bᵀ + A (QᵀQ) Aᵀ with A = Xᵀ P, B = Xᵀ W Q (left side; on the right,
    Mᵀ = Wᵀ + Q Pᵀ plays M's part): a diagonal plus rank ≤ 2q. Its top-k eigenvectors Y' are M's top singular
    vectors written in W's basis, so |Y'| are the cosines with every singular vector of W at once. The
    eigenpairs come from Lanczos (ARPACK, matrix-free: O(d q) per product, seeded start) and, for small d or
    if it does not converge, from LAPACK on the formed d × d matrix.

    Returns
    -------
    S : (k,) ndarray
        M's top singular values.
    Yx : (d, k) ndarray
        M's top singular vectors on ``side``, in the basis X (columns of unit norm).
    """
    from scipy.linalg import eigh

    if side == "right":  # Mᵀ = Wᵀ + Q Pᵀ
        W, P, Q = W.T, Q, P
    A = X.T @ P  # (d, d) @ (d, q) -> (d, q)
    B = X.T @ (W @ Q)  # (d, d) @ ((d, n') @ (n', q)) -> (d, q)
    AQ = A @ (Q.T @ Q) + B  # (d, q) @ (q, q) -> (d, q)
    lam = np.asarray(S_w, dtype=np.float64) ** 2  # (d,)
    d = lam.shape[0]
    # G' = diag(λ) + A Bᵀ + (A QᵀQ + B) Aᵀ  (= diag(λ) + B Aᵀ + A Bᵀ + A QᵀQ Aᵀ)
    if d > 4 * k + 40:
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        def apply(x):
            x = x.reshape(d, -1)
            return lam[:, None] * x + A @ (B.T @ x) + AQ @ (A.T @ x)

        op = LinearOperator((d, d), matvec=apply, matmat=apply, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(d)
        try:
            mu, Y = eigsh(op, k=k, which="LA", tol=0, v0=v0)
            order = np.argsort(mu)[::-1]
            return np.sqrt(np.clip(mu[order], 0.0, None)), Y[:, order]
        except ArpackNoConvergence:
            pass
    G = np.diag(lam) + A @ B.T + AQ @ A.T  # (d, d)
    G = (G + G.T) / 2
    mu, Y = eigh(G, subset_by_index=[d - k, d - 1], overwrite_a=True, check_finite=False)  # ascending
    return np.sqrt(np.clip(mu[::-1], 0.0, None)), Y[:, ::-1]


def _factors(delta, shape):
    """ΔW = P Qᵀ from its exact factored SVD (P = U diag(S), Q = V), or (None, None) when it is zero."""
    if isinstance(delta, LowRank):
        if delta.shape != shape:
            raise InputError(f"ΔW of {delta.name!r} has shape {delta.shape}, W has {shape}; pass W in the "
                             "nn.Linear orientation (transpose a Conv1D / fan_in_fan_out weight)")
        if delta.is_zero:
            return None, None
        U, S, V = delta.svd()  # (d_out, k), (k,), (d_in, k), scale included
        return U * S, V
    D = _dense_delta(delta, shape)
    if D is None:
        return None, None
    U, S, Vt = np.linalg.svd(D, full_matrices=False)
    keep = S > S[0] * max(shape) * np.finfo(np.float64).eps
    return U[:, keep] * S[keep], Vt[keep].T


def intruder_dimensions(W: ArrayLike, delta: LowRank | ArrayLike, *, top_k: int = 10, threshold: float = 0.5,
                        side: str = "left", method: str = "topk", seed: int = 0,
                        base_vectors: np.ndarray | None = None, base_singular_values: np.ndarray | None = None,
                        name: str = "") -> IntruderResult:
    """Count the intruder dimensions among the top-k singular vectors of W + ΔW.

    Parameters
    ----------
    W : (d_out, d_in) array_like
        The base weight, nn.Linear orientation.
    delta : LowRank or (d_out, d_in) array_like
        The update ΔW (scale included).
    top_k : int
        How many top singular vectors of W + ΔW to test (clipped to
        min(d_out, d_in)).
    threshold : float in (0, 1]
        ε of the definition.
    side : {"left", "right"}
        Left (output-side, R^d_out) or right (input-side) singular vectors.
    method : {"topk", "full", "randomized"}
        Top-k of W + ΔW: ``"topk"`` (default) the top-k eigenpairs of its Gram matrix on the smaller
        side, formed from W's Gram and ΔW's factors (ΔW never formed; exact to rounding); ``"full"``:
        LAPACK's full SVD of the dense W + ΔW; ``"randomized"``: :func:`~analysis.core.randomized_svd`
        with ``seed``.
    seed : int
    base_vectors : (d, n) ndarray, optional
        W's singular vectors on ``side`` if already computed
        (:func:`base_singular_vectors`, or the persistent cache: :mod:`analysis.sweeps.svd_cache`).
    base_singular_values : (n,) ndarray, optional
        W's singular values, when ``base_vectors`` is given (used when ΔW is zero).
    name : str

    Returns
    -------
    IntruderResult

    Examples
    --------
    >>> import numpy as np
    >>> W = np.diag([4.0, 3.0, 1.0, 1.0])
    >>> u = np.array([0, 0, 1.0, 1.0]) / np.sqrt(2)      # spread over W's 3rd and 4th vectors
    >>> res = intruder_dimensions(W, 10 * np.outer(u, u), top_k=2)
    >>> res.sigma.round(3), res.max_cos.round(3), res.count
    (array([11.,  4.]), array([0.707, 1.   ]), 0)
    >>> intruder_dimensions(W, 10 * np.outer(u, u), top_k=2, threshold=0.75).ranks
    (1,)
    """
    t0 = time.perf_counter()
    if side not in INTRUDER_SIDES:
        raise InputError(f"side must be one of {INTRUDER_SIDES}, got {side!r}")
    if method not in INTRUDER_METHODS:
        raise InputError(f"method must be one of {INTRUDER_METHODS}, got {method!r}")
    if not 0 < threshold <= 1:
        raise InputError(f"threshold must be in (0, 1], got {threshold!r}")
    if int(top_k) != top_k or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise InputError(f"W must be 2-D (d_out, d_in), got shape {W.shape}")
    if not np.isfinite(W).all():
        raise InputError(f"W of {name or 'the module'} contains NaN or Inf")
    k = min(int(top_k), *W.shape)
    if method == "topk":
        P, Q = _factors(delta, W.shape)
        zero = P is None
    else:
        D = _dense_delta(delta, W.shape)
        zero = D is None
    if zero:  # W + ΔW = W: its singular vectors are W's own
        S = (np.linalg.svd(W, compute_uv=False) if base_singular_values is None
             else np.asarray(base_singular_values, np.float64))[:k]
        return IntruderResult(name, k, float(threshold), side, S, np.ones(k), np.arange(k), True,
                              time.perf_counter() - t0)
    X = base_singular_vectors(W, side=side) if base_vectors is None else np.asarray(base_vectors, np.float64)
    d_side = W.shape[0] if side == "left" else W.shape[1]
    if (method == "topk" and base_singular_values is not None and X.shape == (d_side, d_side)
            and d_side <= min(W.shape)):  # W's full basis on its smaller side: work in its coordinates
        S, Yx = _topk_in_basis(W, P, Q, X, np.asarray(base_singular_values, np.float64), k, side)  # (k,), (d, k)
        C = np.abs(Yx)  # (d, k): |cos| between every base vector and every top vector
        return IntruderResult(name, k, float(threshold), side, S, np.clip(C.max(axis=0), 0.0, 1.0),
                              C.argmax(axis=0), False, time.perf_counter() - t0)
    if method == "topk":
        S, Y = _topk_gram(W, P, Q, k, side)  # (k,), (d, k)
    elif method == "full":
        M = W + D  # (d_out, d_in)
        U, S, Vt = np.linalg.svd(M, full_matrices=False)  # (d_out, n), (n,), (n, d_in)
        Y = U[:, :k] if side == "left" else Vt[:k].T  # (d, k)
        S = S[:k]
    else:
        U, S, V = randomized_svd(W + D, k, seed=seed)  # (d_out, k), (k,), (d_in, k)
        Y = U if side == "left" else V
    if X.shape[0] != Y.shape[0]:
        raise InputError(f"base_vectors have {X.shape[0]} rows, expected {Y.shape[0]} ({side} side)")
    C = np.abs(X.T @ Y)  # (n, k): |cos| between every base vector and every top vector
    return IntruderResult(name, k, float(threshold), side, np.asarray(S, dtype=np.float64),
                          np.clip(C.max(axis=0), 0.0, 1.0), C.argmax(axis=0), False, time.perf_counter() - t0)
