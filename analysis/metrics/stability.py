"""How many leading directions two updates share beyond chance (for rank advice).

For orthonormal bases U₁ (d, k₁), U₂ (d, k₂) ordered by importance and each
prefix size i ≤ cap = min(k₁, k₂), take the principal angles between the
top-i prefixes span(U₁[:, :i]) and span(U₂[:, :i]): their squared cosines
c_1(i) ≥ … ≥ c_i(i) are the squared singular values of the i × i block of
M = U₁ᵀ U₂ (note Σ_a c_a(i) = i · φ(i, i)). A cosine counts as shared when
it exceeds what two *random* i-dimensional subspaces of R^d reach at most:
the mean + n·sd of their largest squared principal cosine (seeded Monte
Carlo; for i = 1 this is φ(1, 1)'s null, 1/d and ≈ √2/d). Then

- n(i) = number of shared cosines between the top-i prefixes;
- ``shared`` = max_i n(i), the number of directions the two updates share;
- ``needed`` = the smallest i with n(i) = shared: the prefix (rank) that
  holds all of them (≥ shared when the two orders differ).

Why not the diagonal φ(i, i) > i/d + n·√2/d (``SimilarityResult.shared_dims``):
φ(i, i) averages over the prefix, so one shared top direction keeps
φ(i, i) ≥ 1/i above that null up to i ≈ d / (n√2) — every prefix of a LoRA
looks shared. Counting principal angles counts directions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.errors import InputError
from analysis.metrics.similarity import check_orthonormal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pandas as pd
    from numpy.typing import ArrayLike

__all__ = ["PrefixStability", "prefix_stability", "random_max_cos2", "stability_from_overlap", "null_store"]


def _top_blocks(rng, n, d, k):
    """``n`` draws of Q[:k, :k] for Q (d, k) from the QR of a Gaussian (d, k) matrix G, in O(k³) each.

    Q = G R⁻¹ with R the Cholesky factor of Gᵀ G = G₁ᵀ G₁ + G₂ᵀ G₂ (G₁ = G[:k]); G₂ᵀ G₂ is
    Wishart(d − k, I_k), drawn by Bartlett's decomposition, so d never enters the cost. R⁻¹ is upper
    triangular: Q[:, :i] spans G[:, :i] for every prefix i, as with a QR. Needs d ≥ 2k.
    """
    G1 = rng.standard_normal((n, k, k))  # (n, k, k): the first k rows of G
    idx = np.arange(k)
    T = np.tril(rng.standard_normal((n, k, k)), -1)  # Bartlett: G₂ᵀ G₂ = T Tᵀ
    T[:, idx, idx] = np.sqrt(rng.chisquare(d - k - idx, size=(n, k)))
    L = np.linalg.cholesky(G1.transpose(0, 2, 1) @ G1 + T @ T.transpose(0, 2, 1))  # Gᵀ G = L Lᵀ, R = Lᵀ
    return np.linalg.solve(L, G1.transpose(0, 2, 1)).transpose(0, 2, 1)  # G₁ R⁻¹ = (L⁻¹ G₁ᵀ)ᵀ


#: The store :func:`null_store` plugged in (innermost last): ``(get, put)`` pairs.
_STORES: list[tuple[Callable[[tuple], Any], Callable[[tuple, tuple[np.ndarray, np.ndarray]], Any]]] = []


@contextlib.contextmanager
def null_store(get: Callable[[tuple], tuple[np.ndarray, np.ndarray] | None],
               put: Callable[[tuple, tuple[np.ndarray, np.ndarray]], Any]) -> Iterator[None]:
    """Inside the block, look the Monte-Carlo nulls of :func:`random_max_cos2` up in a store before drawing them.

    A null costs about a second at k = 64 (k batched SVDs of ``trials`` blocks); a persistent store (the sweeps'
    cache, :func:`analysis.sweeps.svd_cache.cached_stability_nulls`) makes it a file read. The values are the
    same either way: the store only keeps what was drawn.

    Parameters
    ----------
    get : callable
        ``get(key) -> (mean, sd) or None``; ``key`` is ``("max_cos2", d, k, trials, seed)``.
    put : callable
        ``put(key, (mean, sd))``, after a null was drawn.
    """
    _STORES.append((get, put))
    try:
        yield
    finally:
        _STORES.remove((get, put))


@lru_cache(maxsize=64)
def _null(d, k, trials, seed):
    key = ("max_cos2", d, k, trials, seed)
    store = _STORES[-1] if _STORES else None
    if store is not None:
        got = store[0](key)
        if got is not None:
            return got
    mean, sd = _draw_null(d, k, trials, seed)
    if store is not None:
        store[1](key, (mean, sd))
    return mean, sd


def _draw_null(d, k, trials, seed):
    rng = np.random.default_rng(seed)
    if d >= 2 * k:
        Q1 = _top_blocks(rng, trials, d, k)  # (trials, k, k)
    else:  # small d: the QR itself is cheap
        Q1 = np.linalg.qr(rng.standard_normal((trials, d, k)))[0][:, :k, :k]  # (trials, k, k)
    top = np.empty((trials, k))
    for i in range(1, k + 1):
        # against the first k coordinate axes: principal cosines of prefix i = singular values of Q[:i, :i]
        top[:, i - 1] = np.linalg.svd(Q1[:, :i, :i], compute_uv=False)[:, 0] ** 2  # (trials,)
    return top.mean(axis=0), top.std(axis=0, ddof=1)


def random_max_cos2(d: int, k: int, *, trials: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the largest squared principal cosine between random subspaces.

    Parameters
    ----------
    d : int
        Ambient dimension.
    k : int
        Largest prefix size.
    trials : int
        Monte-Carlo draws (cached per arguments).
    seed : int

    Returns
    -------
    mean, sd : (k,) ndarray of float64
        Entry ``i-1``: over two uniformly random i-dimensional subspaces of R^d.
        For i = 1 the exact values are 1/d and √(2(d−1)) / (d √(d+2)).
    """
    if not (1 <= k <= d):
        raise InputError(f"need 1 <= k <= d, got k={k}, d={d}")
    mean, sd = _null(int(d), int(k), int(trials), int(seed))
    return mean.copy(), sd.copy()


