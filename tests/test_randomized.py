"""core.randomized: the seeded top-k SVD of a large matrix, against LAPACK's full SVD."""

import numpy as np
import pytest

from analysis.core import sign_flip
from analysis.core.randomized import matmul_f64, randomized_svd, work_dtype


def _dense(W, k):
    U, S, Vt = np.linalg.svd(np.asarray(W, dtype=np.float64), full_matrices=False)
    return U[:, :k], S[:k], Vt[:k].T


def _sin_max(U1, U2):
    """Sine of the largest principal angle between two orthonormal bases."""
    return float(np.linalg.norm(U1 - U2 @ (U2.T @ U1), 2))


@pytest.mark.parametrize("spectrum", ["flat", "decaying"])
@pytest.mark.parametrize("k", [1, 8, 40])
@pytest.mark.slow
def test_matches_lapack_on_flat_and_decaying_spectra(spectrum, k):
    rng = np.random.default_rng(0)
    m, n = 300, 200
    if spectrum == "flat":
        W = rng.standard_normal((m, n))  # Marchenko–Pastur: the hard case for randomized methods
    else:
        Q1, Q2 = np.linalg.qr(rng.standard_normal((m, n)))[0], np.linalg.qr(rng.standard_normal((n, n)))[0]
        W = (Q1 * 0.9 ** np.arange(n)) @ Q2.T
    U, S, V = randomized_svd(W, k, method="krylov")
    Ud, Sd, Vd = _dense(W, k)
    assert U.shape == (m, k) and S.shape == (k,) and V.shape == (n, k)
    assert np.max(np.abs(S - Sd)) <= 1e-6 * Sd[0]
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-10)
    if spectrum == "decaying":  # a well-separated spectrum: the vectors themselves are determined
        assert _sin_max(U, Ud) < 1e-6 and _sin_max(V, Vd) < 1e-6


def test_float32_products_stay_within_the_stated_tolerance():
    W = np.random.default_rng(1).standard_normal((500, 350)).astype(np.float32)
    S = randomized_svd(W, 16, method="krylov").S
    Sd = _dense(W, 16)[1]
    assert np.max(np.abs(S - Sd)) <= 1e-6 * Sd[0]
    assert S.dtype == np.float64


def test_seeded_deterministic_and_sign_convention():
    W = np.random.default_rng(2).standard_normal((200, 150))
    a, b = randomized_svd(W, 5, seed=3, method="krylov"), randomized_svd(W, 5, seed=3, method="krylov")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    U, V = sign_flip(a.U.copy(), a.V.copy())
    np.testing.assert_array_equal(U, a.U)  # already in the convention
    full = randomized_svd(W, 5, method="full")
    np.testing.assert_allclose(np.abs(np.sum(full.U * a.U, axis=0)), 1.0, atol=1e-8)
    np.testing.assert_allclose(full.U, a.U, atol=1e-6)  # same signs as well


def test_auto_switches_to_the_full_svd_when_krylov_would_span_everything():
    W = np.random.default_rng(4).standard_normal((60, 50))
    a, f = randomized_svd(W, 3), randomized_svd(W, 3, method="full")
    np.testing.assert_array_equal(a.S, f.S)


@pytest.mark.parametrize("bad", [dict(k=0), dict(k=52), dict(k=2.0), dict(k=True), dict(k=2, method="qr"),
                                 dict(k=2, oversample=-1)])
def test_bad_arguments(bad):
    W = np.ones((60, 51))
    with pytest.raises(ValueError):
        randomized_svd(W, **bad)


def test_work_precision_helpers():
    assert work_dtype(np.ones(2, np.float16)) is np.float32
    assert work_dtype(np.ones(2, np.float32)) is np.float32
    assert work_dtype(np.ones(2, np.float64)) is np.float64
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = matmul_f64(X, np.ones((3, 2)))
    assert out.dtype == np.float64 and out.tolist() == [[3.0, 3.0], [12.0, 12.0]]
