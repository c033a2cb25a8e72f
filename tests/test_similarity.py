"""φ and principal angles against scipy and closed-form answers."""

import numpy as np
import pytest
import scipy.linalg

from analysis import LowRank, module_similarity, principal_angles, random_null, subspace_similarity
from analysis.metrics import near_tied_cuts


def _basis(rng, d, k):
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


def _phi_bruteforce(U1, U2):
    k1, k2 = U1.shape[1], U2.shape[1]
    out = np.empty((k1, k2))
    for i in range(1, k1 + 1):
        for j in range(1, k2 + 1):
            out[i - 1, j - 1] = np.linalg.norm(U1[:, :i].T @ U2[:, :j]) ** 2 / min(i, j)
    return out


def test_phi_grid_matches_definition_and_scipy_angles():
    rng = np.random.default_rng(0)
    U1, U2 = _basis(rng, 60, 8), _basis(rng, 60, 20)
    phi = subspace_similarity(U1, U2)
    assert phi.shape == (8, 20)
    np.testing.assert_allclose(phi, _phi_bruteforce(U1, U2), atol=1e-13)
    # φ(i, j) = Σ cos² θ_k / min(i, j) over the principal angles of the two prefixes
    for i, j in [(1, 1), (3, 7), (8, 20), (8, 5)]:
        th = scipy.linalg.subspace_angles(U1[:, :i], U2[:, :j])
        assert phi[i - 1, j - 1] == pytest.approx(np.sum(np.cos(th) ** 2) / min(i, j), abs=1e-12)


@pytest.mark.parametrize("k1,k2", [(5, 9), (9, 5), (4, 4)])
def test_principal_angles_match_scipy(k1, k2):
    rng = np.random.default_rng(1)
    U1, U2 = _basis(rng, 40, k1), _basis(rng, 40, k2)
    np.testing.assert_allclose(principal_angles(U1, U2),
                               np.sort(scipy.linalg.subspace_angles(U1, U2)), atol=1e-12)


def test_small_angles_are_accurate():
    rng = np.random.default_rng(2)
    U1 = _basis(rng, 50, 4)
    U2 = np.linalg.qr(U1 + 1e-10 * rng.standard_normal(U1.shape))[0]
    ours = principal_angles(U1, U2)
    ref = np.sort(scipy.linalg.subspace_angles(U1, U2))
    assert ours.max() < 1e-8
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_known_answers():
    I = np.eye(6)
    assert np.all(subspace_similarity(I[:, :3], I[:, :3]).diagonal() == 1.0)
    assert np.all(subspace_similarity(I[:, :3], I[:, 3:]) == 0.0)
    # containment: a 2-D subspace inside a 4-D one gives φ(2, 4) = 1
    assert subspace_similarity(I[:, :2], I[:, :4])[1, 3] == pytest.approx(1.0)
    # a 45° rotation of one axis: cos² = 1/2
    U2 = np.zeros((6, 1))
    U2[0, 0] = U2[1, 0] = 1 / np.sqrt(2)
    assert subspace_similarity(I[:, :1], U2)[0, 0] == pytest.approx(0.5)


def test_phi_is_clamped_and_invariant_to_rotation_within_full_spans():
    rng = np.random.default_rng(3)
    U = _basis(rng, 30, 5)
    Q = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    phi = subspace_similarity(U, U @ Q)
    assert phi[-1, -1] == pytest.approx(1.0) and phi.max() <= 1.0 and phi.min() >= 0.0


def test_random_null_matches_monte_carlo():
    rng = np.random.default_rng(4)
    d = 100
    grids = [subspace_similarity(_basis(rng, d, 3), _basis(rng, d, 6)) for _ in range(3000)]
    np.testing.assert_allclose(np.mean(grids, axis=0), random_null(3, 6, d), atol=4e-3)


def test_bad_bases():
    with pytest.raises(ValueError, match="orthonormal"):
        subspace_similarity(np.ones((5, 2)), np.eye(5)[:, :2])
    with pytest.raises(ValueError, match="same space"):
        subspace_similarity(np.eye(5)[:, :2], np.eye(6)[:, :2])
    with pytest.raises(ValueError, match="2-D"):
        subspace_similarity(np.ones(5), np.eye(5))
    with pytest.raises(ValueError, match="NaN"):
        subspace_similarity(np.full((3, 1), np.nan), np.eye(3)[:, :1])


def test_module_similarity_same_adapter_and_rank_embedding():
    """An r=8 adapter inside an r=64 one: φ(i, 8) = 1 for all i ≤ 8 on the A side."""
    rng = np.random.default_rng(5)
    A8 = rng.standard_normal((8, 40))
    N = rng.standard_normal((24, 40))
    Q = np.linalg.qr(A8.T)[0]  # (40, 8) basis of A8's row space
    N -= (N @ Q) @ Q.T  # extra rows orthogonal to it, so the top-8 of A64 span A8
    A64 = np.vstack([A8 * 10, N])
    l8 = LowRank(A8, rng.standard_normal((30, 8)))
    l64 = LowRank(A64, rng.standard_normal((30, 32)))
    res = module_similarity(l8, l64, side="A")
    assert res.phi.shape == (8, 32)
    np.testing.assert_allclose(res.phi[:, 7], 1.0, atol=1e-8)
    same = module_similarity(l8, l8, side="input")
    np.testing.assert_allclose(np.diag(same.phi), 1.0, atol=1e-10)
    assert same.shared_dims() == 8 and same.phi11 == pytest.approx(1.0)
    assert same.to_frame().shape[0] == 64


