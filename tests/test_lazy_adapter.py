"""The lazy PEFT reader (issue 5): same results as the eager path, errors on access naming file and key."""

import json
import subprocess
import sys

import numpy as np
import pytest

from analysis import load_adapter
from analysis.core.adapter import Adapter
from analysis.errors import AdapterError
from analysis.io.safetensors_file import SafetensorsFile
from analysis.io.lazy import LazyAdapter
from analysis.sweeps.pair import compare_adapters

import torch  # noqa: E402
save_pt = pytest.importorskip("safetensors.torch").save_file


def _same_module(x, y):
    assert x.name == y.name and x.kind == y.kind and x.weight_shape == y.weight_shape
    assert x.scale == y.scale and x.source == y.source
    assert x.lora_A.dtype == y.lora_A.dtype and x.lora_B.dtype == y.lora_B.dtype
    np.testing.assert_array_equal(x.lora_A, y.lora_A)
    np.testing.assert_array_equal(x.lora_B, y.lora_B)
    assert {k: v for k, v in x.meta.items()} == {k: v for k, v in y.meta.items()}


def test_lazy_equals_eager_on_real_peft(peft_pair):
    a, b = peft_pair
    ea, la = load_adapter(a), load_adapter(a, lazy=True)
    assert isinstance(la, LazyAdapter) and isinstance(la, Adapter) and not isinstance(ea, LazyAdapter)
    assert list(la) == list(ea) and len(la) == len(ea) and la.ranks == ea.ranks
    assert la.notes == ea.notes and la.config == ea.config and la.format == ea.format == "peft"
    assert "model.layers.0.self_attn.q_proj" in la and "nope" not in la
    for name in ea:
        _same_module(ea[name], la[name])
        U1, S1, V1 = ea[name].svd()
        U2, S2, V2 = la[name].svd()
        np.testing.assert_array_equal(S1, S2)
        np.testing.assert_array_equal(U1, U2)
    assert la[name] is not la[name]  # nothing cached: every access reads the file
    s1 = compare_adapters(ea, load_adapter(b))
    s2 = compare_adapters(la, load_adapter(b, lazy=True))
    import pandas as pd

    pd.testing.assert_frame_equal(s1.frame, s2.frame)
    full = la.eager()
    assert type(full) is Adapter and list(full) == list(ea)


def _write(folder, tensors, *, r=4, alpha=8, config=True):
    folder.mkdir(parents=True, exist_ok=True)
    save_pt(tensors, str(folder / "adapter_model.safetensors"))
    if config:
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"]}))
    return folder


