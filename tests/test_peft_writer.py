"""io.peft_writer: PEFT adapters written from updates, and rank_pattern keys that PEFT's own rule resolves."""

import json

import numpy as np
import pytest

from analysis import Adapter, load_adapter
from analysis.core.truncate import from_svd
from analysis.errors import AdapterError
from analysis.io.peft_writer import pattern_keys, peft_factors, write_peft_adapter
from analysis.sweeps.resize import read_rank_pattern, resize_adapter


def test_writer_checks_and_layouts(tmp_path):
    lr = from_svd(np.eye(4, 2), np.array([2.0, 1.0]), np.eye(3, 2), alpha=2.0, name="a.b")
    with pytest.raises(AdapterError, match="scale"):
        write_peft_adapter(tmp_path / "w", {"a.b": lr}, lora_alpha=3.0)
    fifo = from_svd(np.eye(4, 2), np.ones(2), np.eye(3, 2), alpha=2.0, name="c.d", meta={"fan_in_fan_out": True})
    with pytest.raises(AdapterError, match="fan_in_fan_out"):
        write_peft_adapter(tmp_path / "w", {"a.b": lr, "c.d": fifo}, lora_alpha=2.0)
    conv = from_svd(np.eye(6, 2), np.ones(2), np.eye(3 * 2 * 2, 2), alpha=2.0, kind="conv", weight_shape=(6, 3, 2, 2))
    f = peft_factors(conv)
    assert f["lora_A.weight"].shape == (2, 3, 2, 2) and f["lora_B.weight"].shape == (6, 2, 1, 1)
    names = [f"model.layers.{i}.self_attn.q_proj" for i in (1, 11, 21)]
    keys = pattern_keys(names + ["model.layers.1.mlp.q_proj"])
    import re

    for n, key in keys.items():  # PEFT's get_pattern_key rule picks each name alone
        assert [m for m in keys if re.match(rf"(.*\.)?({key})$", m)] == [n]
    assert read_rank_pattern({"q_proj": 3}) == (None, {"q_proj": 3})
    assert read_rank_pattern({"r": 2, "rank_pattern": {}}) == (2, {})
    kohya = Adapter({"lora_unet_x": lr}, path="k.safetensors", format="kohya")
    res = resize_adapter(kohya, rank=1)  # written back as kohya (issue 13), into a .safetensors file only
    with pytest.raises(AdapterError, match="kohya"):
        res.write(tmp_path / "k_out")


def test_pattern_keys_resolve_under_peft_get_pattern_key():
    get_pattern_key = pytest.importorskip("peft.utils.other").get_pattern_key
    names = [f"model.layers.{i}.self_attn.{m}" for i in (0, 1, 2, 10, 11, 12, 21) for m in ("q_proj", "v_proj")]
    names += ["model.layers.1.mlp.q_proj", "transformer.h.3.attn.c_attn:q"]
    keys = pattern_keys(names)
    pattern = {keys[n]: i + 1 for i, n in enumerate(names)}  # a different rank per module
    for i, n in enumerate(names):
        assert pattern[get_pattern_key(list(pattern), n)] == i + 1, n


def test_written_adapter_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    mods = {}
    for i, k in enumerate((1, 3)):
        U = np.linalg.qr(rng.standard_normal((8, k)))[0]
        V = np.linalg.qr(rng.standard_normal((6, k)))[0]
        mods[f"model.layers.{i}.self_attn.q_proj"] = from_svd(U, np.linspace(2, 1, k), V, alpha=4.0)
    cfg = write_peft_adapter(tmp_path / "out", mods, lora_alpha=4.0)
    assert cfg["rank_pattern"] and json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == cfg["r"]
    back = load_adapter(tmp_path / "out")
    assert sorted(back) == sorted(mods)
    for n, lr in mods.items():
        np.testing.assert_allclose(back[n].delta(), lr.delta(), atol=1e-6)  # float32 on disk
    with pytest.raises(AdapterError):
        write_peft_adapter(tmp_path / "out", mods, lora_alpha=4.0)  # not replaced without force
