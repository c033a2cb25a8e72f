"""W-vs-ΔW analyses (Table 7, Fig. 8) from closed forms, planted examples and invariances;
the randomized SVD against LAPACK at its stated tolerance."""

import math

import numpy as np
import pytest

from analysis import LowRank
from analysis.core import randomized_svd
from analysis.metrics.correlation import (projection_norm, random_bases, weight_correlation,
                                          weight_overlap)


def _orth(rng, d, k):
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


def _planted_W(rng, d_out, d_in, s):
    U, V = _orth(rng, d_out, len(s)), _orth(rng, d_in, len(s))
    return U @ np.diag(s) @ V.T, U, V  # (d_out, q) (q, q) (q, d_in)


# ------------------------------------------------------------------ randomized SVD

@pytest.mark.parametrize("k", [1, 8, 16, 64])
@pytest.mark.slow
def test_randomized_svd_flat_spectrum_within_1e6(k, flat):
    """The stated tolerance: every σ₁…σ_k of a 576 × 576 Gaussian matrix to 1e-6 relative."""
    W, s = flat
    U, S, V = randomized_svd(W, k, method="krylov")
    assert np.max(np.abs(S - s[:k]) / s[:k]) < 1e-6
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(W @ V - U * S) / s[0], 0, atol=1e-2)


@pytest.mark.slow
def test_randomized_svd_k64_with_a_partial_krylov_space(flat):
    """k = 64 with n_iter = 6: the Krylov space (518 columns) does not fill R^576 and still meets 1e-6."""
    W, s = flat
    S = randomized_svd(W, 64, oversample=10, n_iter=6, method="krylov").S
    assert np.max(np.abs(S - s[:64]) / s[:64]) < 1e-6


@pytest.fixture(scope="module")
def flat():
    W = np.random.default_rng(1).standard_normal((576, 576))
    return W, np.linalg.svd(W, compute_uv=False)


def test_randomized_svd_decaying_spectrum_matches_full_svd_vectors():
    rng = np.random.default_rng(2)
    W, U0, V0 = _planted_W(rng, 300, 200, 10.0 * 0.9 ** np.arange(200))
    U, S, V = randomized_svd(W, 8, method="krylov")
    np.testing.assert_allclose(S, 10.0 * 0.9 ** np.arange(8), rtol=1e-10)
    # same vectors up to sign (well-separated values)
    np.testing.assert_allclose(np.abs(np.sum(U * U0[:, :8], axis=0)), 1.0, atol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(V * V0[:, :8], axis=0)), 1.0, atol=1e-8)


def test_randomized_svd_float32_weight_within_1e6_of_sigma1():
    """A float32 W (as read from bf16 / GGUF): products in float32, error ≤ 1e-6 · σ₁ against float64 LAPACK."""
    rng = np.random.default_rng(4)
    W, U0, V0 = _planted_W(rng, 1024, 768, np.r_[np.geomspace(40, 4, 32), np.full(200, 1.0)])
    W32 = W.astype(np.float32)
    s = np.linalg.svd(W32.astype(np.float64), compute_uv=False)
    U, S, V = randomized_svd(W32, 16, method="krylov")
    assert U.dtype == S.dtype == V.dtype == np.float64
    assert np.max(np.abs(S - s[:16])) < 1e-6 * s[0]
    np.testing.assert_allclose(np.abs(np.sum(V * V0[:, :16], axis=0)), 1.0, atol=1e-5)


def test_projection_norm_of_a_float32_weight_matches_float64():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((300, 200))
    U, V = _orth(rng, 300, 6), _orth(rng, 200, 6)
    ref = np.linalg.norm(U.T @ W @ V)
    assert projection_norm(W.astype(np.float32), U, V) == pytest.approx(ref, rel=1e-5)
    assert projection_norm(W, U, V) == pytest.approx(ref, rel=1e-12)


