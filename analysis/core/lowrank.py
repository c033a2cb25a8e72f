"""The exact, factored view of one LoRA update ``ΔW = s · B A``.

A :class:`LowRank` holds loralib's factors ``lora_A`` (r, d_in) and ``lora_B``
(d_out, r) and the scale ``s``. Its thin SVD is computed from the factors
alone: QR of ``B`` and of ``Aᵀ``, then the SVD of the small r × r core,
in float64. This is exact (no d_out × d_in matrix is formed) and costs
O((d_out + d_in) r²).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, NamedTuple

import numpy as np

from analysis.errors import AdapterError, InputError, MissingAlphaError

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    from numpy.typing import ArrayLike, DTypeLike

__all__ = ["LowRank", "FactoredSVD", "numerical_rank", "require_float", "sign_flip", "tall_qr"]

_KINDS = frozenset({"linear", "embedding", "conv", "merged"})


def numerical_rank(s: np.ndarray, shape: tuple[int, ...]) -> int:
    """Number of singular values above ``s[0] · max(shape) · eps(float64)``.

    Parameters
    ----------
    s : (k,) ndarray
        Singular values in descending order.
    shape : tuple of int
        Shape of the matrix they belong to.

    Returns
    -------
    int
        The numerical rank; 0 for a zero matrix.
    """
    s = np.asarray(s)
    if s.size == 0 or not s[0] > 0:
        return 0
    tol = s[0] * max(shape) * np.finfo(np.float64).eps
    return int(np.count_nonzero(s > tol))


#: Largest condition number of a factor for which :func:`tall_qr` uses CholeskyQR2
#: (stable up to ~1e7 in float64; Yamamoto et al. 2015); above it, Householder.
_CHOLQR_MAX_COND = 1e5
#: Largest condition number for which one pass over the Gram matrix is used (orthogonality ~ eps · cond²);
#: random LoRA initialisations and Gaussian factors have cond ≈ (1 + √(r/d)) / (1 − √(r/d)) < 2.
_CHOLQR1_MAX_COND = 4.0


#: :meth:`LowRank.factor_cross` joins Q to the factor's Gram matrix when Q has at most r / _FUSE_COLS columns.
_FUSE_COLS = 4


class _QR(NamedTuple):
    """A factor ``M = Q R`` (Q orthonormal) as :func:`_tall_qr` leaves it: ``Q = Q1 T``, T kept unapplied."""

    Q1: np.ndarray  # (m, k)
    T: np.ndarray | None  # (k, k); None: Q = Q1
    R: np.ndarray  # (k, r)
    svd: tuple | None  # (Ur (k, k), S (k,)): the SVD R = Ur diag(S) Vᵀ when the factorisation gave it
    cross: np.ndarray | None = None  # (e, k): companionᵀ Q1


def tall_qr(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin QR ``M = Q R`` of a tall float64 matrix, Q with orthonormal columns.

    CholeskyQR (Cholesky of the Gram matrix) once when cond(M) ≤ 4, where its
    loss of orthogonality (~ eps · cond²) is at machine precision; CholeskyQR2
    (twice: Fukaya, Nakatsukasa et al., 2014; Yamamoto et al., 2015) when
    ``M`` is well conditioned (cond ≤ 1e5): two Gram
    products and two products with an r × r inverse, all matrix-matrix BLAS,
    several times faster than Householder QR for a LoRA factor and as accurate
    (orthogonality and residual at machine precision for cond(M) ≪ 1e8).
    Otherwise (rank-deficient or ill-conditioned factors, wide matrices, r = 0)
    LAPACK's Householder QR. R may differ from Householder's by the signs of its
    rows; the singular vectors built from it are sign-fixed by :func:`sign_flip`.

    Parameters
    ----------
    M : (m, r) ndarray of float64

    Returns
    -------
    Q : (m, min(m, r)) ndarray of float64
    R : (min(m, r), r) ndarray of float64
        Upper triangular.
    """
    qr = _tall_qr(M, triangular=True)
    return (qr.Q1 if qr.T is None else qr.Q1 @ qr.T), qr.R  # (m, r) @ (r, r)