def test_module_similarity_zero_update_is_not_nan():
    rng = np.random.default_rng(6)
    lz = LowRank(rng.standard_normal((4, 20)), np.zeros((10, 4)))
    lo = LowRank(rng.standard_normal((4, 20)), rng.standard_normal((10, 4)))
    for side in ("A", "input", "output", "B"):
        res = module_similarity(lz, lo, side=side)
        assert res.zero and res.phi11 is None and res.shared_dims() == 0
        assert not np.isnan(res.phi).any()


def test_near_tied_cuts():
    assert near_tied_cuts([3.0, 2.0, 2.0, 1.0]) == (2,)
    assert near_tied_cuts([3.0, 2.0, 1.0]) == ()
    assert near_tied_cuts([0.0, 0.0]) == ()


def test_gaussian_similarity_is_the_random_null():
    from analysis.metrics import gaussian_similarity

    res = gaussian_similarity(16, 16, 400, seed=3)
    assert res.phi.shape == (16, 16) and res.d == 400
    assert np.abs(res.phi - res.null).max() < 0.08
    assert np.array_equal(res.phi, gaussian_similarity(16, 16, 400, seed=3).phi)


@pytest.mark.parametrize("r1, r2", [(8, 64), (64, 8), (4, 4)])
def test_all_sides_at_once_equal_each_side_alone_and_scipy(r1, r2):
    """module_similarities shares one pass over each factor's basis between the sides that live in its span:
    the same φ and angles as one side at a time, and as scipy on the explicitly formed bases; a near-identical
    pair (small angles, from sines) included."""
    from analysis.metrics.pair import SIDES, module_similarities

    rng = np.random.default_rng(r1 * 100 + r2)
    d_out, d_in = 96, 80
    la = LowRank(rng.standard_normal((r1, d_in)), rng.standard_normal((d_out, r1)), scale=1.0)
    lb = LowRank(rng.standard_normal((r2, d_in)), rng.standard_normal((d_out, r2)), scale=1.0)
    near = LowRank(la.lora_A + 1e-9 * rng.standard_normal(la.lora_A.shape), la.lora_B, scale=1.0)
    for x, y in ((la, lb), (la, near)):
        both = module_similarities(x, y, sides=SIDES)
        assert list(both) == list(SIDES)
        for side in SIDES:
            one = module_similarity(x, y, side=side)
            np.testing.assert_allclose(both[side].phi, one.phi, rtol=0, atol=1e-14)
            np.testing.assert_allclose(both[side].angles, one.angles, rtol=0, atol=1e-14)
            ref = np.sort(scipy.linalg.subspace_angles(x.basis(side), y.basis(side)))
            np.testing.assert_allclose(both[side].angles, ref, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(both[side].phi, _phi_bruteforce(x.basis(side), y.basis(side)), atol=1e-12)


def test_phi_and_angles_many_every_route_equals_the_formed_bases():
    """One product per larger Q, whatever the smaller bases are: several made from one shared Q (through Qᵀ
    once), one made from a Q with more columns than it (formed first), one already formed (Y None), a pair
    given larger-first (swapped); each equals φ and scipy's angles on the formed bases."""
    from analysis.metrics.similarity import phi_and_angles_many

    rng = np.random.default_rng(7)
    d = 120

    def orth(k):
        return np.linalg.qr(rng.standard_normal((d, k)))[0]

    def rot(r, k):
        return np.linalg.qr(rng.standard_normal((r, r)))[0][:, :k]  # (r, k), orthonormal columns

    Ql, Qs, Qw = orth(40), orth(6), orth(9)
    large = [(Ql, rot(40, 40)), (Ql, rot(40, 30)), (Ql, None)]
    near = Ql[:, :5] + 1e-10 * rng.standard_normal((d, 5))  # a basis almost inside span(Ql): small angles
    small = [(Qs, rot(6, 6)), (Qs, rot(6, 5)), (Qw, rot(9, 4)), (np.linalg.qr(near)[0], None)]
    pairs = [(small[0], large[0]), (small[1], large[1]), (small[2], large[0]), (large[2], small[3]),
             (small[3], large[2])]
    got = phi_and_angles_many(pairs)
    for (p1, p2), (phi, angles, M) in zip(pairs, got):
        U1 = p1[0] if p1[1] is None else p1[0] @ p1[1]
        U2 = p2[0] if p2[1] is None else p2[0] @ p2[1]
        np.testing.assert_allclose(M, U1.T @ U2, rtol=0, atol=1e-13)
        np.testing.assert_allclose(phi, _phi_bruteforce(U1, U2), rtol=0, atol=1e-13)
        ref = np.sort(scipy.linalg.subspace_angles(U1, U2))
        np.testing.assert_allclose(angles, ref, rtol=1e-9, atol=1e-12)
    assert np.abs(got[3][1]).max() < 1e-8  # the near pair's angles came from sines