def test_randomized_svd_deterministic_full_fallback_and_errors():
    W = np.random.default_rng(3).standard_normal((40, 30))
    a, b = randomized_svd(W, 3, seed=5, method="krylov"), randomized_svd(W, 3, seed=5, method="krylov")
    assert np.array_equal(a.U, b.U) and np.array_equal(a.S, b.S)
    full = randomized_svd(W, 20)  # Krylov space would span everything: exact SVD
    np.testing.assert_allclose(full.S, np.linalg.svd(W, compute_uv=False)[:20], rtol=1e-12)
    with pytest.raises(ValueError, match="method"):
        randomized_svd(W, 3, method="power")
    with pytest.raises(ValueError, match=r"\[1, 30\]"):
        randomized_svd(W, 31)
    with pytest.raises(ValueError, match="2-D"):
        randomized_svd(np.ones(5), 1)


# ------------------------------------------------------------------ Table 7

def test_case_w_equals_root_sum_of_top_r_squared_singular_values():
    rng = np.random.default_rng(4)
    s = np.sort(rng.uniform(0.1, 5.0, 48))[::-1]
    W, _, _ = _planted_W(rng, 64, 48, s)
    for r in (1, 4, 16):
        lr = LowRank(rng.standard_normal((r, 48)), rng.standard_normal((64, r)), scale=2.0)
        res = weight_correlation(W, lr)
        assert res.proj_w == pytest.approx(math.sqrt(np.sum(s[:r] ** 2)), rel=1e-10)
        assert res.w_norm == pytest.approx(np.linalg.norm(s), rel=1e-12)
        assert res.k == r and res.proj_w >= res.proj_delta  # W's own directions are the best


def test_case_random_matches_closed_form_in_expectation():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((60, 40)) * rng.uniform(0.2, 3.0, (60, 1))
    d_out, d_in, r = 60, 40, 5
    sq = [projection_norm(W, U, V) ** 2 for U, V in random_bases(d_out, d_in, r, seed=0, n=2000)]
    exact = np.linalg.norm(W) ** 2 * r * r / (d_out * d_in)  # E‖Uᵀ W V‖_F² for independent uniform U, V
    assert np.mean(sq) == pytest.approx(exact, rel=0.03)
    lr = LowRank(rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r)))
    res = weight_correlation(W, lr, n_random=400)
    assert res.proj_random_rms == pytest.approx(res.proj_random_expected, rel=0.03)
    assert res.proj_random < res.proj_random_rms  # Jensen: the mean norm is below the RMS
    assert res.proj_random_expected == pytest.approx(np.linalg.norm(W) * r / math.sqrt(d_out * d_in))


def test_amplification_on_planted_update():
    """ΔW = c (u₅ v₅ᵀ a + u₇ v₇ᵀ b) along W's 5th and 7th singular pairs: ‖UᵀWV‖ = √(σ₅² + σ₇²)."""
    rng = np.random.default_rng(6)
    s = np.linspace(10, 1, 30)
    W, U0, V0 = _planted_W(rng, 50, 40, s)
    a, b, scale = 3.0, 2.0, 4.0
    B = U0[:, [4, 6]] * [a, b]  # (50, 2)
    A = V0[:, [4, 6]].T  # (2, 40)
    lr = LowRank(A, B, scale=scale)
    res = weight_correlation(W, lr)
    assert res.proj_delta == pytest.approx(math.hypot(s[4], s[6]), rel=1e-10)
    assert res.delta_norm == pytest.approx(scale * math.hypot(a, b), rel=1e-12)
    assert res.amplification == pytest.approx(scale * math.hypot(a, b) / math.hypot(s[4], s[6]), rel=1e-10)
    assert res.over_random > 1
    frame = res.to_frame()
    assert frame.shape[0] == 1 and {"amplification", "proj_w", "proj_random"} <= set(frame.columns)


def test_invariant_to_factor_rotation_and_scale_only_moves_norms():
    rng = np.random.default_rng(7)
    W = rng.standard_normal((30, 20))
    A, B = rng.standard_normal((4, 20)), rng.standard_normal((30, 4))
    Q = _orth(rng, 4, 4)
    r1 = weight_correlation(W, LowRank(A, B, scale=1.0))
    r2 = weight_correlation(W, LowRank(Q.T @ A, B @ Q, scale=1.0))
    r3 = weight_correlation(W, LowRank(A, B, scale=3.0))
    for f in ("proj_delta", "proj_w", "proj_random", "delta_norm"):
        assert getattr(r1, f) == pytest.approx(getattr(r2, f), rel=1e-10)
    assert r3.proj_delta == pytest.approx(r1.proj_delta, rel=1e-12)
    assert r3.amplification == pytest.approx(3 * r1.amplification, rel=1e-12)


