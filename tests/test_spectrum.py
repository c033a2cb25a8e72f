"""Spectra and rank measures against dense float64 computations."""

import numpy as np
import pytest

from analysis import Adapter, LowRank
from analysis.metrics.spectrum import (effective_rank, energy_retained, rank_for_energy, rank_for_error,
                                       spectrum_summary, stable_rank)
from analysis.sweeps.spectra import spectra_frame, spectra_long

from _rank_tiny import random_adapter


def _dense(lr):
    D = lr.delta()  # (d_out, d_in) float64
    return D, np.linalg.svd(D, compute_uv=False)


def _trunc_err(D, k):
    """‖D − D_k‖_F / ‖D‖_F from a dense SVD truncation."""
    U, S, Vt = np.linalg.svd(D, full_matrices=False)
    Dk = (U[:, :k] * S[:k]) @ Vt[:k]  # (d_out, k) @ (k, d_in)
    return np.linalg.norm(D - Dk) / np.linalg.norm(D)


@pytest.fixture(scope="module")
def lr():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 40)) * np.array([5, 3, 2, 1, 0.5, 0.1])[:, None]
    return LowRank(A, rng.standard_normal((30, 6)), 0.7, name="model.layers.3.mlp.up_proj")


def test_measures_match_dense(lr):
    D, s = _dense(lr)
    k = lr.rank
    np.testing.assert_allclose(lr.singular_values(), s[:k], rtol=1e-10)
    assert np.all(s[k:] < 1e-10 * s[0])
    S = lr.singular_values()
    e = energy_retained(S)
    for j in range(1, k + 1):
        assert e[j - 1] == pytest.approx(1 - _trunc_err(D, j) ** 2, abs=1e-12)
    for target in (0.5, 0.9, 0.99, 0.999, 1.0):
        j = rank_for_energy(S, target)
        assert 1 - _trunc_err(D, j) ** 2 >= target - 1e-12
        assert j == 1 or 1 - _trunc_err(D, j - 1) ** 2 < target
    for eps in (0.5, 0.1, 0.01):
        j = rank_for_error(S, eps)
        assert _trunc_err(D, j) <= eps + 1e-12
        assert j == 1 or _trunc_err(D, j - 1) > eps
    assert stable_rank(S) == pytest.approx(np.linalg.norm(D, "fro") ** 2 / np.linalg.norm(D, 2) ** 2, rel=1e-10)
    p = s[:k] / s[:k].sum()
    assert effective_rank(S) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
    summ = spectrum_summary(S)
    assert summ.fro == pytest.approx(np.linalg.norm(D), rel=1e-12)
    assert summ.sigma1 == pytest.approx(np.linalg.norm(D, 2), rel=1e-12)
    assert summ.top1_energy == pytest.approx(s[0] ** 2 / (s ** 2).sum(), rel=1e-10)


def test_known_answers():
    assert rank_for_energy([2.0, 1.0], 0.8) == 1  # 4 / 5 = 0.8 exactly
    assert rank_for_energy([2.0, 1.0], 0.81) == 2
    assert rank_for_error([2.0, 1.0, 0.0], 0.0) == 2  # exact needs the numerical rank, not len(s)
    assert rank_for_error([3.0, 4.0 / 3.0], 0.41) == 1  # error of rank 1: (4/3) / √(9 + 16/9) ≈ 0.406
    assert effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
    assert stable_rank([4.0, 3.0]) == pytest.approx(25 / 16)
    assert energy_retained(np.zeros(0)).size == 0
    assert effective_rank(np.zeros(0)) == 0.0 and stable_rank(np.zeros(0)) == 0.0
    assert rank_for_energy([0.0, 0.0], 0.9) == 0
    z = spectrum_summary([])
    assert (z.rank, z.rank90, z.fro, z.effective_rank) == (0, 0, 0.0, 0.0)


@pytest.mark.parametrize("bad", [[1.0, 2.0], [[1.0]], [1.0, -1.0], [np.nan]])
def test_bad_spectra_raise(bad):
    with pytest.raises(ValueError):
        spectrum_summary(bad)


def test_bad_targets_raise():
    with pytest.raises(ValueError, match="energy"):
        rank_for_energy([1.0], 0.0)
    with pytest.raises(ValueError, match="rel_error"):
        rank_for_error([1.0], 1.0)


def test_spectra_frame_and_long_match_dense():
    rng = np.random.default_rng(1)
    shapes = {f"model.layers.{i}.self_attn.{m}": ((24, 16) if m == "q_proj" else (8, 16))
              for i in range(3) for m in ("q_proj", "v_proj")}
    ad = random_adapter(rng, shapes, r=4)
    zero = LowRank(np.ones((2, 16)), np.zeros((8, 2)), 1.0, name="model.layers.3.self_attn.v_proj")
    ad = Adapter({**dict(ad), zero.name: zero}, path="synthetic", format="peft")
    fr = spectra_frame(ad, energies=(0.9, 0.5), errors=(0.1,))
    assert list(fr["name"]) == sorted(ad, key=lambda n: (int(n.split(".")[2]), n))
    assert {"rank_e50", "rank_err10", "rank90", "rank99"} <= set(fr.columns)
    for row in fr.to_dict(orient="records"):
        lr = ad[row["name"]]
        if row["zero"]:
            assert row["rank"] == 0 and row["fro"] == 0 and row["rank90"] == 0
            continue
        D, s = _dense(lr)
        assert row["sigma1"] == pytest.approx(s[0], rel=1e-10)
        assert row["fro"] == pytest.approx(np.linalg.norm(D), rel=1e-10)
        assert row["rank"] == np.linalg.matrix_rank(D) == 4
        assert row["rank_err10"] == next(j for j in range(1, 5) if _trunc_err(D, j) <= 0.1 + 1e-12)
        assert (row["layer"], row["d_out"], row["d_in"], row["r"]) == (int(row["name"].split(".")[2]),
                                                                       *D.shape, 4)
    long = spectra_long(ad, modules=["v_proj"], layers="0-1")
    assert set(long["name"]) == {"model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"}
    for name, g in long.groupby("name"):
        D, s = _dense(ad[name])
        np.testing.assert_allclose(g["sigma"], s[:4], rtol=1e-10)
        np.testing.assert_allclose(g["rel_error"], [_trunc_err(D, j) for j in range(1, 5)], atol=1e-7)
        assert g["energy"].iloc[-1] == pytest.approx(1.0)
    assert spectra_long(ad, modules=["nothing"]).empty


def test_spectra_frame_needs_an_adapter():
    with pytest.raises(TypeError, match="load_adapter"):
        spectra_frame({"a": 1})


def test_plot_spectra_draws_one_line_per_module():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from analysis.plotting import plot_energy_spectra

    rng = np.random.default_rng(2)
    ad = random_adapter(rng, {f"model.layers.{i}.self_attn.{m}": (12, 10) for i in range(3)
                              for m in ("q_proj", "v_proj")}, r=3)
    long = spectra_long(ad)
    ax = Figure().add_subplot()
    art = plot_energy_spectra(long, ax=ax, y="energy")
    assert art.ax is ax and len(art.lines) == 6 and len(art.guides) == 2
    assert art.colorbar is not None and ax.get_legend() is not None
    art = plot_energy_spectra(long, y="sigma", modules=["self_attn.q_proj"], colorbar=False)
    assert len(art.lines) == 3 and art.ax.get_yscale() == "log" and art.colorbar is None
    with pytest.raises(ValueError, match="y must be"):
        plot_energy_spectra(long, y="nope")
    with pytest.raises(ValueError, match="spectra_long"):
        plot_energy_spectra(spectra_frame(ad))