@dataclass(frozen=True)
class PrefixStability:
    """Shared leading directions of two ordered bases.

    Attributes
    ----------
    cos2 : (cap, cap) ndarray of float64
        Row ``i-1``: squared principal cosines between the top-i prefixes,
        descending, NaN-padded after i.
    threshold : (cap,) ndarray of float64
        Mean + n_std · sd of the largest squared cosine of random i-prefixes.
    counts : (cap,) ndarray of int
        n(i): cosines of prefix i above its threshold.
    shared : int
        max_i n(i).
    needed : int
        Smallest i with n(i) = shared (0 when nothing is shared).
    d, cap : int
    n_std : float
    """

    cos2: np.ndarray
    threshold: np.ndarray
    counts: np.ndarray
    shared: int
    needed: int
    d: int
    cap: int
    n_std: float

    @property
    def at_cap(self) -> bool:
        """True when every prefix direction up to the cap is shared (the need may be larger)."""
        return self.cap > 0 and self.shared == self.cap

    def to_frame(self) -> pd.DataFrame:
        """One row per prefix i: ``i, count, threshold, top_cos2, min_cos2``."""
        import pandas as pd

        i = np.arange(1, self.cap + 1)
        return pd.DataFrame({"i": i, "count": self.counts, "threshold": self.threshold,
                             "top_cos2": self.cos2[:, 0] if self.cap else np.zeros(0),
                             "min_cos2": self.cos2[i - 1, i - 1] if self.cap else np.zeros(0)})