def _tensors(dtype, *, r=4, layers=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(layers):
        for p in ("q_proj", "v_proj"):
            base = f"base_model.model.model.layers.{i}.self_attn.{p}"
            out[f"{base}.lora_A.weight"] = torch.randn(r, d, generator=g).to(dtype)
            out[f"{base}.lora_B.weight"] = torch.randn(d // (2 if p == "v_proj" else 1), r, generator=g).to(dtype)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_lazy_half_precision_upcast_matches_eager(tmp_path, dtype):
    ad = _write(tmp_path / "ad", _tensors(dtype))
    ea, la = load_adapter(ad), load_adapter(ad, lazy=True)
    for name in ea:
        _same_module(ea[name], la[name])
    if dtype in (torch.bfloat16, torch.float16):
        assert la[name].lora_A.dtype == np.float32


def test_safetensors_reader_is_torch_free_and_exact(tmp_path):
    t = {"x": torch.tensor([[1.0, -2.5], [3.140625, float(2 ** -130)]], dtype=torch.bfloat16)}
    save_pt(t, str(tmp_path / "x.safetensors"))
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert f.keys() == ["x"] and f.shapes["x"] == (2, 2) and f.dtypes["x"] == "BF16"
    np.testing.assert_array_equal(f.read("x"), t["x"].float().numpy())
    with pytest.raises(AdapterError, match="no such tensor"):
        f.read("y")


def test_nan_in_one_tensor_is_reported_with_its_key_on_access(tmp_path):
    t = _tensors(torch.bfloat16)
    bad = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    t[bad][0, 0] = float("nan")
    ad = _write(tmp_path / "ad", t)
    with pytest.raises(AdapterError, match="NaN"):  # the eager path refuses the file at once
        load_adapter(ad)
    la = load_adapter(ad, lazy=True)  # structure is fine: opening succeeds
    assert la["model.layers.0.self_attn.q_proj"].rank == 4  # other modules read normally
    with pytest.raises(AdapterError) as e:
        la["model.layers.1.self_attn.v_proj"]
    msg = str(e.value)
    assert "adapter_model.safetensors" in msg and bad in msg and "1 NaN" in msg
    assert e.value.key == bad


def test_cli_reports_nan_with_file_and_key(tmp_path):
    t = _tensors(torch.bfloat16)
    bad = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    t[bad][1, 2] = float("inf")
    a = _write(tmp_path / "a", t)
    b = _write(tmp_path / "b", _tensors(torch.bfloat16, seed=1))
    p = subprocess.run([sys.executable, "-m", "analysis.subspace", str(a), str(b)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert bad in p.stderr and "adapter_model.safetensors" in p.stderr and "Inf" in p.stderr


def test_structural_errors_are_still_raised_when_opening(tmp_path):
    ad = _write(tmp_path / "rank", _tensors(torch.float32, r=4), r=8)  # config says r = 8
    with pytest.raises(AdapterError, match="expected rank 8"):
        load_adapter(ad, lazy=True)
    t = _tensors(torch.float32)
    del t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    ad = _write(tmp_path / "unpaired", t)
    with pytest.raises(AdapterError, match="lora_B"):
        load_adapter(ad, lazy=True)
    t = _tensors(torch.float32)
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = torch.zeros(16, 3)
    with pytest.raises(AdapterError, match="expected lora_B of shape"):
        load_adapter(_write(tmp_path / "inner", t), lazy=True)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(AdapterError, match="safetensors"):
        load_adapter(corrupt, lazy=True)


def test_truncated_file_is_refused(tmp_path):
    ad = _write(tmp_path / "ad", _tensors(torch.float32))
    f = ad / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        la = load_adapter(ad, lazy=True)
        for name in la:
            la[name]


def test_lazy_without_config_and_with_alpha(tmp_path):
    ad = _write(tmp_path / "bare", _tensors(torch.float32), config=False)
    la = load_adapter(ad / "adapter_model.safetensors", lazy=True)
    assert isinstance(la, LazyAdapter)
    name = next(iter(la))
    assert la[name].scale is None
    lb = la.with_alpha(8)
    assert isinstance(lb, LazyAdapter) and lb[name].scale == pytest.approx(2.0)
    ea = load_adapter(ad / "adapter_model.safetensors", alpha=8)
    _same_module(ea[name], load_adapter(ad / "adapter_model.safetensors", alpha=8, lazy=True)[name])


def test_lazy_ignored_for_other_formats(tmp_path):
    t = _tensors(torch.float32)
    torch.save(t, tmp_path / "adapter_model.bin")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    ad = load_adapter(tmp_path, lazy=True)
    assert type(ad) is Adapter and len(ad) == 4


def test_opening_lazily_reads_no_tensor_data(tmp_path):
    import tracemalloc

    t = _tensors(torch.float32, r=16, layers=8, d=4096)  # ~7 MiB of factors
    ad = _write(tmp_path / "big", t, r=16, alpha=16)
    nbytes = sum(x.numel() * 4 for x in t.values())
    load_adapter(ad, lazy=True)["model.layers.0.self_attn.q_proj"].svd()  # warm the imports
    tracemalloc.start()
    try:
        la = load_adapter(ad, lazy=True)
        opened = tracemalloc.get_traced_memory()[0]
        lr = la["model.layers.3.self_attn.q_proj"]
        lr.svd()
        one = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert opened < nbytes / 20  # the header only (shape-only placeholders)
    assert one - opened < nbytes / 2  # one module (1/16 of the file): its factors and float64 SVD
