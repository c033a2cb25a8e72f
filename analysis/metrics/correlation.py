"""How an update ΔW relates to the frozen weight W (Section 7.3, Table 7, Fig. 8 of the LoRA paper).

Two questions, each a pure function returning a frozen dataclass:

* :func:`weight_correlation` (Table 7): project W onto an r-dimensional pair of
  subspaces, ‖Uᵀ W V‖_F, with U, V the top-r left / right singular vectors of
  (1) ΔW (from its factors, exactly), (2) W itself (seeded randomized SVD),
  (3) uniformly random subspaces (seeded draws). Next to ‖W‖_F and ‖ΔW‖_F, and
  the amplification factor ‖ΔW‖_F / ‖U_ΔWᵀ W V_ΔW‖_F.
* :func:`weight_overlap` (Fig. 8): φ(i, j) between W's top-i singular
  directions and ΔW's top-j, on the output (left) or input (right) side, for
  i down W's spectrum, with the random null max(i, j) / d.

Closed forms (tested): case (2) is √(σ₁² + … + σ_r²) of W; for case (3)
E‖Uᵀ W V‖_F² = ‖W‖_F² r² / (d_out d_in), so ‖Uᵀ W V‖_F ≈ ‖W‖_F r / √(d_out d_in).
ΔW is never formed: only its (d, r) singular bases are used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.lowrank import FactoredSVD, LowRank
from analysis.core.randomized import matmul_f64, randomized_svd, work_dtype
from analysis.errors import InputError
from analysis.metrics.similarity import phi_grid, random_null, random_null_std
from analysis.core.sides import MATRIX_SIDES

if TYPE_CHECKING:
    from typing import Any

    import pandas as pd
    from numpy.typing import ArrayLike

__all__ = ["WeightCorrelation", "weight_correlation", "random_projections", "WeightOverlap", "weight_overlap",
           "projection_norm", "random_bases", "OVERLAP_SIDES", "check_weight", "check_weight_shape",
           "correlation_checked", "overlap_checked", "as_array", "frobenius"]

#: Sides of Fig. 8: ``"output"`` = left singular vectors (R^d_out), ``"input"`` = right (R^d_in).
OVERLAP_SIDES = MATRIX_SIDES  # left = output, right = input (analysis.core.sides)


def check_weight_shape(W: np.ndarray, lr: LowRank, name: str | None = None) -> None:
    """Refuse a base weight whose shape is not ΔW's (naming the module, with a hint when it is transposed).

    Parameters
    ----------
    W : (d_out, d_in) array_like or StoredMatrix
    lr : LowRank
    name : str, optional

    Raises
    ------
    ValueError
    """
    if tuple(W.shape) != tuple(lr.shape):
        hint = (" (W looks transposed: pass W.T, e.g. for a GPT-2 Conv1D weight)"
                if tuple(W.shape[::-1]) == tuple(lr.shape) else "")
        raise InputError(f"module {name or lr.name!r}: base weight W has shape {W.shape} but ΔW has "
                         f"shape {lr.shape} (d_out, d_in); pass the base weight of the same module "
                         f"in nn.Linear orientation{hint}")


def check_weight(W: ArrayLike, lr: LowRank | None = None, name: str | None = None) -> np.ndarray:
    """``W`` as a real 2-D array, checked against ΔW's shape (when ``lr`` is given) and for NaN / Inf.

    Parameters
    ----------
    W : (d_out, d_in) array_like
    lr : LowRank, optional
    name : str, optional

    Returns
    -------
    (d_out, d_in) ndarray
    """
    W = np.asarray(W)
    if W.ndim != 2:
        raise InputError(f"W must be a 2-D (d_out, d_in) base weight, got shape {W.shape}")
    if W.dtype.kind not in "fiu":
        raise TypeError(f"W must be real, got dtype {W.dtype}")
    if lr is not None:
        check_weight_shape(W, lr, name)
    # products with W run in its own precision (float32 for float32 / bf16 / fp16 weights), see _projections
    W = W.astype(work_dtype(W), copy=False)
    if not np.isfinite(W).all():
        raise InputError(f"W of shape {W.shape} contains NaN or Inf")
    return W


def projection_norm(W: ArrayLike, U: ArrayLike, V: ArrayLike) -> float:
    """‖Uᵀ W V‖_F: the part of W seen through a pair of subspaces.

    Parameters
    ----------
    W : (d_out, d_in) array_like
    U : (d_out, k) array_like
        Orthonormal columns (output side).
    V : (d_in, k2) array_like
        Orthonormal columns (input side).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> float(projection_norm(np.diag([3.0, 2.0, 1.0]), np.eye(3)[:, :2], np.eye(3)[:, :2]))
    3.605551275463989
    """
    W = check_weight(W)
    U, V = np.asarray(U, dtype=np.float64), np.asarray(V, dtype=np.float64)
    if U.ndim != 2 or V.ndim != 2 or U.shape[0] != W.shape[0] or V.shape[0] != W.shape[1]:
        raise InputError(f"expected U (d_out={W.shape[0]}, k) and V (d_in={W.shape[1]}, k) for W of "
                         f"shape {W.shape}, got U {U.shape} and V {V.shape}")
    return _projections(W, [(U, V)])[0]


def _projections(W, pairs):
    """‖Uᵢᵀ W Vᵢ‖_F for several pairs (Uᵢ, Vᵢ) in one pass over W: W @ [V₁ V₂ …] in W's precision.

    ``W`` is a checked ndarray or a :class:`~analysis.io.stored.StoredMatrix` (widened block by block).
    """
    WV = matmul_f64(W, np.hstack([V for _, V in pairs]))  # (d_out, d_in) @ (d_in, Σk) -> (d_out, Σk)
    out, j = [], 0
    for U, V in pairs:
        k = V.shape[1]
        out.append(float(np.linalg.norm(U.T @ WV[:, j:j + k])))  # (k, d_out) @ (d_out, k) -> (k, k)
        j += k
    return out


def random_bases(d_out: int, d_in: int, k: int, *, seed: int = 0,
                 n: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Uniformly random orthonormal bases, seeded (spans of Gaussian matrices).

    Parameters
    ----------
    d_out, d_in, k : int
    seed : int
    n : int
        Number of independent pairs.

    Returns
    -------
    list of ((d_out, k) ndarray, (d_in, k) ndarray)
    """
    return _draw_bases(np.random.default_rng(seed), d_out, d_in, k, n)