def test_zero_update_and_bad_input():
    rng = np.random.default_rng(8)
    W = rng.standard_normal((12, 10))
    z = weight_correlation(W, LowRank(rng.standard_normal((2, 10)), np.zeros((12, 2))))
    assert z.zero and z.k == 0 and math.isnan(z.amplification) and z.proj_delta == 0.0
    lr = LowRank(rng.standard_normal((2, 10)), rng.standard_normal((12, 2)), name="m.q")
    with pytest.raises(ValueError, match=r"\(10, 12\).*\(12, 10\).*transposed"):
        weight_correlation(W.T, lr)
    with pytest.raises(TypeError, match="LowRank"):
        weight_correlation(W, W)
    with pytest.raises(ValueError, match="NaN"):
        weight_correlation(np.full((12, 10), np.nan), lr)


# ------------------------------------------------------------------ Fig. 8

def test_overlap_planted_on_top_and_bottom_directions():
    rng = np.random.default_rng(9)
    s = np.linspace(5, 1, 24)
    W, U0, V0 = _planted_W(rng, 24, 24, s)
    top = LowRank(V0[:, :2].T, U0[:, :2] * [2.0, 1.0])  # ΔW in W's top-2 singular pairs
    bottom = LowRank(V0[:, -3:].T, U0[:, -3:] * [3.0, 2.0, 1.0])  # in W's bottom 3
    for side in ("output", "input"):
        ov = weight_overlap(W, top, side=side)
        assert ov.phi.shape == (24, 2) and ov.null.shape == (24, 2)
        np.testing.assert_allclose(ov.phi[1:, 1], 1.0, atol=1e-10)  # W's top-i ⊇ ΔW's span for i ≥ 2
        ob = weight_overlap(W, bottom, side=side)
        np.testing.assert_allclose(ob.phi[:21], 0.0, atol=1e-10)  # orthogonal until W's last 3
        assert ob.phi[-1, -1] == pytest.approx(1.0)  # W's full basis spans everything
        phi, rnd, null = ob.curve()
        assert phi.shape == rnd.shape == null.shape == (24,)
    assert weight_overlap(W, top, side="output", n_w=5).phi.shape == (5, 2)
    frame = ov.to_frame()
    assert len(frame) == 48 and {"i", "j", "phi", "random", "null"} <= set(frame.columns)


def test_overlap_random_draw_tracks_the_null_and_rejects_bad_options():
    rng = np.random.default_rng(10)
    W = rng.standard_normal((200, 120))
    lr = LowRank(rng.standard_normal((8, 120)), rng.standard_normal((200, 8)))
    ov = weight_overlap(W, lr, side="input")
    assert ov.d == 120 and ov.random.shape == (120, 8)
    assert np.abs(ov.random[:, -1] - ov.null[:, -1]).max() < 0.25
    assert ov.random[-1, -1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="side"):
        weight_overlap(W, lr, side="left")
    with pytest.raises(ValueError, match="n_w"):
        weight_overlap(W, lr, n_w=500)
    z = weight_overlap(W, LowRank(rng.standard_normal((2, 120)), np.zeros((200, 2))))
    assert z.zero and z.phi.size == 0


def test_random_projections_in_bounded_batches_are_the_seeded_pairs(monkeypatch):
    """Batched passes over W (memory bounded whatever n_random) give ‖UᵢᵀWVᵢ‖ of random_bases' pairs, in order."""
    from analysis.metrics import correlation as C

    rng = np.random.default_rng(3)
    W = rng.standard_normal((40, 30))
    want = [np.linalg.norm(U.T @ W @ V) for U, V in C.random_bases(40, 30, 4, seed=5, n=23)]
    for cols in (4, 12, 4096):  # one pair per pass, three per pass, all at once
        monkeypatch.setattr(C, "PROJECTION_COLUMNS", cols)
        np.testing.assert_allclose(C.random_projections(W, 4, n_random=23, seed=5), want, rtol=1e-12)