def _tall_qr(M, companion=None, *, triangular=False):
    """``M = Q1 T R`` with ``Q1 T`` orthonormal, as a :class:`_QR`; the products ``Q X`` cost ``Q1 (T X)``.

    One pass when cond(M) ≤ 4: the Gram matrix's eigendecomposition ``MᵀM = V diag(S²) Vᵀ`` gives
    ``Q = M V S⁻¹`` — M's own left singular vectors, in descending order — and ``R = diag(S) Vᵀ``, so
    the SVD of R is known (identity, S) and ``Q1 = M``, ``T = V S⁻¹`` (``triangular``: Cholesky,
    ``T = R1⁻¹``, as :func:`tall_qr` promises). Orthogonality and singular values are exact to
    ~ eps · cond², as for CholeskyQR. CholeskyQR2 up to cond 1e5 (``Q1`` formed, ``T = R2⁻¹``), else
    Householder (T None).

    Parameters
    ----------
    M : (m, r) ndarray
        Widened to float64 here (float32 input is copied once, into the array the Gram is taken of).
    companion : (m, e) ndarray of float64, optional
        Columns whose products with ``Q1`` are wanted too (``cross``, (e, k)): they join ``M`` in its Gram
        (``[M C]ᵀ [M C]``), one pass over M for both.
    triangular : bool
        R upper triangular.
    """
    m, r = M.shape
    e = 0 if companion is None else companion.shape[1]
    if e:
        X = np.empty((m, r + e), order="F" if M.flags.f_contiguous else "C")  # [M C], M widened into it
        X[:, :r] = M
        X[:, r:] = companion
        M = X[:, :r]  # (m, r) view
    else:
        X = M = M.astype(np.float64)  # a copy of its own, even of float64 input
    if 0 < r <= m:
        try:
            G = X.T @ X  # (r + e, r + e): MᵀM and, below it, CᵀM
            lam, V = np.linalg.eigh(G[:r, :r])  # ascending: MᵀM = V diag(λ) Vᵀ, λ = σ(M)²
            cond2 = lam[-1] / lam[0] if lam[0] > 0 else np.inf  # cond(M)²
            # one pass is enough when cond ≤ 4: the loss of orthogonality is ~ eps · cond², here ~1e-15,
            # so Q = M T is kept unformed (its products cost one pass over M)
            if cond2 <= _CHOLQR1_MAX_COND ** 2 and not triangular:
                S, V = np.sqrt(lam[::-1]), V[:, ::-1]  # descending
                return _QR(M, V / S, S[:, None] * V.T, (np.eye(r), S),  # T = V S⁻¹, R = diag(S) Vᵀ
                           G[r:, :r].copy() if e else None)  # CᵀM
            if cond2 <= _CHOLQR_MAX_COND ** 2:
                R1 = np.linalg.cholesky(G[:r, :r]).T  # (r, r) upper: MᵀM = R1ᵀ R1
                R1i = np.linalg.inv(R1)  # (r, r)
                if cond2 <= _CHOLQR1_MAX_COND ** 2:
                    return _QR(M, R1i, R1, None, G[r:, :r].copy() if e else None)  # Q = M @ R1i
                Q1 = M @ R1i  # (m, r) @ (r, r)
                R2 = np.linalg.cholesky(Q1.T @ Q1).T  # (r, r): re-orthogonalise once
                cross = G[r:, :r] @ R1i if e else None  # CᵀQ1 = CᵀM R1⁻¹
                return _QR(Q1, np.linalg.inv(R2), R2 @ R1, None, cross)
        except np.linalg.LinAlgError:
            pass
    Q, R = np.linalg.qr(M)  # (m, k), (k, r)
    return _QR(Q, None, R, None, companion.T @ Q if e else None)


def _q_times(qr, X):
    """``Q @ X`` for a :class:`_QR`: (m, k) @ (k, j) -> (m, j)."""
    return qr.Q1 @ (X if qr.T is None else qr.T @ X)


