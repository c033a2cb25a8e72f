"""core.truncate: Eckart–Young from the factors, written as balanced LoRA factors."""

import numpy as np
import pytest

from analysis import LowRank
from analysis.core.truncate import from_svd, truncate


def _truncated(D, k):
    U, S, Vt = np.linalg.svd(D, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vt[:k], S


def test_truncate_and_from_svd_known_answer():
    rng = np.random.default_rng(9)
    lr = LowRank(rng.standard_normal((5, 12)), rng.standard_normal((9, 5)), -0.5, name="m")  # negative scale
    for k in (0, 1, 3, 5, 9):
        t = truncate(lr, k, alpha=4.0)
        kk = min(k, 5)
        assert t.r == max(kk, 1) and t.scale == pytest.approx(4.0 / max(kk, 1))
        np.testing.assert_allclose(t.delta(), _truncated(lr.delta(), kk)[0] if kk else 0, atol=1e-12)
    with pytest.raises(ValueError):
        from_svd(np.eye(3, 2), np.ones(3), np.eye(4, 2), alpha=1.0)


def test_error_is_the_tail_of_the_spectrum_and_factors_are_balanced():
    rng = np.random.default_rng(10)
    lr = LowRank(rng.standard_normal((6, 20)), rng.standard_normal((15, 6)), 2.0)
    D = lr.delta()
    S = np.linalg.svd(D, compute_uv=False)
    for k in (1, 2, 4):
        t = truncate(lr, k)
        assert np.linalg.norm(D - t.delta()) == pytest.approx(np.sqrt(np.sum(S[k:] ** 2)), rel=1e-10)
        # balanced: lora_B and lora_Aᵀ carry the same column norms √(σ / s)
        np.testing.assert_allclose(np.linalg.norm(t.lora_B, axis=0), np.linalg.norm(t.lora_A, axis=1), rtol=1e-10)


def test_from_svd_rejects_bad_alpha_and_keeps_metadata():
    U, V = np.eye(4, 2), np.eye(3, 2)
    with pytest.raises(ValueError, match="alpha"):
        from_svd(U, np.ones(2), V, alpha=0.0)
    lr = from_svd(U, np.array([2.0, 1.0]), V, alpha=2.0, name="a.b", meta={"fan_in_fan_out": True})
    assert lr.meta["r"] == 2 and lr.meta["alpha"] == 2.0 and lr.meta["fan_in_fan_out"]
    np.testing.assert_allclose(lr.delta(), (U * [2.0, 1.0]) @ V.T, atol=1e-15)
