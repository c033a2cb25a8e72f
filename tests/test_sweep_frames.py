"""Per-module sweeps of one adapter (with a base), pair angle summaries, save/reload of frames."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis import load_adapter
from analysis.io.frames import load_frame, save_frame
from analysis.metrics.correlation import weight_correlation
from analysis.io.base import base_matrix
from analysis.sweeps.adapter import analyse_adapter, analyse_adapters
from analysis.sweeps.pair import compare_adapters

from _synthetic import write_base_for


@pytest.fixture(scope="module")
def adapter_and_base(peft_pair, tmp_path_factory):
    a, _ = peft_pair
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    weights = write_base_for(a, path)
    return a, path, weights


def test_analyse_adapter_without_base(peft_pair):
    a, _ = peft_pair
    ad = load_adapter(a)
    sw = analyse_adapter(ad)
    fr = sw.frame
    assert len(fr) == 4 and list(fr["layer"]) == [0, 0, 1, 1]
    for col in ("r", "rank", "fro", "sigma1", "effective_rank", "stable_rank", "rank90", "top1_energy"):
        assert col in fr.columns
    assert "amplification" not in fr.columns
    name = fr["name"][0]
    assert fr["fro"][0] == pytest.approx(ad[name].norm(), rel=1e-12)
    np.testing.assert_allclose(sw.spectra[name], ad[name].singular_values())
    assert len(analyse_adapter(ad, modules=["v_proj"], layers="1").frame) == 1


def test_analyse_adapter_with_base_matches_direct_metrics(adapter_and_base):
    a, path, weights = adapter_and_base
    ad = load_adapter(a)
    by_path = analyse_adapter(ad, base=path).frame
    by_map = analyse_adapter(ad, base=weights).frame
    pd.testing.assert_frame_equal(by_path, by_map)
    for row in by_path.to_dict(orient="records"):
        ref = weight_correlation(weights[row["name"]], ad[row["name"]])
        assert row["proj_delta"] == pytest.approx(ref.proj_delta, rel=1e-9)
        assert row["amplification"] == pytest.approx(ref.amplification, rel=1e-9)
        s = np.linalg.svd(weights[row["name"]].astype(float), compute_uv=False)
        # float32 weights: the products with W run in float32 (the stated tolerance, ~1e-6 · σ₁)
        assert row["proj_w"] == pytest.approx(math.sqrt(np.sum(s[:row["rank"]] ** 2)), rel=1e-6)
        assert row["w_norm"] == pytest.approx(np.linalg.norm(s), rel=1e-6)
        assert 0 <= row["phi_w_output"] <= 1 and row["null_w_output"] == row["rank"] / row["d_out"]


class _CountingBase(dict):
    """A mapping base that counts how often each weight is read."""

    def __init__(self, weights):
        super().__init__(weights)
        self.reads = {}

    def __getitem__(self, key):
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().__getitem__(key)


def test_analyse_adapters_reads_each_weight_once_and_matches_one_by_one(peft_pair, adapter_and_base):
    _, _, weights = adapter_and_base
    a, b = (load_adapter(p) for p in peft_pair)  # r = 2 and r = 4 on the same modules
    base = _CountingBase(weights)
    sa, sb = analyse_adapters([a, b], base=base)
    assert set(base.reads) == set(weights) and set(base.reads.values()) == {1}
    for ad, sw in ((a, sa), (b, sb)):
        alone = analyse_adapter(ad, base=weights).frame.set_index("name")
        both = sw.frame.set_index("name")
        assert list(both.index) == list(alone.index) and list(both.columns) == list(alone.columns)
        for col in ("proj_delta", "amplification", "proj_random", "w_norm", "fro", "rank"):
            np.testing.assert_allclose(both[col], alone[col], rtol=1e-9)
        # W's top triplets come from one SVD for the larger rank: equal to the stated tolerance
        np.testing.assert_allclose(both["proj_w"], alone["proj_w"], rtol=1e-6)
        np.testing.assert_allclose(both["phi_w_output"], alone["phi_w_output"], atol=1e-6)


def test_missing_base_weight_is_a_clear_error(adapter_and_base):
    a, _, weights = adapter_and_base
    some = dict(list(weights.items())[:1])
    with pytest.raises(ValueError, match="base weight for module"):
        analyse_adapter(load_adapter(a), base=some)


def test_base_matrix_orientations():
    from analysis import LowRank

    rng = np.random.default_rng(0)
    lr = LowRank(rng.standard_normal((2, 5)), rng.standard_normal((7, 2)), name="m")
    W = rng.standard_normal((7, 5))
    assert base_matrix(W, lr) is W
    np.testing.assert_array_equal(base_matrix(W.T, lr), W)
    part = LowRank(lr.lora_A, lr.lora_B, meta={"parent": "c_attn", "rows": (7, 14)})
    fused = rng.standard_normal((21, 5))
    np.testing.assert_array_equal(base_matrix(fused.T, part), fused[7:14])
    with pytest.raises(ValueError, match=r"\(6, 5\).*\(7, 5\)"):
        base_matrix(rng.standard_normal((6, 5)), lr)


def test_pair_sweep_angle_summaries(peft_pair):
    a, b = peft_pair
    fr = compare_adapters(load_adapter(a), load_adapter(b)).frame
    for s in ("A", "input"):
        assert (fr[f"min_angle_deg_{s}"] <= fr[f"median_angle_deg_{s}"]).all()
        assert (fr[f"median_angle_deg_{s}"] <= fr[f"max_angle_deg_{s}"]).all()
        assert fr[f"mean_cos2_{s}"].between(0, 1).all()


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_frames_round_trip_with_dtypes(adapter_and_base, tmp_path, suffix):
    a, path, _ = adapter_and_base
    fr = analyse_adapter(load_adapter(a), base=path).frame
    fr.loc[0, "amplification"] = np.nan
    p = save_frame(fr, tmp_path / f"f{suffix}")
    back = load_frame(p)
    pd.testing.assert_frame_equal(back, fr, check_exact=False, rtol=1e-14)
    pair = compare_adapters(load_adapter(a), load_adapter(a)).frame
    pd.testing.assert_frame_equal(load_frame(save_frame(pair, tmp_path / f"p{suffix}")), pair,
                                  check_exact=False, rtol=1e-14)


def test_frames_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        save_frame(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet")