def _draw_bases(rng, d_out, d_in, k, n):
    """The next ``n`` pairs of :func:`random_bases`' stream from ``rng`` (U then V, pair by pair)."""
    out = []
    for _ in range(n):
        U = np.linalg.qr(rng.standard_normal((d_out, k)))[0]  # (d_out, k)
        V = np.linalg.qr(rng.standard_normal((d_in, k)))[0]  # (d_in, k)
        out.append((U, V))
    return out


#: Columns of random bases projected at once by :func:`random_projections` (memory about 3 · d · this doubles).
PROJECTION_COLUMNS = 4096


@dataclass(frozen=True)
class WeightCorrelation:
    """Table 7 for one module: W projected on the subspaces of ΔW, of W, of random.

    Attributes
    ----------
    name : str
    r : int
        Stored LoRA rank.
    k : int
        Directions used: ΔW's numerical rank (= r unless ΔW is rank-deficient;
        0 for a zero update).
    d_out, d_in : int
    w_norm : float
        ‖W‖_F.
    delta_norm : float
        ‖ΔW‖_F, scale included (NaN when α is unknown).
    proj_delta : float
        ‖U_ΔWᵀ W V_ΔW‖_F with U, V the top-k singular vectors of ΔW.
    proj_w : float
        ‖U_Wᵀ W V_W‖_F with U, V the top-k singular vectors of W
        (= √(σ₁² + … + σ_k²) of W).
    proj_random, proj_random_std : float
        Mean and standard deviation over ``n_random`` random pairs of k-dim subspaces.
    proj_random_rms : float
        Root mean square over the draws: its square estimates E‖Uᵀ W V‖_F²
        = ‖W‖_F² k² / (d_out d_in) without bias (the mean itself is lower by
        Jensen's inequality, by up to √(2/π) at k = 1).
    proj_random_expected : float
        ‖W‖_F k / √(d_out d_in), the closed form of case (3) (√ of the expected square).
    n_random, seed : int
    zero : bool
        ΔW is exactly zero (no subspace; amplification undefined).
    """

    name: str
    r: int
    k: int
    d_out: int
    d_in: int
    w_norm: float
    delta_norm: float
    proj_delta: float
    proj_w: float
    proj_random: float
    proj_random_std: float
    proj_random_rms: float
    proj_random_expected: float
    n_random: int
    seed: int
    zero: bool = False

    @property
    def amplification(self) -> float:
        """‖ΔW‖_F / ‖U_ΔWᵀ W V_ΔW‖_F (NaN for a zero update or unknown α)."""
        if self.zero or not self.proj_delta > 0:
            return math.nan
        return self.delta_norm / self.proj_delta

    @property
    def over_random(self) -> float:
        """‖U_ΔWᵀ W V_ΔW‖_F / mean random projection: > 1 means ΔW correlates with W."""
        if self.zero or not self.proj_random > 0:
            return math.nan
        return self.proj_delta / self.proj_random

    def to_dict(self) -> dict:
        d = asdict(self)
        d["amplification"] = self.amplification
        d["over_random"] = self.over_random
        return d

    def to_frame(self) -> pd.DataFrame:
        """One-row DataFrame with every attribute, the amplification and ``over_random``."""
        import pandas as pd

        return pd.DataFrame([self.to_dict()])


