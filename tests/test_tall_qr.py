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
@pytest.mark.slow
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


@pytest.mark.parametrize("m, r, cond, route", [(900, 24, 1.5, "eig"), (900, 24, 3.9, "eig"),
                                               (900, 24, 50.0, "cholqr2"), (900, 24, 1e9, "householder"),
                                               (20, 50, 1.0, "householder")])
@pytest.mark.parametrize("order", ["C", "F"])
def test_internal_qr_every_route_and_its_companion_products(m, r, cond, route, order):
    """The factorisation LowRank keeps: Q = Q1 T orthonormal, M = Q R; well-conditioned factors (cond ≤ 4) by
    the Gram's eigendecomposition, whose R has a known SVD (identity, M's singular values); a companion's
    products Cᵀ Q1 from the same Gram equal the explicit product, on every route and memory order."""
    from analysis.core.lowrank import _q_times, _tall_qr

    M = np.asarray(_matrix(m, r, cond, seed=2), order=order)
    if order == "C":
        M = M.astype(np.float32)  # as a factor is read: widened inside, into the array its Gram is taken of
    C = np.asarray(np.random.default_rng(4).standard_normal((m, 5)), order=order)
    M_in, M = M, M.astype(np.float64)
    for companion in (None, C):
        qr = _tall_qr(M_in, companion=companion)
        k = min(m, r)
        Q = _q_times(qr, np.eye(k))  # (m, k)
        assert np.abs(Q.T @ Q - np.eye(k)).max() < 1e-13
        assert np.abs(Q @ qr.R - M).max() < 1e-13 * np.abs(M).max()
        assert (qr.svd is not None) == (route == "eig")
        assert (qr.T is None) == (route == "householder")
        if qr.svd is not None:
            Ur, S = qr.svd
            np.testing.assert_allclose(S, np.linalg.svd(M, compute_uv=False), rtol=1e-13)
            Vt = (Ur.T @ qr.R) / S[:, None]  # R = Ur diag(S) Vᵀ with Ur, V orthogonal, S descending
            assert np.abs(Ur.T @ Ur - np.eye(k)).max() < 1e-14 and np.abs(Vt @ Vt.T - np.eye(k)).max() < 1e-12
            assert np.all(np.diff(S) <= 0)
        if companion is None:
            assert qr.cross is None
        else:
            np.testing.assert_allclose(qr.cross, C.T @ qr.Q1, rtol=0, atol=1e-10 * np.abs(C).max() * np.abs(M).max())


def test_factor_cross_with_or_without_the_qr_cached():
    """LowRank.factor_cross gives Qᵀ Q1 whether the factor's QR rides on it or was computed before; the
    module comparison that uses it equals the one on bases computed beforehand."""
    from analysis.metrics.pair import module_similarities

    rng = np.random.default_rng(9)
    A, B = rng.standard_normal((16, 300)), rng.standard_normal((200, 16))
    a, b = rng.standard_normal((4, 300)), rng.standard_normal((200, 4))
    Q = np.linalg.qr(rng.standard_normal((300, 3)))[0]
    fresh, cached = LowRank(A, B, scale=1.0), LowRank(A, B, scale=1.0)
    cached.basis("A")
    for lr in (fresh, cached):
        Q1, cross = lr.factor_cross("A", Q)
        np.testing.assert_allclose(cross, Q.T @ Q1, rtol=0, atol=1e-12)
        assert Q1 is lr.basis_parts("input")[0]
    with pytest.raises(ValueError, match="which"):
        fresh.factor_cross("input", Q)
    one = module_similarities(LowRank(a, b, scale=1.0), LowRank(A, B, scale=1.0))
    before = LowRank(A, B, scale=1.0)
    before.svd(), before.basis("A"), before.basis("B")  # every basis formed first: no pass is shared
    two = module_similarities(LowRank(a, b, scale=1.0), before)
    for side in one:
        np.testing.assert_allclose(one[side].phi, two[side].phi, rtol=0, atol=1e-13)
        np.testing.assert_allclose(one[side].angles, two[side].angles, rtol=0, atol=1e-12)
