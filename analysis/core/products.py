"""Exact low-rank factors of the products LyCORIS builds its updates from.

Every function returns loralib-style factors ``(lora_A (k, d_in), lora_B (d_out, k))``
with ``lora_B @ lora_A`` equal to the product, so that LoHa and LoKr updates become a
:class:`~analysis.core.LowRank` whose SVD is exact without forming ΔW:

- Hadamard product (LoHa): ``(B1 A1) ⊙ (B2 A2) = (B1 • B2)(A1ᵀ • A2ᵀ)ᵀ`` with ``•`` the
  row-wise Khatri–Rao (face-splitting) product: row i of ``B1 • B2`` is
  ``kron(B1[i], B2[i])``; rank ≤ r1 · r2.
- Kronecker product (LoKr): ``kron(B1 A1, B2 A2) = kron(B1, B2) kron(A1, A2)`` (the
  mixed-product property); rank = rank(W1) · rank(W2).
- Tucker (CP) conv factors ``W[p, q, *k] = Σ_ij wa[i, p] t[i, j, *k] wb[j, q]``: the kernel
  flattened to (out, in · ∏k) is ``waᵀ @ M`` with ``M[i, (q, *k)] = Σ_j t[i, j, *k] wb[j, q]``.
"""

from __future__ import annotations

import numpy as np

from analysis.errors import InputError

__all__ = ["face_splitting", "kronecker", "full_factors", "tucker_factors"]


def face_splitting(A1: np.ndarray, B1: np.ndarray, A2: np.ndarray,
                   B2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factors of the Hadamard product ``(B1 @ A1) ⊙ (B2 @ A2)``.

    Parameters
    ----------
    A1 : (r1, d_in) ndarray
    B1 : (d_out, r1) ndarray
    A2 : (r2, d_in) ndarray
    B2 : (d_out, r2) ndarray

    Returns
    -------
    A : (r1 · r2, d_in) ndarray
        ``A[a · r2 + b] = A1[a] * A2[b]``.
    B : (d_out, r1 · r2) ndarray
        ``B[:, a · r2 + b] = B1[:, a] * B2[:, b]``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> A1, B1, A2, B2 = rng.normal(size=(2, 5)), rng.normal(size=(4, 2)), rng.normal(size=(3, 5)), rng.normal(size=(4, 3))
    >>> A, B = face_splitting(A1, B1, A2, B2)
    >>> A.shape, B.shape, bool(np.allclose(B @ A, (B1 @ A1) * (B2 @ A2)))
    ((6, 5), (4, 6), True)
    """
    if A1.shape[1] != A2.shape[1] or B1.shape[0] != B2.shape[0]:
        raise InputError(f"the two products must have one shape, got B1 {B1.shape} @ A1 {A1.shape} and "
                         f"B2 {B2.shape} @ A2 {A2.shape}")
    r1, r2 = A1.shape[0], A2.shape[0]
    A = (A1[:, None, :] * A2[None, :, :]).reshape(r1 * r2, A1.shape[1])  # (r1, 1, n) * (1, r2, n)
    B = (B1[:, :, None] * B2[:, None, :]).reshape(B1.shape[0], r1 * r2)  # (m, r1, 1) * (m, 1, r2)
    return A, B


def kronecker(A1: np.ndarray, B1: np.ndarray, A2: np.ndarray, B2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factors of the Kronecker product ``kron(B1 @ A1, B2 @ A2)``.

    Parameters
    ----------
    A1 : (r1, n1) ndarray
    B1 : (m1, r1) ndarray
    A2 : (r2, n2) ndarray
    B2 : (m2, r2) ndarray

    Returns
    -------
    A : (r1 · r2, n1 · n2) ndarray
        ``kron(A1, A2)``.
    B : (m1 · m2, r1 · r2) ndarray
        ``kron(B1, B2)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> W1, A2, B2 = rng.normal(size=(2, 3)), rng.normal(size=(1, 4)), rng.normal(size=(5, 1))
    >>> A1, B1 = full_factors(W1)
    >>> A, B = kronecker(A1, B1, A2, B2)
    >>> B.shape, A.shape, bool(np.allclose(B @ A, np.kron(W1, B2 @ A2)))
    ((10, 2), (2, 12), True)
    """
    return np.kron(A1, A2), np.kron(B1, B2)


def full_factors(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trivial factors of a full matrix with the smaller inner dimension.

    Parameters
    ----------
    W : (m, n) ndarray

    Returns
    -------
    A : (min(m, n), n) ndarray
        ``W`` when m ≤ n, else the identity.
    B : (m, min(m, n)) ndarray
        The identity when m ≤ n, else ``W``.
    """
    m, n = W.shape
    if m <= n:
        return W, np.eye(m, dtype=W.dtype)
    return np.eye(n, dtype=W.dtype), W


def tucker_factors(t: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factors of a Tucker (CP) convolution kernel flattened to (out, in · ∏k).

    Parameters
    ----------
    t : (r1, r2, *kernel) ndarray
        The core.
    wa : (r1, out) ndarray
        Output-mode factor (LyCORIS / PEFT ``…_a``).
    wb : (r2, in) ndarray
        Input-mode factor (``…_b``).

    Returns
    -------
    A : (r1, in · ∏kernel) ndarray
    B : (out, r1) ndarray
        ``B @ A`` is ``einsum("ij…,ip,jq->pq…", t, wa, wb)`` reshaped to (out, in · ∏kernel).
    """
    r1, r2 = t.shape[:2]
    if wa.shape[0] != r1 or wb.shape[0] != r2:
        raise InputError(f"Tucker core {t.shape} needs factors ({r1}, out) and ({r2}, in), got {wa.shape} "
                         f"and {wb.shape}")
    K = int(np.prod(t.shape[2:], dtype=np.int64))
    core = t.reshape(r1, r2, K)  # (r1, r2, K)
    A = np.einsum("ijk,jq->iqk", core, wb).reshape(r1, wb.shape[1] * K)  # (r1, in, K) -> (r1, in·K)
    return A, wa.T