def random_projections(W: np.ndarray, k: int, *, n_random: int = 10, seed: int = 0) -> np.ndarray:
    """‖Uᵀ W V‖_F for ``n_random`` seeded random k-dim pairs (U, V): case (3) of Table 7, W alone.

    They depend on W, k, the seed and ``n_random`` only, not on ΔW, so they can be computed once per base
    weight and k (the sweeps keep them in the persistent cache with W's singular triplets).

    Parameters
    ----------
    W : (d_out, d_in) ndarray
    k, n_random, seed : int

    Returns
    -------
    (n_random,) ndarray of float64
    """
    W = check_weight(W)
    d_out, d_in = W.shape
    rng = np.random.default_rng(seed)  # the pairs of random_bases(d_out, d_in, k, seed=seed, n=n_random), in order
    per = max(1, PROJECTION_COLUMNS // max(int(k), 1))  # pairs per pass over W: memory bounded whatever n_random
    out: list[float] = []
    for start in range(0, int(n_random), per):
        out += _projections(W, _draw_bases(rng, d_out, d_in, k, min(per, int(n_random) - start)))
    return np.array(out)


def as_array(W: Any) -> np.ndarray:
    """W as an ndarray: a lazily widened matrix (:class:`~analysis.io.stored.StoredMatrix`) widened and checked.

    Parameters
    ----------
    W : (d_out, d_in) ndarray or StoredMatrix

    Returns
    -------
    (d_out, d_in) ndarray
        ``W`` itself when it is an ndarray.
    """
    return W.array() if hasattr(W, "array") and not isinstance(W, np.ndarray) else W


def frobenius(W: np.ndarray) -> float:
    """‖W‖_F of an ndarray, accumulated in float64 (no float64 copy of W).

    Parameters
    ----------
    W : (d_out, d_in) ndarray

    Returns
    -------
    float
    """
    return float(np.sqrt(np.einsum("ij,ij->", W, W, dtype=np.float64)))


def _svd_prefix(w_svd, k, W, seed):
    if w_svd is None:
        return randomized_svd(as_array(W), k, seed=seed)
    U, S, V = w_svd
    if U.shape[0] != W.shape[0] or V.shape[0] != W.shape[1] or U.shape[1] < k:
        raise InputError(f"w_svd must hold at least k={k} triplets of W {W.shape}: got U {U.shape}, "
                         f"V {V.shape}; pass randomized_svd(W, k) or omit it")
    return FactoredSVD(U[:, :k], S[:k], V[:, :k])


def weight_correlation(W: ArrayLike, lr: LowRank, *, n_random: int = 10, seed: int = 0,
                       w_svd: FactoredSVD | None = None, name: str | None = None,
                       random_proj: np.ndarray | None = None) -> WeightCorrelation:
    """‖Uᵀ W V‖_F for U, V from ΔW, from W and random (Table 7), and the amplification.

    Parameters
    ----------
    W : (d_out, d_in) array_like
        The frozen base weight of the module, nn.Linear orientation.
    lr : LowRank
        The update ΔW of the same module.
    n_random : int
        Random subspace pairs averaged for case (3).
    seed : int
        Seed of the randomized SVD of W and of the random subspaces.
    w_svd : FactoredSVD, optional
        Precomputed top singular triplets of W (at least k of them), e.g. to
        share one SVD with :func:`weight_overlap`.
    name : str, optional
        Defaults to ``lr.name``.
    random_proj : (n_random,) ndarray, optional
        :func:`random_projections` of W for k = ΔW's numerical rank, if already computed.

    Returns
    -------
    WeightCorrelation

    Examples
    --------
    >>> import numpy as np
    >>> from analysis.core import LowRank
    >>> W = np.diag([4.0, 3.0, 2.0, 1.0])
    >>> lr = LowRank(np.eye(4)[3:], np.eye(4)[:, 3:], scale=5.0)  # ΔW = 5 e₄e₄ᵀ
    >>> res = weight_correlation(W, lr)
    >>> res.proj_delta, res.proj_w, res.amplification
    (1.0, 4.0, 5.0)
    """
    if not isinstance(lr, LowRank):
        raise TypeError(f"lr must be a LowRank, got {type(lr).__name__}")
    if n_random < 1:
        raise InputError(f"n_random must be >= 1, got {n_random}")
    return correlation_checked(check_weight(W, lr, name), lr, n_random=n_random, seed=seed, w_svd=w_svd, name=name,
                        random_proj=random_proj)


def correlation_checked(W: np.ndarray, lr: LowRank, *, n_random: int, seed: int, w_svd: FactoredSVD | None,
                        name: str | None, random_proj: np.ndarray | None,
                        w_norm: float | None = None) -> WeightCorrelation:
    """:func:`weight_correlation` on a W already checked (:func:`check_weight`, or a StoredMatrix of ΔW's shape):
    for sweeps that check every module's W once and then compute several things from it.

    With ``w_svd``, ``random_proj`` and ``w_norm`` (‖W‖_F) given, W is used in one product only.

    Parameters
    ----------
    W : (d_out, d_in) ndarray or StoredMatrix
        The base weight in ΔW's orientation, checked.
    lr : LowRank
        The module's update.
    n_random, seed : int
        Random subspace draws (at least 1) and their seed, for case (3) of Table 7 and W's randomized SVD.
    w_svd : FactoredSVD or None
        W's top singular triplets, at least ``lr.rank`` of them (None: computed here).
    name : str or None
        The module, for the result and messages (default ``lr.name``).
    random_proj : (n_random,) ndarray or None
        :func:`random_projections` of W for k = ``lr.rank`` (None: computed here).
    w_norm : float, optional
        ‖W‖_F (default: computed here).

    Returns
    -------
    WeightCorrelation
    """
    d_out, d_in = W.shape
    k = lr.rank
    if w_norm is None:
        w_norm = frobenius(as_array(W))
    delta_norm = math.nan if lr.scale is None else lr.norm()
    if k == 0:
        return WeightCorrelation(name or lr.name, lr.r, 0, d_out, d_in, w_norm, 0.0 if lr.scale is not None
                                 else math.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, n_random, seed, zero=True)
    Ud, Vd = lr.basis("output"), lr.basis("input")  # (d_out, k), (d_in, k)
    Uw, _, Vw = _svd_prefix(w_svd, k, W, seed)  # (d_out, k), (d_in, k)
    proj_delta, proj_w = _projections(W, [(Ud, Vd), (Uw, Vw)])
    if random_proj is None:
        rand = random_projections(as_array(W), k, n_random=n_random, seed=seed)
    else:
        rand = np.asarray(random_proj, dtype=np.float64)
        if rand.shape != (n_random,):
            raise InputError(f"random_proj must have shape ({n_random},), got {rand.shape}")
    return WeightCorrelation(
        name=name or lr.name, r=lr.r, k=k, d_out=d_out, d_in=d_in, w_norm=w_norm,
        delta_norm=delta_norm, proj_delta=proj_delta, proj_w=proj_w,
        proj_random=float(rand.mean()), proj_random_std=float(rand.std(ddof=1)) if n_random > 1 else 0.0,
        proj_random_rms=float(np.sqrt(np.mean(rand ** 2))),
        proj_random_expected=w_norm * k / math.sqrt(d_out * d_in), n_random=n_random, seed=seed)


@dataclass(frozen=True)
class WeightOverlap:
    """Fig. 8 for one module and side: φ(i, j) between W's top-i and ΔW's top-j directions.

    Attributes
    ----------
    name : str
    side : {"output", "input"}
        ``"output"``: left singular vectors (R^d_out); ``"input"``: right (R^d_in).
    phi : (n_w, k) ndarray of float64
        ``phi[i-1, j-1]`` = φ(i, j), i over W's spectrum (rows), j over ΔW's (columns).
    random : (n_w, k) ndarray of float64
        The same for a seeded uniformly random k-dim subspace in place of ΔW's.
    null : (n_w, k) ndarray of float64
        E[φ] for random subspaces, max(i, j) / d.
    null_std : (n_w, k) ndarray of float64
    w_singular_values : (n_w,) ndarray of float64
        σ₁ … σ_{n_w} of W.
    d : int
    r : int
        Stored rank of ΔW.
    zero : bool
        ΔW is zero: ``phi`` and ``random`` are empty.
    """

    name: str
    side: str
    phi: np.ndarray
    random: np.ndarray
    null: np.ndarray
    null_std: np.ndarray
    w_singular_values: np.ndarray
    d: int
    r: int
    zero: bool = False

    @property
    def k(self) -> int:
        """ΔW's directions compared (its numerical rank)."""
        return int(self.phi.shape[1])

    def curve(self, j: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """φ(i, j) for i = 1 … n_w at one j (default: all of ΔW's directions, j = k).

        Returns
        -------
        phi, random, null : (n_w,) ndarray
        """
        if self.zero:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        j = self.k if j is None else int(j)
        if not 1 <= j <= self.k:
            raise InputError(f"j must be in [1, {self.k}], got {j}")
        return self.phi[:, j - 1], self.random[:, j - 1], self.null[:, j - 1]

    def to_frame(self) -> pd.DataFrame:
        """Tidy DataFrame: one row per (i, j) with φ, the random draw, the null and its sd."""
        import pandas as pd

        n, k = self.phi.shape
        i, j = np.meshgrid(np.arange(1, n + 1), np.arange(1, k + 1), indexing="ij")
        return pd.DataFrame({"name": self.name, "side": self.side, "r": self.r, "i": i.ravel(),
                             "j": j.ravel(), "phi": self.phi.ravel(), "random": self.random.ravel(),
                             "null": self.null.ravel(), "null_std": self.null_std.ravel()})


def weight_overlap(W: ArrayLike, lr: LowRank, *, side: str = "output", n_w: int | None = None, seed: int = 0,
                   w_svd: FactoredSVD | None = None, name: str | None = None) -> WeightOverlap:
    """φ between W's top-i singular directions and ΔW's top-j (Fig. 8 of the paper).

    Parameters
    ----------
    W : (d_out, d_in) array_like
        Base weight, nn.Linear orientation.
    lr : LowRank
        Update of the same module.
    side : {"output", "input"}
        Left singular vectors (R^d_out) or right ones (R^d_in). The paper does
        not say which it used.
    n_w : int, optional
        How far down W's spectrum to go (rows of the grid); default all of it,
        min(d_out, d_in).
    seed : int
        Seed of W's randomized SVD (exact when n_w is large) and of the random draw.
    w_svd : FactoredSVD, optional
        Precomputed top singular triplets of W (at least n_w of them).
    name : str, optional

    Returns
    -------
    WeightOverlap
    """
    if side not in OVERLAP_SIDES:
        raise InputError(f"side must be one of {OVERLAP_SIDES}, got {side!r}")
    if not isinstance(lr, LowRank):
        raise TypeError(f"lr must be a LowRank, got {type(lr).__name__}")
    return overlap_checked(check_weight(W, lr, name), lr, side=side, n_w=n_w, seed=seed, w_svd=w_svd, name=name)


def overlap_checked(W: np.ndarray, lr: LowRank, *, side: str, n_w: int | None, seed: int,
                    w_svd: FactoredSVD | None, name: str | None) -> WeightOverlap:
    """:func:`weight_overlap` on a W already checked (:func:`check_weight`).

    Parameters
    ----------
    W : (d_out, d_in) ndarray or StoredMatrix
        The base weight in ΔW's orientation, checked.
    lr : LowRank
        The module's update.
    side : {"output", "input"}
        Left (R^d_out) or right (R^d_in) singular vectors.
    n_w : int or None
        W's top directions compared, in [1, min(d_out, d_in)] (None: all of them).
    seed : int
        Of W's randomized SVD (without ``w_svd``) and of the random directions of the baseline.
    w_svd : FactoredSVD or None
        W's top singular triplets, at least ``n_w`` of them (None: computed here).
    name : str or None
        The module, for the result and messages (default ``lr.name``).

    Returns
    -------
    WeightOverlap
    """
    q = min(W.shape)
    n_w = q if n_w is None else int(n_w)
    if not 1 <= n_w <= q:
        raise InputError(f"n_w must be in [1, {q}] for W of shape {W.shape}, got {n_w}")
    Uw, S, Vw = _svd_prefix(w_svd, n_w, W, seed)  # (d_out, n_w), (n_w,), (d_in, n_w)
    Bw = Uw if side == "output" else Vw  # (d, n_w)
    d = Bw.shape[0]
    name = name or lr.name
    if lr.is_zero:
        e = np.zeros((n_w, 0))
        return WeightOverlap(name, side, e, e, e, e, S, d, lr.r, zero=True)
    Bd = lr.basis(side)  # (d, k)
    k = Bd.shape[1]
    Rnd = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((d, k)))[0]  # (d, k)
    return WeightOverlap(name, side, phi_grid(Bw, Bd), phi_grid(Bw, Rnd), random_null(n_w, k, d),
                         random_null_std(n_w, k, d), np.asarray(S, dtype=np.float64), d, lr.r)