def sign_flip(u: np.ndarray, v: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Fix the sign of singular vector pairs deterministically.

    Each column of ``u`` is flipped so that its entry of largest magnitude is
    positive (the convention of scikit-learn's ``svd_flip``); the matching
    column of ``v`` is flipped with it.

    Parameters
    ----------
    u : (m, k) ndarray
    v : (n, k) ndarray, optional

    Returns
    -------
    u, v : ndarray
        Copies with flipped columns (``v`` is None if not given).
    """
    if u.shape[1] == 0 or u.shape[0] == 0:
        return u, v
    signs = _flip_signs(u)
    return u * signs, (None if v is None else v * signs)


def _flip_signs(u):
    """(k,) array of ±1.0: the sign of each column's largest-magnitude entry (1 for a zero column)."""
    if u.shape[1] == 0 or u.shape[0] == 0:
        return np.ones(u.shape[1])
    # the sign of the largest-magnitude entry, from two fast column reductions; exact ties between a
    # positive and a negative entry (rare) are settled as before, by the first such entry
    hi, lo = u.max(axis=0), u.min(axis=0)  # (k,), (k,)
    signs = np.where(hi >= -lo, 1.0, -1.0)
    tie = np.flatnonzero(hi == -lo)
    if tie.size:
        idx = np.argmax(np.abs(u[:, tie]), axis=0)  # (t,)
        signs[tie] = np.sign(u[idx, tie])
    signs[~(hi > 0) & ~(lo < 0)] = 1.0  # an all-zero column
    return signs


@dataclass(frozen=True)
class FactoredSVD:
    """Thin SVD ``ΔW = U diag(S) Vᵀ`` of a low-rank update.

    Attributes
    ----------
    U : (d_out, k) ndarray of float64
        Left singular vectors (output side), orthonormal columns.
    S : (k,) ndarray of float64
        Singular values in descending order, scale included.
    V : (d_in, k) ndarray of float64
        Right singular vectors (input side), orthonormal columns.
    """

    U: np.ndarray
    S: np.ndarray
    V: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.U, self.S, self.V))