def prefix_stability(U1: ArrayLike, U2: ArrayLike, *, n_std: float = 3.0, trials: int = 200,
                     seed: int = 0) -> PrefixStability:
    """Count the leading directions two ordered orthonormal bases share.

    Parameters
    ----------
    U1 : (d, k1) array_like
    U2 : (d, k2) array_like
        Orthonormal columns in the same R^d, each ordered by importance
        (e.g. ``LowRank.basis("output")``).
    n_std : float
        Threshold = mean + n_std · sd of the random null.
    trials, seed
        Of the Monte-Carlo null, see :func:`random_max_cos2`.

    Returns
    -------
    PrefixStability

    Examples
    --------
    >>> import numpy as np
    >>> Q = np.linalg.qr(np.random.default_rng(0).standard_normal((200, 8)))[0]
    >>> U1, U2 = Q[:, :4], Q[:, [0, 1, 4, 5]]          # the first two columns shared
    >>> st = prefix_stability(U1, U2)
    >>> st.shared, st.needed, st.counts.tolist()
    (2, 2, [1, 2, 2, 2])
    """
    U1 = check_orthonormal(U1, "U1")
    U2 = check_orthonormal(U2, "U2")
    if U1.shape[0] != U2.shape[0]:
        raise InputError(f"U1 has {U1.shape[0]} rows and U2 has {U2.shape[0]}; compare bases of the same space")
    if not (np.isfinite(n_std) and n_std >= 0):
        raise InputError(f"n_std must be a non-negative number, got {n_std!r}")
    cap = min(U1.shape[1], U2.shape[1])
    return stability_from_overlap(U1[:, :cap].T @ U2[:, :cap], U1.shape[0], n_std, trials, seed)  # (cap, cap)


#: Prefixes whose blocks are factorised in one batch (:func:`stability_from_overlap`).
_PREFIX_GROUP = 8


def stability_from_overlap(M: np.ndarray, d: int, n_std: float = 3.0, trials: int = 200,
                           seed: int = 0) -> PrefixStability:
    """:func:`prefix_stability` from the products M = U1ᵀ U2 of two ordered orthonormal bases of R^d.

    Parameters
    ----------
    M : (k1, k2) ndarray
    d : int
        Dimension of the space.
    n_std, trials, seed
        As for :func:`prefix_stability`.

    Returns
    -------
    PrefixStability
    """
    cap = min(M.shape)
    if cap == 0:
        z = np.zeros(0)
        return PrefixStability(np.zeros((0, 0)), z, np.zeros(0, dtype=int), 0, 0, d, 0, float(n_std))
    # every prefix block M[:i, :i], zero-padded to the width of its group of _PREFIX_GROUP prefixes: one batched SVD
    # per group (the padding adds zero singular values only; a quarter of the work of padding all to cap)
    i = np.arange(1, cap + 1)
    sv = np.zeros((cap, cap))
    for lo in range(0, cap, _PREFIX_GROUP):
        w = min(lo + _PREFIX_GROUP, cap)
        ks = i[lo:w]
        keep = (np.arange(w)[None, :, None] < ks[:, None, None]) & (np.arange(w)[None, None, :] < ks[:, None, None])
        sv[lo:w, :w] = np.linalg.svd(np.where(keep, M[None, :w, :w], 0.0), compute_uv=False)
    cos2 = np.clip(sv ** 2, 0.0, 1.0)  # (cap, cap), descending rows
    cos2[np.arange(cap)[None, :] >= i[:, None]] = np.nan  # prefix i has i cosines
    mean, sd = random_max_cos2(d, cap, trials=trials, seed=seed)
    thr = mean + n_std * sd  # (cap,)
    counts = np.count_nonzero(cos2 > thr[:, None], axis=1)  # NaN compares False
    shared = int(counts.max())
    needed = int(np.argmax(counts == shared)) + 1 if shared else 0
    return PrefixStability(cos2, thr, counts, shared, needed, d, cap, float(n_std))
