"""StoredMatrix: a base weight kept as its stored bits, widened block by block where it is used."""

import os

import numpy as np
import pytest

from analysis.errors import AdapterError
from analysis.io.safetensors_file import SafetensorsFile
from analysis.io.stored import StoredMatrix


def _bf16(x):
    """(bits, exact float32 values) of x rounded to bfloat16 by torch (the oracle of the format)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16), t.float().numpy()


@pytest.mark.parametrize("m, n", [(5, 7), (300, 5000), (1, 1)])
def test_bf16_widening_and_blocked_product_match_torch_and_float64(m, n):
    rng = np.random.default_rng(0)
    bits, exact = _bf16(rng.standard_normal((m, n)))
    W = StoredMatrix(bits, "bf16", path="w.safetensors", key="w")
    np.testing.assert_array_equal(W.array(), exact)  # widening is exact
    X = rng.standard_normal((n, 3))
    ref = exact.astype(np.float64) @ X  # dense float64 oracle
    got = W @ X
    assert got.shape == (m, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max() + 1e-6)
    np.testing.assert_allclose(W @ X[:, 0], ref[:, 0], rtol=0, atol=1e-5 * np.abs(ref).max() + 1e-6)
    Y = rng.standard_normal((2, m))
    np.testing.assert_allclose(Y @ W, Y @ exact.astype(np.float64), rtol=0, atol=1e-4 * np.abs(Y @ exact).max())


@pytest.mark.parametrize("fmt, dtype", [("f16", np.float16), ("f32", np.float32), ("f64", np.float64)])
def test_other_formats(fmt, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 30)).astype(dtype)
    W = StoredMatrix.from_array(x)
    assert W.fmt == fmt and W.dtype == (np.float64 if fmt == "f64" else np.float32)
    X = rng.standard_normal((30, 4))
    ref = x.astype(np.float64) @ X
    np.testing.assert_allclose(W @ X, ref, rtol=1e-5 if fmt != "f64" else 1e-12, atol=1e-5)


def test_views_transpose_slice_reshape_share_the_bits():
    rng = np.random.default_rng(2)
    bits, exact = _bf16(rng.standard_normal((6, 2, 3, 3)))  # a conv kernel (out, in, kh, kw)
    W = StoredMatrix(bits, "bf16")
    flat = W.reshape(6, -1)
    np.testing.assert_array_equal(flat.array(), exact.reshape(6, -1))
    np.testing.assert_array_equal(flat.T.array(), exact.reshape(6, -1).T)
    np.testing.assert_array_equal(flat[2:4].array(), exact.reshape(6, -1)[2:4])
    X = rng.standard_normal((6, 2))
    np.testing.assert_allclose(flat.T @ X, exact.reshape(6, -1).T.astype(np.float64) @ X, atol=1e-5)
    assert np.shares_memory(flat.T.bits, bits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_refused_by_the_product_that_uses_it(bad):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 3000)).astype(np.float32)
    x[417, 2001] = bad
    bits, _ = _bf16(x)
    W = StoredMatrix(bits, "bf16", path="model.safetensors", key="layers.0.q_proj.weight")
    X = np.zeros((3000, 2))  # even when X is zero where W is not finite: the ones column sees it
    with pytest.raises(AdapterError, match=r"model\.safetensors.*layers\.0\.q_proj\.weight.*NaN.*Inf"):
        W @ X
    with pytest.raises(AdapterError, match="layers.0.q_proj.weight"):
        W.array()


def test_finite_rows_whose_sum_overflows_are_not_refused():
    big = np.full((2, 4), 3e38, dtype=np.float32)  # finite; each row sums past float32's range
    W = StoredMatrix.from_array(big)
    X = np.zeros((4, 1))
    np.testing.assert_array_equal(W @ X, np.zeros((2, 1)))


def test_wrong_bits_and_shapes_are_refused():
    with pytest.raises(TypeError, match="bf16 bits must have dtype uint16"):
        StoredMatrix(np.zeros((2, 2), np.float32), "bf16")
    with pytest.raises(ValueError, match="fmt must be one of"):
        StoredMatrix(np.zeros((2, 2), np.float32), "int8")
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        StoredMatrix.from_array(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="has 3 rows"):
        StoredMatrix.from_array(np.zeros((2, 2), np.float32)) @ np.zeros((3, 1))


def test_lazy_and_read_tensors_are_equal(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    import analysis.io.stored as stored

    monkeypatch.setattr(stored, "_BLOCK_BYTES", 256)  # several row blocks even for these small tensors
    rng = np.random.default_rng(4)
    t = {"a.weight": torch.from_numpy(rng.standard_normal((33, 17)).astype(np.float32)).to(torch.bfloat16),
         "b.weight": torch.from_numpy(rng.standard_normal((8, 9)).astype(np.float16)),
         "c.weight": torch.from_numpy(rng.standard_normal((5, 70)).astype(np.float32))}
    save_file(t, str(tmp_path / "m.safetensors"))
    f = SafetensorsFile(tmp_path / "m.safetensors")
    for k in t:
        lazy, read = f.read_stored(k, lazy=True), f.read_stored(k)
        ref = t[k].float().numpy()
        X = rng.standard_normal((ref.shape[1], 3))
        got = lazy @ X  # streamed from the file before anything is read whole
        assert lazy._bits is None
        np.testing.assert_array_equal(got, read @ X)
        np.testing.assert_allclose(got, ref.astype(np.float64) @ X, atol=1e-5)
        np.testing.assert_array_equal(lazy.bits, read.bits)
        np.testing.assert_array_equal(lazy.array(), ref)
        np.testing.assert_array_equal(f.read(k), ref)


def test_a_file_cut_short_after_opening_is_one_clear_error(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w.weight": torch.ones((64, 64), dtype=torch.bfloat16)}, str(path))
    lazy = SafetensorsFile(path).read_stored("w.weight", lazy=True)
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(AdapterError, match=r"m\.safetensors.*w\.weight.*truncated"):
        lazy @ np.ones((64, 1))
    with pytest.raises(AdapterError, match=r"m\.safetensors.*w\.weight.*truncated"):
        lazy.array()


def test_bf16_base_sweep_same_cold_warm_and_uncached(tmp_path):
    """A bf16 base through the stored path: cold (W widened), warm (one blocked product) and no cache agree
    exactly, and with dense float64 projections of the same W."""
    import pandas as pd
    import torch
    from conftest import make_peft_adapter
    from safetensors.torch import save_file

    from analysis import load_adapter
    from analysis.sweeps.svd_cache import SVDCache
    from analysis.sweeps.adapter import analyse_adapter

    make_peft_adapter(tmp_path / "ad", r=4, seed=2)
    ad = load_adapter(tmp_path / "ad")
    rng = np.random.default_rng(0)
    base = {n + ".weight": torch.from_numpy(rng.standard_normal(ad[n].shape).astype(np.float32)).to(torch.bfloat16)
            for n in ad}
    save_file(base, str(tmp_path / "base.safetensors"))
    path = str(tmp_path / "base.safetensors")
    cold = analyse_adapter(ad, base=path, cache=SVDCache(tmp_path / "c"), jobs=2).frame
    warm_cache = SVDCache(tmp_path / "c")
    warm = analyse_adapter(ad, base=path, cache=warm_cache, jobs=1).frame
    assert warm_cache.hits == 2 * len(ad) and warm_cache.misses == 0
    off = analyse_adapter(ad, base=path, cache=False).frame
    pd.testing.assert_frame_equal(cold, warm)
    pd.testing.assert_frame_equal(cold, off)
    for _, row in cold.iterrows():
        W = base[row["name"] + ".weight"].double().numpy()
        lr = ad[row["name"]]
        U, V = lr.basis("output"), lr.basis("input")
        assert row["proj_delta"] == pytest.approx(np.linalg.norm(U.T @ W @ V), rel=1e-5)
        assert row["w_norm"] == pytest.approx(np.linalg.norm(W), rel=1e-12)


def test_nan_in_a_bf16_base_names_file_and_key_with_the_cache_warm(tmp_path):
    import torch
    from conftest import make_peft_adapter
    from safetensors.torch import save_file

    from analysis import load_adapter
    from analysis.sweeps.svd_cache import SVDCache
    from analysis.sweeps.adapter import analyse_adapter

    make_peft_adapter(tmp_path / "ad", r=2, seed=1, layers=1)
    ad = load_adapter(tmp_path / "ad")
    rng = np.random.default_rng(0)
    base = {n + ".weight": torch.from_numpy(rng.standard_normal(ad[n].shape).astype(np.float32)).to(torch.bfloat16)
            for n in ad}
    path = tmp_path / "base.safetensors"
    save_file(base, str(path))
    analyse_adapter(ad, base=str(path), cache=SVDCache(tmp_path / "c"))
    st = os.stat(path)
    name = sorted(ad)[0]
    base[name + ".weight"][3, 5] = float("nan")
    save_file(base, str(path))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, time and header
    cache = SVDCache(tmp_path / "c")
    with pytest.raises(AdapterError, match=rf"base\.safetensors.*{name}\.weight.*1 NaN"):
        analyse_adapter(ad, base=str(path), cache=cache, jobs=1)
    assert cache.misses >= 1  # the cache is keyed by content (issue 23): the edited tensor is never a hit
    with pytest.raises(AdapterError, match=rf"base\.safetensors.*{name}\.weight.*1 NaN"):
        analyse_adapter(ad, base=str(path), cache=False)  # and by the cold path
