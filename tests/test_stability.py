"""metrics.stability: prefix stability of two ordered bases and its random null (Bartlett draws)."""

import numpy as np
import pytest

from analysis import module_similarity
from analysis.metrics.stability import prefix_stability, random_max_cos2, stability_from_overlap

from _rank_tiny import lowrank_from, orthonormal


def test_prefix_stability_counts_planted_directions():
    rng = np.random.default_rng(0)
    Q = orthonormal(rng, 300, 20)
    s1, s2, s3 = Q[:, 0], Q[:, 1], Q[:, 2]
    U1 = np.column_stack([s1, s2, s3, Q[:, 3:8]])
    st = prefix_stability(U1, np.column_stack([s1, s2, s3, Q[:, 8:13]]))
    assert (st.shared, st.needed, st.cap) == (3, 3, 8)
    assert st.counts.tolist() == [1, 2, 3, 3, 3, 3, 3, 3] and not st.at_cap
    # the third shared direction comes 4th in the other basis: 3 shared, a rank of 4 holds them
    st = prefix_stability(U1, np.column_stack([s1, s2, Q[:, 8], s3, Q[:, 9:13]]))
    assert (st.shared, st.needed) == (3, 4)
    assert prefix_stability(U1, Q[:, 8:16]).shared == 0
    assert prefix_stability(U1[:, :3], U1[:, :3]).at_cap
    fr = st.to_frame()
    assert list(fr.columns) == ["i", "count", "threshold", "top_cos2", "min_cos2"] and len(fr) == 8


def test_null_matches_the_exact_one_dimensional_law():
    d = 400
    mean, sd = random_max_cos2(d, 5, trials=400, seed=1)
    assert mean[0] == pytest.approx(1 / d, rel=0.15)  # cos² of a random direction: Beta(1/2, (d-1)/2)
    assert sd[0] == pytest.approx(np.sqrt(2 * (d - 1)) / (d * np.sqrt(d + 2)), rel=0.2)
    assert np.all(np.diff(mean) > 0)  # larger prefixes meet by chance more
    with pytest.raises(ValueError):
        random_max_cos2(3, 5)


@pytest.mark.parametrize("d, k", [(40, 6), (600, 12)])
@pytest.mark.slow
def test_bartlett_draws_match_the_qr_of_gaussian_matrices(d, k):
    """The d-free sampler of the null (Wishart by Bartlett) has the law of the top block of a QR."""
    from analysis.metrics.stability import _top_blocks

    n = 3000
    fast = _top_blocks(np.random.default_rng(0), n, d, k)  # (n, k, k)
    slow = np.linalg.qr(np.random.default_rng(1).standard_normal((n, d, k)))[0][:, :k, :k]
    for i in (1, k // 2, k):
        a = np.linalg.svd(fast[:, :i, :i], compute_uv=False) ** 2  # (n, i) squared principal cosines
        b = np.linalg.svd(slow[:, :i, :i], compute_uv=False) ** 2
        for x, y in ((a[:, 0], b[:, 0]), (a.sum(1), b.sum(1))):  # the largest one, and their sum
            se = np.sqrt((x.var() + y.var()) / n)
            assert abs(x.mean() - y.mean()) < 4 * se
    # E Σ cos² = i² / d for two random i-dim subspaces (the φ null i/d times i)
    assert (np.linalg.svd(fast, compute_uv=False) ** 2).sum(1).mean() == pytest.approx(k * k / d, rel=0.05)


def test_one_shared_direction_is_one_not_the_whole_prefix():
    """One shared top direction is one direction, though φ(i, i), a prefix average, stays above its null."""
    rng = np.random.default_rng(3)
    d, r = 576, 16
    u, v = rng.standard_normal((d, 1)), rng.standard_normal((d, 1))
    S = np.r_[10.0, np.linspace(2, 1, r - 1)]
    lrs = [lowrank_from(np.linalg.qr(np.hstack([u, rng.standard_normal((d, r - 1))]))[0], S,
                        np.linalg.qr(np.hstack([v, rng.standard_normal((d, r - 1))]))[0]) for _ in range(2)]
    res = module_similarity(*lrs, side="output")
    diag = np.diag(res.phi)
    assert (diag > np.diag(res.null) + 3 * np.diag(res.null_std)).all()  # every prefix looks "shared" by φ(i, i)
    assert prefix_stability(lrs[0].basis("output"), lrs[1].basis("output")).shared == 1
    assert res.shared_dims() == 1 and res.stability().needed == 1


def test_stability_from_overlap_equals_prefix_stability():
    rng = np.random.default_rng(3)
    U1, U2 = orthonormal(rng, 120, 6), orthonormal(rng, 120, 9)
    a, b = prefix_stability(U1, U2, seed=1), stability_from_overlap(U1.T @ U2, 120, seed=1)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.cos2, b.cos2, equal_nan=True)