def require_float(x: ArrayLike, *, path: str | os.PathLike[str] | None = None, key: str | None = None,
                  what: str = "values") -> np.ndarray:
    """The one rule for factors and base weights: floating point, upcast to at least float32.

    Parameters
    ----------
    x : array_like
    path, key : str, optional
        File and tensor key named in the error.
    what : str
        What ``x`` is, for the error (``"lora_A"``).

    Returns
    -------
    ndarray
        float32 or float64.

    Raises
    ------
    AdapterError
        If ``x`` is not floating point (integers, booleans, strings …): an integer or boolean factor is no
        LoRA update, and reading it as one would be silently wrong.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise AdapterError(f"expected floating-point {what}, got dtype {x.dtype}", path=path, key=key)
    if x.dtype.itemsize < 4:
        x = x.astype(np.float32)
    return x


@dataclass(frozen=True, eq=False)
class LowRank:
    """One LoRA update ``ΔW = scale · lora_B @ lora_A`` in nn.Linear orientation.

    Parameters
    ----------
    lora_A : (r, d_in) ndarray
        Down projection (loralib's name). Floating point; fp16/bf16 are upcast
        to float32 by the readers.
    lora_B : (d_out, r) ndarray
        Up projection.
    scale : float or None
        ``s`` in ``ΔW = s B A`` (α/r, or α/√r for rsLoRA). ``None`` when the
        checkpoint does not store α (loralib) and none was supplied: subspaces
        are still available, norms and ``delta()`` raise
        :class:`~analysis.errors.MissingAlphaError`.
    name : str
        Module name in the base model (``name + ".weight"`` is the base tensor).
    source : str, optional
        File the factors were read from (used in error messages).
    kind : {"linear", "embedding", "conv", "merged"}
        ``"conv"``: the update of a convolution flattened to
        (out_channels, in_channels · kh · kw); ``weight_shape`` holds the 4-D
        shape. ``"embedding"``: ``delta()`` has the embedding table's shape
        (num_embeddings, embedding_dim). ``"merged"``: a loralib MergedLinear
        whose per-projection updates are in ``parts``.
    weight_shape : tuple of int, optional
        Shape of the base weight as stored (e.g. transposed for GPT-2 Conv1D,
        4-D for convolutions). ``delta()`` is always 2-D (d_out, d_in).
    parts : Mapping[str, LowRank]
        For ``kind="merged"``: the separate updates (e.g. ``{"q": …, "v": …}``).
    meta : Mapping
        Format details: ``format``, ``r``, ``alpha``, ``use_rslora``,
        ``fan_in_fan_out``, row offsets of parts, …

    Examples
    --------
    >>> import numpy as np
    >>> lr = LowRank(np.eye(2, 3), np.eye(4, 2), scale=2.0)
    >>> lr.shape, lr.r, lr.rank
    ((4, 3), 2, 2)
    >>> float(lr.norm())  # ‖2 · B A‖_F = 2 √2
    2.8284271247461903
    """

    lora_A: np.ndarray
    lora_B: np.ndarray
    scale: float | None = 1.0
    name: str = ""
    source: str | None = None
    kind: str = "linear"
    weight_shape: tuple | None = None
    parts: Mapping[str, "LowRank"] = field(default_factory=dict)
    meta: Mapping = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        key = self.name or None
        A = require_float(self.lora_A, path=self.source, key=key, what="lora_A")
        B = require_float(self.lora_B, path=self.source, key=key, what="lora_B")
        object.__setattr__(self, "lora_A", A)
        object.__setattr__(self, "lora_B", B)
        if A.ndim != 2 or B.ndim != 2:
            raise AdapterError(
                f"lora_A and lora_B must be 2-D, got lora_A {A.shape} and lora_B {B.shape}",
                path=self.source, key=key)
        if A.shape[1] == 0 or B.shape[0] == 0:  # a layer of width 0 has no directions to compare
            raise AdapterError(
                f"expected a module of positive width, got lora_A {A.shape} (r, d_in) and lora_B {B.shape} "
                "(d_out, r)", path=self.source, key=key)
        if B.shape[1] != A.shape[0]:
            raise AdapterError(
                f"inner dimensions disagree: lora_B is {B.shape} (d_out, r) and lora_A is "
                f"{A.shape} (r, d_in); expected lora_B.shape[1] == lora_A.shape[0]",
                path=self.source, key=key)
        if self.kind not in _KINDS:
            raise InputError(f"kind must be one of {sorted(_KINDS)}, got {self.kind!r}")
        if self.scale is not None:
            s = float(self.scale)
            if not np.isfinite(s):
                raise AdapterError(f"scale must be finite, got {s}", path=self.source, key=key)
            object.__setattr__(self, "scale", s)

    # ------------------------------------------------------------------ shape
    @property
    def r(self) -> int:
        """Stored rank (number of rows of ``lora_A``)."""
        return int(self.lora_A.shape[0])

    @property
    def shape(self) -> tuple:
        """``(d_out, d_in)`` of ΔW in nn.Linear orientation."""
        return (int(self.lora_B.shape[0]), int(self.lora_A.shape[1]))

    def _require_scale(self):
        if self.scale is None:
            raise MissingAlphaError(
                "alpha is not stored in this checkpoint (loralib); the result depends on "
                "the scale alpha/r: pass alpha= to load_adapter or --alpha on the command line",
                path=self.source, key=self.name or None)
        return self.scale

    # ------------------------------------------------------------------ core
    def _qr(self, which):
        """Thin QR of ``lora_B`` (d_out, r) or ``lora_Aᵀ`` (d_in, r) in float64, cached until clear_cache."""
        key = "qr_" + which
        c = self._cache.get(key)
        if c is None:
            M = self.lora_B if which == "B" else self.lora_A.T  # (d, r)
            c = self._cache[key] = _tall_qr(M)  # Q = Q1 T, M = Q R
        return c

    def factor_cross(self, which: str, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``Qᵀ Q1`` for the factor ``which``, Q1 its QR's first factor (see :meth:`basis_parts`).

        When the factor's QR is not computed yet and Q has at most r / 4 columns, the product rides on its
        Gram (one pass over the factor for both): how a smaller adapter's basis meets this one's at the cost
        of this one's QR alone (measured: 0.79× the two products apart at r = 64 and 8 columns; with as many
        columns as r the extra Gram of Q costs more than the pass it saves).

        Parameters
        ----------
        which : {"A", "B"}
            ``lora_A`` (its Q spans Aᵀ, in R^{d_in}) or ``lora_B`` (in R^{d_out}).
        Q : (d, e) ndarray of float64

        Returns
        -------
        Q1 : (d, k) ndarray of float64
            k = r, or fewer for a wide factor.
        cross : (e, k) ndarray of float64
            ``Qᵀ Q1``.
        """
        if which not in ("A", "B"):
            raise ValueError(f"which must be 'A' or 'B', got {which!r}")
        key = "qr_" + which
        if key not in self._cache and _FUSE_COLS * Q.shape[1] <= self.r:
            M = self.lora_B if which == "B" else self.lora_A.T  # (d, r)
            c = _tall_qr(M, companion=Q)
            self._cache[key] = c._replace(cross=None)
            return c.Q1, c.cross
        c = self._qr(which)
        return c.Q1, Q.T @ c.Q1  # (e, d) @ (d, k)

    def _small(self, which):
        """The r × r part of an SVD, cached: ``"core"`` -> (Uc (r, k), S (k,), Vc (r, k)) with
        ΔW / s = (Qb Uc) diag(S) (Qa Vc)ᵀ; ``"A"`` / ``"B"`` -> (Ur (r, k), S (k,)) with
        Aᵀ or B = (Q Ur) diag(S) (…)ᵀ. No (d, r) work beyond the QRs."""
        key = "small_" + which
        c = self._cache.get(key)
        if c is None:
            if which == "core":
                Rb, Ra = self._qr("B").R, self._qr("A").R  # (r, r): B = Qb Rb, Aᵀ = Qa Ra
                Uc, S, Vct = np.linalg.svd(Rb @ Ra.T)  # core (r, r): B A = Qb core Qaᵀ
                k = 0 if self.scale == 0 else numerical_rank(S, self.shape)  # α = 0: ΔW = 0 whatever B A is
                c = (Uc[:, :k], S[:k].copy(), Vct[:k].T)
            else:
                shape = self.lora_A.T.shape if which == "A" else self.lora_B.shape  # (d, r)
                qr = self._qr(which)
                Ur, S = qr.svd or np.linalg.svd(qr.R)[:2]  # (r, r), (r,): M = (Q Ur) diag(S) Vrᵀ
                k = numerical_rank(S, shape)
                c = (Ur[:, :k], S[:k].copy())
            self._cache[key] = c
        return c

    def _core(self):
        """QR of both factors and SVD of the r × r core (scale 1), cached."""
        c = self._cache.get("core")
        if c is None:
            Uc, S, Vc = self._small("core")  # (r, k), (k,), (r, k)
            U = _q_times(self._qr("B"), Uc)  # Qb (d_out, r) @ (r, k) -> (d_out, k)
            signs = _flip_signs(U)  # sign_flip's convention, applied in place / on the small side
            U *= signs
            V = _q_times(self._qr("A"), Vc * signs)  # Qa (d_in, r) @ (r, k) -> (d_in, k)
            c = self._cache["core"] = (U, S, V)
        return c

    def basis_parts(self, side: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(Q, Y)`` with ``basis(side) = Q @ Y`` up to the signs of its columns, without forming it.

        Parameters
        ----------
        side : {"input", "output", "A", "B"}
            As for :meth:`basis`.

        Returns
        -------
        Q : (d, r) ndarray
        Y : (r, k) ndarray or None
            None when the basis is already formed (then ``Q`` is the basis). Products with the basis
            (``Xᵀ Q Y``) cost O(d · r · cols(X)) instead of O(d r²).
        """
        formed = {"input": ("core", 2), "output": ("core", 0), "A": ("basis_A", 0), "B": ("basis_B", 0)}
        key, i = formed[side]
        if key in self._cache:
            return self._cache[key][i], None
        which = {"input": "A", "output": "B"}.get(side, side)
        Q1, T = self._qr(which)[:2]
        small = self._small("core" if side in ("input", "output") else side)
        X = small[2] if side == "input" else small[0]  # (r, k)
        return Q1, (X if T is None else T @ X)

    def svd(self) -> FactoredSVD:
        """Exact thin SVD of ΔW from the factors, float64, scale included.

        Returns
        -------
        FactoredSVD
            ``(U, S, V)`` with U (d_out, k), S (k,), V (d_in, k) and
            k the numerical rank; k = 0 for a zero update.

        Raises
        ------
        MissingAlphaError
            If the scale is unknown (the singular vectors are still available
            from :meth:`basis`).
        """
        s = self._require_scale()
        U, S, V = self._core()
        # a negative scale flips the right vectors so that U diag(S) Vᵀ = ΔW with S ≥ 0
        return FactoredSVD(U, S * abs(s), V if s >= 0 else -V)

    def singular_values(self) -> np.ndarray:
        """Singular values of ΔW, (k,) float64, scale included."""
        return self.svd().S

    @property
    def rank(self) -> int:
        """Numerical rank of ΔW (0 for a zero update: B = 0 before training, or α = 0)."""
        return int(self._small("core")[1].size)

    @property
    def is_zero(self) -> bool:
        """True when ΔW is exactly zero, whatever makes it so: B = 0 before training, or a zero scale (α = 0)."""
        return self.rank == 0

    def basis(self, side: str = "input") -> np.ndarray:
        """Orthonormal singular basis of ΔW, ordered by ΔW's singular values.

        Parameters
        ----------
        side : {"input", "output", "A", "B"}
            ``"input"``: right singular vectors of ΔW, (d_in, k).
            ``"output"``: left singular vectors of ΔW, (d_out, k).
            ``"A"``: the paper's basis: right singular vectors of ``lora_A``
            ordered by A's own singular values, (d_in, rank A).
            ``"B"``: left singular vectors of ``lora_B`` ordered by B's, (d_out, rank B).

        Returns
        -------
        (d, k) ndarray of float64
        """
        if side == "input":
            return self._core()[2]
        if side == "output":
            return self._core()[0]
        if side == "A":
            return self._factor_basis("A")
        if side == "B":
            return self._factor_basis("B")
        raise InputError(f"side must be one of 'input', 'output', 'A', 'B'; got {side!r}")

    def _factor_basis(self, which):
        key = "basis_" + which
        c = self._cache.get(key)
        if c is None:
            Ur, S = self._small(which)  # (r, k), (k,)
            b = _q_times(self._qr(which), Ur)  # Q (d, r) @ (r, k) -> (d, k)
            b *= _flip_signs(b)  # sign_flip's convention, in place
            c = self._cache[key] = (b, S)
        return c[0]

    def factor_singular_values(self, which: str = "A") -> np.ndarray:
        """Singular values of ``lora_A`` or ``lora_B`` alone, (rank,) float64.

        They order the paper's basis (:meth:`basis` with ``side="A"``/``"B"``).
        """
        if which not in ("A", "B"):
            raise InputError(f"which must be 'A' or 'B', got {which!r}")
        return self._small(which)[1]

    def side_singular_values(self, side: str) -> np.ndarray:
        """Singular values that order :meth:`basis` for ``side`` (scale excluded)."""
        if side in ("input", "output"):
            return self._small("core")[1]
        return self.factor_singular_values(side)

    def norm(self) -> float:
        """‖ΔW‖_F from the factors (scale included), without forming ΔW."""
        s = abs(self._require_scale())
        return float(s * np.linalg.norm(self._small("core")[1]))

    def delta(self, *, dtype: DTypeLike = np.float64) -> np.ndarray:
        """Dense ΔW = scale · lora_B @ lora_A, only on explicit request.

        Returns
        -------
        (d_out, d_in) ndarray
            In nn.Linear orientation (a Conv1D / fan_in_fan_out weight is
            transposed into it; a convolution is flattened; an embedding has
            the table's (num_embeddings, embedding_dim) shape).
        """
        s = self._require_scale()
        B = self.lora_B.astype(dtype, copy=False)  # (d_out, r)
        A = self.lora_A.astype(dtype, copy=False)  # (r, d_in)
        out = B @ A  # (d_out, d_in)
        out *= s
        return out

    def with_scale(self, scale: float | None) -> "LowRank":
        """A copy with another scale (e.g. α supplied after loading)."""
        return LowRank(self.lora_A, self.lora_B, scale, name=self.name, source=self.source,
                       kind=self.kind, weight_shape=self.weight_shape,
                       parts={k: p.with_scale(scale) for k, p in self.parts.items()},
                       meta=dict(self.meta))

    def clear_cache(self) -> None:
        """Drop the cached float64 SVD (to bound memory in long sweeps)."""
        self._cache.clear()
        for p in self.parts.values():
            p.clear_cache()

    def __repr__(self):
        s = "?" if self.scale is None else f"{self.scale:.6g}"
        return (f"LowRank(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, "
                f"r={self.r}, scale={s})")
