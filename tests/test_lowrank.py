"""LowRank: the factored SVD against dense float64 oracles, and its invariances."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import AdapterError, LowRank, MissingAlphaError


def _factors(rng, d_out, d_in, r, dtype=np.float32):
    A = rng.standard_normal((r, d_in)).astype(dtype)
    B = rng.standard_normal((d_out, r)).astype(dtype)
    return A, B


def _random_orthogonal(rng, r):
    q, rr = np.linalg.qr(rng.standard_normal((r, r)))
    return q * np.sign(np.diag(rr))


@pytest.mark.parametrize("d_out,d_in,r", [(40, 30, 4), (30, 50, 8), (64, 64, 1), (20, 12, 12)])
def test_svd_matches_dense(d_out, d_in, r):
    rng = np.random.default_rng(0)
    A, B = _factors(rng, d_out, d_in, r)
    lr = LowRank(A, B, scale=0.5)
    U, S, V = lr.svd()
    dense = 0.5 * B.astype(np.float64) @ A.astype(np.float64)
    S_ref = np.linalg.svd(dense, compute_uv=False)
    np.testing.assert_allclose(S, S_ref[: len(S)], rtol=1e-10)
    np.testing.assert_allclose(U @ np.diag(S) @ V.T, dense, atol=1e-10 * S_ref[0])
    np.testing.assert_allclose(U.T @ U, np.eye(len(S)), atol=1e-12)
    np.testing.assert_allclose(V.T @ V, np.eye(len(S)), atol=1e-12)
    assert lr.rank == min(r, d_out, d_in)
    assert lr.norm() == pytest.approx(np.linalg.norm(dense), rel=1e-12)
    np.testing.assert_allclose(lr.delta(), dense, rtol=1e-12, atol=1e-12)
    assert lr.delta().shape == (d_out, d_in)


def test_singular_vectors_match_dense_up_to_sign():
    rng = np.random.default_rng(1)
    A, B = _factors(rng, 50, 40, 6, np.float64)
    lr = LowRank(A, B, scale=2.0)
    U, S, V = lr.svd()
    Ud, Sd, Vdt = np.linalg.svd(2.0 * B @ A, full_matrices=False)
    for k in range(6):
        assert abs(abs(U[:, k] @ Ud[:, k]) - 1) < 1e-10
        assert abs(abs(V[:, k] @ Vdt[k]) - 1) < 1e-10
        # sign convention: the largest-magnitude entry of each U column is positive
        assert U[np.argmax(np.abs(U[:, k])), k] > 0


def test_numerical_rank_of_rank_deficient_factors():
    rng = np.random.default_rng(2)
    A, B = _factors(rng, 30, 20, 5, np.float64)
    B[:, 4] = B[:, 0] + B[:, 1]  # rank of B drops to 4
    lr = LowRank(A, B)
    assert lr.rank == 4
    assert lr.svd().U.shape == (30, 4)


def test_zero_update_is_reported_not_nan():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 16))
    lr = LowRank(A, np.zeros((8, 4)), scale=2.0)
    assert lr.is_zero and lr.rank == 0
    U, S, V = lr.svd()
    assert U.shape == (8, 0) and S.shape == (0,) and V.shape == (16, 0)
    assert lr.norm() == 0.0
    # the paper's basis (A's row space) still exists
    assert lr.basis("A").shape == (16, 4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), r=st.integers(1, 6), scale=st.floats(0.1, 10))
def test_rotation_invariance(seed, r, scale):
    """B -> BQ, A -> QᵀA leaves ΔW, its spectrum and its singular subspaces unchanged."""
    rng = np.random.default_rng(seed)
    A, B = _factors(rng, 24, 18, r, np.float64)
    Q = _random_orthogonal(rng, r)
    l1, l2 = LowRank(A, B, scale=scale), LowRank(Q.T @ A, B @ Q, scale=scale)
    U1, S1, V1 = l1.svd()
    U2, S2, V2 = l2.svd()
    np.testing.assert_allclose(S1, S2, rtol=1e-9)
    # with distinct singular values the fixed sign convention makes the vectors equal
    gaps = -np.diff(S1) if len(S1) > 1 else np.array([1.0])
    if gaps.min() > 1e-6 * S1[0]:
        np.testing.assert_allclose(U1, U2, atol=1e-6)
        np.testing.assert_allclose(V1, V2, atol=1e-6)
    np.testing.assert_allclose(l1.delta(), l2.delta(), atol=1e-9 * S1[0])


def test_rescaling_factors_changes_nothing_but_is_not_rotation():
    """B -> B D, A -> D⁻¹ A (any invertible D) keeps ΔW; the paper's A-basis span is unchanged too."""
    rng = np.random.default_rng(4)
    A, B = _factors(rng, 20, 15, 3, np.float64)
    D = np.diag([2.0, 0.5, 3.0])
    l1, l2 = LowRank(A, B), LowRank(np.linalg.inv(D) @ A, B @ D)
    np.testing.assert_allclose(l1.svd().S, l2.svd().S, rtol=1e-10)
    P1 = l1.basis("A") @ l1.basis("A").T
    P2 = l2.basis("A") @ l2.basis("A").T
    np.testing.assert_allclose(P1, P2, atol=1e-10)


