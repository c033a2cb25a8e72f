"""The report's nulls against independent computations: Monte Carlo on explicit random bases, scipy, closed forms."""

import numpy as np
import pytest
from scipy.linalg import orth, subspace_angles

from analysis.metrics.nulls import diagonal_phi_draws, phi11_null, projection_draws, z_score


@pytest.mark.parametrize("d", [2, 7, 64])
def test_phi11_null_matches_random_unit_vectors(d):
    rng = np.random.default_rng(d)
    x, y = rng.standard_normal((2, 200_000, d))
    cos2 = np.einsum("ij,ij->i", x, y) ** 2 / (np.einsum("ij,ij->i", x, x) * np.einsum("ij,ij->i", y, y))
    mean, sd = phi11_null(d)
    assert mean == pytest.approx(cos2.mean(), rel=0.02)
    assert sd == pytest.approx(cos2.std(), rel=0.02)


@pytest.mark.slow
def test_diagonal_draws_match_scipy_subspace_angles():
    d, k, n = 30, 5, 2000
    ours = diagonal_phi_draws(d, k, n=n, seed=1)
    rng = np.random.default_rng(2)
    ref = np.empty((n, k))
    for t in range(n):  # two explicit random frames, φ(i, i) from scipy's principal angles
        U, V = orth(rng.standard_normal((d, k))), orth(rng.standard_normal((d, k)))
        U, V = np.linalg.qr(U)[0], np.linalg.qr(V)[0]
        ref[t] = [np.sum(np.cos(subspace_angles(U[:, :i], V[:, :i])) ** 2) / i for i in range(1, k + 1)]
    se = np.sqrt(ours.var(0) / n + ref.var(0) / n)
    assert np.all(np.abs(ours.mean(0) - ref.mean(0)) < 4 * se)
    assert np.allclose(ours.mean(0), np.arange(1, k + 1) / d, atol=4 * se.max())  # E[φ(i, i)] = i / d
    assert np.allclose(ours.std(0), ref.std(0), rtol=0.1)


@pytest.mark.parametrize("shape", [(12, 40), (40, 12), (25, 25)])
def test_projection_draws_match_dense_random_bases(shape):
    d_out, d_in = shape
    k, n = 3, 3000
    rng = np.random.default_rng(0)
    W = rng.standard_normal(shape) * np.linspace(0.1, 2.0, d_in)
    ours = projection_draws(np.linalg.svd(W, compute_uv=False), d_out, d_in, k, n=n, seed=5)
    ref = np.empty(n)
    for t in range(n):  # U, V drawn on W itself, no use of its SVD
        U = np.linalg.qr(rng.standard_normal((d_out, k)))[0]
        V = np.linalg.qr(rng.standard_normal((d_in, k)))[0]
        ref[t] = np.linalg.norm(U.T @ W @ V)
    se = np.sqrt(ours.var() / n + ref.var() / n)
    assert abs(ours.mean() - ref.mean()) < 4 * se
    assert ours.std() == pytest.approx(ref.std(), rel=0.08)
    closed = np.sum(W ** 2) * k ** 2 / (d_out * d_in)  # E‖UᵀWV‖² in closed form
    assert np.mean(ours ** 2) == pytest.approx(closed, rel=0.05)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        phi11_null(1)
    with pytest.raises(ValueError):
        diagonal_phi_draws(4, 5)
    with pytest.raises(ValueError, match="singular values"):
        projection_draws(np.ones(3), 4, 5, 2)


def test_z_score():
    assert z_score(0.5, 0.1, 0.1) == pytest.approx(4.0)
    assert np.isnan(z_score(0.5, 0.1, 0.0)) and np.isnan(z_score(None, 0.1, 0.1))
