"""The paper's subspace similarity φ and principal angles between subspaces.

φ(i, j) = ‖U₁^{i ⊤} U₂^{j}‖_F² / min(i, j) for orthonormal bases U₁, U₂
(Section 7.2 of the LoRA paper), computed for every (i, j) at once: one
k₁ × k₂ product, squared, a 2-D cumulative sum, divided by min(i, j).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from numpy.typing import ArrayLike

__all__ = ["subspace_similarity", "principal_angles", "random_null", "random_null_std",
           "check_orthonormal", "phi_grid", "phi_and_angles", "phi_and_angles_many", "basis_columns"]


def check_orthonormal(U: ArrayLike, name: str = "U", *, atol: float | None = None) -> np.ndarray:
    """Validate a basis: 2-D, finite, with orthonormal columns.

    Parameters
    ----------
    U : (d, k) array_like
    name : str
        Used in error messages.
    atol : float, optional
        Tolerance on ``|UᵀU − I|``; default ``1e-4`` for float32 input and
        ``1e-8`` for float64.

    Returns
    -------
    (d, k) ndarray of float64
    """
    U = np.asarray(U)
    if U.ndim != 2:
        raise InputError(f"{name} must be a 2-D (d, k) array of orthonormal columns, got shape {U.shape}")
    if U.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be real, got dtype {U.dtype}")
    if atol is None:
        atol = 1e-4 if U.dtype.kind == "f" and U.dtype.itemsize <= 4 else 1e-8
    U = U.astype(np.float64, copy=False)
    if not np.isfinite(U).all():
        raise InputError(f"{name} contains NaN or Inf")
    if U.shape[1]:
        G = U.T @ U  # (k, k)
        err = np.abs(G - np.eye(U.shape[1])).max()
        if err > atol:
            raise InputError(
                f"{name} of shape {U.shape} does not have orthonormal columns (max |UᵀU - I| = {err:.2e}); "
                "pass singular vectors, e.g. LowRank.basis(), or orthonormalise with np.linalg.qr")
    return U


def phi_grid(U1: np.ndarray, U2: np.ndarray) -> np.ndarray:
    """φ grid of two orthonormal bases, without the checks of :func:`subspace_similarity`.

    Parameters
    ----------
    U1 : (d, k1) ndarray
    U2 : (d, k2) ndarray

    Returns
    -------
    (k1, k2) ndarray
        ``[i-1, j-1] = φ(i, j)``.
    """
    return _phi_from(U1.T @ U2)  # (k1, k2)


def _phi_from(M):
    """φ grid from the (k1, k2) products M = U1ᵀ U2."""
    C = np.cumsum(np.cumsum(M * M, axis=0), axis=1)  # (k1, k2): ‖U1^iᵀ U2^j‖_F²
    i = np.arange(1, M.shape[0] + 1)[:, None]
    j = np.arange(1, M.shape[1] + 1)[None, :]
    return np.clip(C / np.minimum(i, j), 0.0, 1.0)


def subspace_similarity(U1: ArrayLike, U2: ArrayLike) -> np.ndarray:
    """Normalised subspace similarity φ(i, j) for every prefix pair.

    Parameters
    ----------
    U1 : (d, k1) array_like
        Orthonormal columns, ordered (e.g. by singular value).
    U2 : (d, k2) array_like
        Orthonormal columns in the same space R^d.

    Returns
    -------
    (k1, k2) ndarray of float64
        Entry ``[i-1, j-1]`` is φ(i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖_F² / min(i, j),
        in [0, 1]: 1 when one prefix subspace contains the other, 0 when
        orthogonal. Empty if either basis has no columns (a zero update).

    Examples
    --------
    >>> import numpy as np
    >>> I = np.eye(4)
    >>> subspace_similarity(I[:, :2], I[:, 1:3])  # span{e1, e2} vs span{e2, e3}
    array([[0. , 0. ],
           [1. , 0.5]])
    """
    U1 = check_orthonormal(U1, "U1")
    U2 = check_orthonormal(U2, "U2")
    if U1.shape[0] != U2.shape[0]:
        raise InputError(
            f"U1 and U2 must live in the same space: U1 has {U1.shape[0]} rows and U2 has "
            f"{U2.shape[0]}; compare bases of the same side of modules of the same shape")
    return phi_grid(U1, U2)


def principal_angles(U1: ArrayLike, U2: ArrayLike) -> np.ndarray:
    """Principal angles between the column spans of two orthonormal bases.

    Small angles are computed from sines and large ones from cosines, as
    ``scipy.linalg.subspace_angles`` does, so near-identical subspaces give
    accurate angles near 0.

    Parameters
    ----------
    U1 : (d, k1) array_like
    U2 : (d, k2) array_like
        Orthonormal columns.

    Returns
    -------
    (min(k1, k2),) ndarray of float64
        Angles in radians, in **ascending** order (scipy returns them descending).
    """
    U1 = check_orthonormal(U1, "U1")
    U2 = check_orthonormal(U2, "U2")
    if U1.shape[0] != U2.shape[0]:
        raise InputError(f"U1 has {U1.shape[0]} rows and U2 has {U2.shape[0]}; they must match")
    return _principal_angles(U1, U2)


def _principal_angles(U1, U2):
    """:func:`principal_angles` without the input checks, for bases known orthonormal (LowRank.basis)."""
    k = min(U1.shape[1], U2.shape[1])
    if k == 0:
        return np.zeros(0)
    M = U1.T @ U2  # (k1, k2)
    if U1.shape[1] >= U2.shape[1]:
        return _angles_from(M, lambda: U2 - U1 @ M)  # (d, k2): component of U2 outside span(U1)
    return _angles_from(M, lambda: U1 - U2 @ M.T)  # (d, k1)


def _angles_from(M, residual):
    """Principal angles from M = U1ᵀ U2 (k1, k2) and ``residual()``, the residual R (d, min(k1, k2)) of the
    smaller basis outside the other's span: sines for small angles (cos² ≥ ½), cosines for large ones.
    R costs a pass over the larger basis, so it is formed only when some angle is small."""
    k = min(M.shape)
    cos = np.linalg.svd(M, compute_uv=False)[:k]  # descending cosines
    theta_cos = np.arccos(np.clip(cos, -1.0, 1.0))  # ascending
    if not (cos ** 2 >= 0.5).any():
        return theta_cos
    sin = np.linalg.svd(residual(), compute_uv=False)  # descending sines
    sin = np.sort(sin)[:k]  # ascending sines <-> descending cosines
    theta_sin = np.arcsin(np.clip(sin, -1.0, 1.0))  # ascending
    return np.where(cos ** 2 >= 0.5, theta_sin, theta_cos)


def phi_and_angles(p1: tuple[np.ndarray, np.ndarray | None],
                   p2: tuple[np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """φ grid and principal angles of two orthonormal bases given as ``(Q, Y)``, basis = ``Q @ Y``.

    ``Y`` None: ``Q`` is the basis (see :meth:`~analysis.core.LowRank.basis_parts`).

    Only the basis with fewer columns is formed; the other is only multiplied, so comparing a
    rank-8 with a rank-64 update costs O(d · 8 · 64) instead of O(d · 64²). Both results are
    invariant to the signs of the basis columns.

    Returns
    -------
    phi : (k1, k2) ndarray
    angles : (min(k1, k2),) ndarray, ascending
    M : (k1, k2) ndarray
        The products U1ᵀ U2 the φ grid is made of.
    """
    return phi_and_angles_many([(p1, p2)])[0]


def phi_and_angles_many(
        pairs: Sequence[tuple[tuple[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]], *,
        known: dict[Any, Any] | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`phi_and_angles` for several pairs of bases, one pass over each larger ``Q`` they share.

    The sides of one module share their factors' ``Q`` (ΔW's input side and lora_A's side both live in the
    span of Aᵀ, output and B in that of B), so the products with the larger basis of each pair are taken
    together: ``[U_s1 U_s2 …]ᵀ Q``, one pass over Q instead of one per side; where ``Qsᵀ Ql`` is already
    known (``known``), no pass at all: ``Usᵀ Ql = Ysᵀ (Qsᵀ Ql)``. The results are those of
    :func:`phi_and_angles` on each pair.

    Parameters
    ----------
    pairs : list of ((Q, Y), (Q, Y))
    known : dict, optional
        ``{(id(Q1), id(Q2)): Q1ᵀ Q2}``: products already at hand (e.g. from
        :meth:`~analysis.core.LowRank.factor_cross`), used instead of a pass over ``Q2``.

    Returns
    -------
    list of (phi, angles, M)
    """
    staged = []
    for p1, p2 in pairs:
        swap = basis_columns(p1) > basis_columns(p2)
        (Qs, Ys), (Ql, Yl) = (p2, p1) if swap else (p1, p2)
        staged.append((swap, Qs, Ys, Ql, Yl))
    G = _times_larger(staged, known or {})
    out = []
    for (swap, Qs, Ys, Ql, Yl), Gi in zip(staged, G):
        M = Gi if Yl is None else Gi @ Yl  # (ks, kl) = Usᵀ Ul
        M12 = M.T if swap else M  # (k1, k2) = U1ᵀ U2

        def residual(Qs=Qs, Ys=Ys, Ql=Ql, Yl=Yl, M=M):  # (d, ks): Us outside span(Ul)
            Us = Qs if Ys is None else Qs @ Ys  # (d, r) @ (r, ks)
            return Us - Ql @ (M.T if Yl is None else Yl @ M.T)  # (d, rl) @ (rl, ks)
        out.append((_phi_from(M12), _angles_from(M, residual), M12))  # R formed only when some angle is small
    return out


def basis_columns(p: tuple[np.ndarray, np.ndarray | None]) -> int:
    """Number of columns of a basis given as ``(Q, Y)`` (Y, when given, holds the basis's columns in Q's span).

    >>> import numpy as np
    >>> basis_columns((np.eye(4)[:, :2], None)), basis_columns((np.eye(4)[:, :2], np.ones((2, 3))))
    (2, 3)
    """
    return p[0].shape[1] if p[1] is None else p[1].shape[1]


def _times_larger(staged, known):
    """``Usᵀ Ql`` (ks, rl) for each staged ``(swap, Qs, Ys, Ql, Yl)``: from ``known`` (``Qsᵀ Ql`` or its
    transpose) where it is there, else one product per distinct ``Ql`` with the formed bases stacked."""
    G = [None] * len(staged)
    groups = {}
    for i, (_, Qs, Ys, Ql, _) in enumerate(staged):
        P = known.get((id(Qs), id(Ql)))
        if P is None and (id(Ql), id(Qs)) in known:
            P = known[(id(Ql), id(Qs))].T
        if P is not None:
            G[i] = P if Ys is None else Ys.T @ P  # (ks, r) @ (r, rl) = Ysᵀ (Qsᵀ Ql)
        else:
            groups.setdefault(id(Ql), []).append(i)
    for members in groups.values():
        UsT = [Qs.T if Ys is None else Ys.T @ Qs.T for _, Qs, Ys, _, _ in (staged[i] for i in members)]  # (ks, d)
        P = (UsT[0] if len(UsT) == 1 else np.concatenate(UsT)) @ staged[members[0]][3]  # (Σks, d) @ (d, rl)
        at = 0
        for i, block in zip(members, UsT):
            G[i], at = P[at:at + block.shape[0]], at + block.shape[0]
    return G


def random_null(k1: int, k2: int, d: int) -> np.ndarray:
    """Expected φ(i, j) between uniformly random subspaces: max(i, j) / d.

    Parameters
    ----------
    k1, k2 : int
        Grid size.
    d : int
        Ambient dimension.

    Returns
    -------
    (k1, k2) ndarray of float64
    """
    if d <= 0:
        raise InputError(f"d must be positive, got {d}")
    i = np.arange(1, k1 + 1)[:, None]
    j = np.arange(1, k2 + 1)[None, :]
    return np.minimum(np.maximum(i, j) / d, 1.0).astype(np.float64)


def random_null_std(k1: int, k2: int, d: int) -> np.ndarray:
    """Standard deviation of φ(i, j) between random subspaces (large-d approximation).

    ‖U₁^{i⊤} U₂^{j}‖_F² is a sum of i·j squared near-Gaussian entries of
    variance 1/d, so its standard deviation is about √(2ij)/d;
    φ divides it by min(i, j).

    Returns
    -------
    (k1, k2) ndarray of float64
    """
    i = np.arange(1, k1 + 1)[:, None]
    j = np.arange(1, k2 + 1)[None, :]
    return np.sqrt(2.0 * i * j) / d / np.minimum(i, j)