def test_paper_basis_is_right_singular_vectors_of_A():
    rng = np.random.default_rng(5)
    A, B = _factors(rng, 10, 30, 4, np.float64)
    lr = LowRank(A, B)
    _, sA, VAt = np.linalg.svd(A, full_matrices=False)
    UA = lr.basis("A")
    np.testing.assert_allclose(lr.factor_singular_values("A"), sA, rtol=1e-12)
    for k in range(4):
        assert abs(abs(UA[:, k] @ VAt[k]) - 1) < 1e-10
    UB, _, _ = np.linalg.svd(B, full_matrices=False)
    for k in range(4):
        assert abs(abs(lr.basis("B")[:, k] @ UB[:, k]) - 1) < 1e-10
    with pytest.raises(ValueError, match="side must be"):
        lr.basis("rows")


def test_missing_scale_raises_clear_error_but_subspaces_work():
    rng = np.random.default_rng(6)
    A, B = _factors(rng, 10, 12, 2)
    lr = LowRank(A, B, scale=None, name="h.0.attn.c_attn", source="ckpt.pt")
    assert lr.basis("input").shape == (12, 2)
    for f in (lr.norm, lr.delta, lr.svd):
        with pytest.raises(MissingAlphaError, match=r"ckpt\.pt: key 'h\.0\.attn\.c_attn': alpha"):
            f()
    assert lr.with_scale(4.0).norm() == pytest.approx(4.0 * np.linalg.norm(B.astype(float) @ A))


def test_bad_factors_name_the_problem():
    with pytest.raises(AdapterError, match=r"f\.safetensors: key 'm': inner dimensions disagree.*\(8, 3\).*\(4, 5\)"):
        LowRank(np.ones((4, 5)), np.ones((8, 3)), name="m", source="f.safetensors")
    with pytest.raises(AdapterError, match="2-D"):
        LowRank(np.ones(5), np.ones((8, 1)))


def test_half_precision_is_upcast():
    rng = np.random.default_rng(7)
    A, B = _factors(rng, 8, 6, 2, np.float16)
    lr = LowRank(A, B)
    assert lr.lora_A.dtype == np.float32 and lr.svd().S.dtype == np.float64


def test_negative_scale_reconstructs():
    rng = np.random.default_rng(8)
    A, B = _factors(rng, 12, 9, 3, np.float64)
    lr = LowRank(A, B, scale=-1.5)
    U, S, V = lr.svd()
    assert (S >= 0).all()
    np.testing.assert_allclose(U @ np.diag(S) @ V.T, -1.5 * B @ A, atol=1e-10)


def test_a_module_of_width_zero_is_refused_naming_it():
    import numpy as np
    import pytest

    from analysis.core import LowRank
    from analysis.errors import AdapterError

    with pytest.raises(AdapterError, match="positive width") as e:
        LowRank(np.zeros((2, 0)), np.zeros((4, 2)), name="layers.0.q", source="a.safetensors")
    assert "a.safetensors" in str(e.value) and "layers.0.q" in str(e.value)
    assert LowRank(np.zeros((0, 3)), np.zeros((4, 0))).is_zero  # rank 0: a zero update, not an error
