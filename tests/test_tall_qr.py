"""tall_qr (CholeskyQR2 with a Householder fallback) and the factored SVD built on it (issue 5)."""

import numpy as np
import pytest
import scipy.linalg

from analysis.core import LowRank
from analysis.core.lowrank import _CHOLQR_MAX_COND, sign_flip, tall_qr


def _matrix(m, r, cond, seed=0):
    rng = np.random.default_rng(seed)
    k = min(m, r)
    U = np.linalg.qr(rng.standard_normal((m, k)))[0]
    V = np.linalg.qr(rng.standard_normal((r, k)))[0]
    return (U * np.logspace(0, -np.log10(cond), k)) @ V.T  # (m, r) with condition number cond


@pytest.mark.parametrize("m, r, cond", [(2000, 64, 1.0), (2000, 64, 1e3), (500, 8, 1e4), (300, 16, 1e7),
                                        (300, 16, 1e12), (40, 40, 10.0), (20, 50, 1.0)])
def test_orthonormal_and_reconstructs(m, r, cond):
    M = _matrix(m, r, cond)
    Q, R = tall_qr(M)
    k = min(m, r)
    assert Q.shape == (m, k) and R.shape == (k, r)
    assert np.abs(Q.T @ Q - np.eye(k)).max() < 1e-13
    assert np.abs(Q @ R - M).max() < 1e-13 * np.abs(M).max()


def test_rank_deficient_and_zero_fall_back_to_householder():
    M = _matrix(100, 6, 1.0)
    M[:, 5] = M[:, 0]  # rank 5: the Gram matrix is singular
    Q, R = tall_qr(M)
    assert np.allclose(Q @ R, M, atol=1e-13) and np.allclose(Q.T @ Q, np.eye(6), atol=1e-13)
    Q, R = tall_qr(np.zeros((30, 4)))
    assert np.allclose(Q.T @ Q, np.eye(4)) and not R.any()
    Q, R = tall_qr(np.zeros((30, 0)))
    assert Q.shape[1] == 0 and R.shape == (0, 0)
    assert _CHOLQR_MAX_COND <= 1e7  # CholeskyQR2 is only used where it is stable


@pytest.mark.parametrize("cond_b", [1.0, 1e4, 1e9])
def test_factored_svd_matches_dense_float64(cond_b):
    rng = np.random.default_rng(3)
    B = _matrix(700, 12, cond_b, seed=1)  # (d_out, r)
    A = rng.standard_normal((12, 500)) / 20  # (r, d_in)
    lr = LowRank(A, B, 0.5)
    U, S, V = lr.svd()
    Ud, Sd, Vdt = scipy.linalg.svd(0.5 * B @ A, full_matrices=False)
    k = lr.rank
    assert np.allclose(S, Sd[:k], rtol=0, atol=1e-13 * Sd[0])
    Ud, Vd = sign_flip(Ud[:, :k], Vdt[:k].T)
    big = Sd[:k] > 1e-6 * Sd[0]  # well-separated, well-determined directions
    assert np.allclose(U[:, big], Ud[:, big], atol=1e-8) and np.allclose(V[:, big], Vd[:, big], atol=1e-8)
    for side in ("A", "B", "input", "output"):
        b = lr.basis(side)
        assert np.abs(b.T @ b - np.eye(b.shape[1])).max() < 1e-12
    # the paper's basis: right singular vectors of A alone, ordered by A's singular values
    Ua = sign_flip(scipy.linalg.svd(A.T, full_matrices=False)[0])[0]
    assert np.allclose(lr.basis("A"), Ua, atol=1e-10)


def test_rotation_invariance_still_holds():
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((8, 300)), rng.standard_normal((200, 8))
    Qr = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    l1, l2 = LowRank(A, B), LowRank(Qr.T @ A, B @ Qr)
    assert np.allclose(l1.svd().S, l2.svd().S, rtol=1e-12)
    assert np.allclose(l1.basis("output"), l2.basis("output"), atol=1e-10)
