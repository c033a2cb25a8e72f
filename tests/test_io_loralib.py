"""loralib reader: checked against loralib's own merge (``model.eval()`` merges)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

lora = pytest.importorskip("loralib")

from analysis.errors import AdapterError, MissingAlphaError, UnsupportedAdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402

D, VOCAB, R, ALPHA = 8, 11, 4, 32
TOL = dict(rtol=1e-5, atol=1e-4)  # loralib merges in float32 into weights of size ~1


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = lora.MergedLinear(D, 3 * D, r=R, lora_alpha=ALPHA, enable_lora=[True, False, True],
                                        fan_in_fan_out=True)


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = lora.Linear(D, 2 * D, r=R, lora_alpha=ALPHA, fan_in_fan_out=True)  # GPT-2 Conv1D


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _Attn()
        self.mlp = _Mlp()


class TinyGPT2(nn.Module):
    """Just enough of GPT-2 to carry every loralib layer the paper uses."""

    def __init__(self):
        super().__init__()
        self.wte = lora.Embedding(VOCAB, D, r=R, lora_alpha=ALPHA)
        self.h = nn.ModuleList([_Block()])
        self.lm_head = lora.Linear(D, 5, r=R, lora_alpha=ALPHA)


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def _loralib_deltas(model, fifo):
    """Merged minus original weight for every LoRA module, in (out, in) / table orientation."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, lora.LoRALayer)}
    before = {n: (m.conv.weight if hasattr(m, "conv") else m.weight).detach().clone() for n, m in mods.items()}
    model.eval()  # loralib merges lora_B @ lora_A into the weight in train(False)
    out = {}
    for n, m in mods.items():
        w = m.conv.weight if hasattr(m, "conv") else m.weight
        d = (w.detach() - before[n]).double()
        out[n] = (d.T if n in fifo else d.reshape(d.shape[0], -1)).numpy()
    return out


FIFO = {"h.0.attn.c_attn", "h.0.mlp.c_fc"}


@pytest.fixture(scope="module")
def gpt2():
    model = _randomise(TinyGPT2())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lora_only = {k: v.clone() for k, v in lora.lora_state_dict(model).items()}
    return state, lora_only, _loralib_deltas(model, FIFO)


def _save(tmp_path, obj, name="model.pt"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


@pytest.mark.parametrize("variant", ["full", "lora_only", "module_prefixed"])
def test_delta_matches_loralib_merge(gpt2, tmp_path, variant):
    state, lora_only, expected = gpt2
    obj = {"full": {"model_state_dict": state}, "lora_only": lora_only,
           "module_prefixed": {"model_state_dict": {"module." + k: v for k, v in state.items()}}}[variant]
    ad = load_adapter(_save(tmp_path, obj), alpha=ALPHA)
    assert ad.format == "loralib"
    assert set(ad) == set(expected)
    for name, want in expected.items():
        got = ad[name].delta()
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, **TOL, err_msg=name)
    assert ad["wte"].kind == "embedding" and ad["wte"].shape == (VOCAB, D)
    assert ad["h.0.attn.c_attn"].kind == "merged"
    assert ad["lm_head"].scale == ALPHA / R


def test_merged_linear_parts(gpt2, tmp_path):
    state, _, expected = gpt2
    ad = load_adapter(_save(tmp_path, {"model_state_dict": state}), alpha=ALPHA)
    full = expected["h.0.attn.c_attn"]  # (3d, d)
    m = ad["h.0.attn.c_attn"]
    assert m.shape == (3 * D, D) and m.r == 2 * R and m.meta["r"] == R
    assert m.meta["enable_lora"] == [True, False, True] and m.meta["fan_in_fan_out"] is True
    assert m.weight_shape == (D, 3 * D)
    assert set(m.parts) == {"q", "v"}
    np.testing.assert_allclose(m.parts["q"].delta(), full[:D], **TOL)
    np.testing.assert_allclose(m.parts["v"].delta(), full[2 * D:], **TOL)
    np.testing.assert_array_equal(m.delta()[D:2 * D], 0.0)  # k rows carry no LoRA
    assert m.parts["v"].meta["rows"] == (2 * D, 3 * D)
    ex = ad.expanded()
    assert "h.0.attn.c_attn:q" in ex and "h.0.attn.c_attn:v" in ex and "h.0.attn.c_attn" not in ex
    assert ex["h.0.attn.c_attn:v"].name == "h.0.attn.c_attn:v"
    assert any("[True, False, True]" in n for n in ad.notes)


def test_orientation_metadata(gpt2, tmp_path):
    state, lora_only, _ = gpt2
    ad = load_adapter(_save(tmp_path, state), alpha=ALPHA)
    assert ad["h.0.mlp.c_fc"].meta["fan_in_fan_out"] is True
    assert ad["h.0.mlp.c_fc"].weight_shape == (D, 2 * D) and ad["h.0.mlp.c_fc"].shape == (2 * D, D)
    assert ad["lm_head"].meta["fan_in_fan_out"] is False
    bare = load_adapter(_save(tmp_path, lora_only, "lora.pt"), alpha=ALPHA)
    assert bare["h.0.mlp.c_fc"].meta["fan_in_fan_out"] is None and bare["h.0.mlp.c_fc"].weight_shape is None


def test_missing_alpha(gpt2, tmp_path):
    state, _, expected = gpt2
    ad = load_adapter(_save(tmp_path, {"model_state_dict": state}))
    lr = ad["lm_head"]
    assert lr.scale is None
    assert any("alpha" in n for n in ad.notes)
    with pytest.raises(MissingAlphaError, match="alpha"):
        lr.norm()
    with pytest.raises(MissingAlphaError):
        lr.delta()
    with pytest.raises(MissingAlphaError):
        ad["h.0.attn.c_attn"].parts["q"].norm()
    V = lr.basis("input")
    np.testing.assert_allclose(V.T @ V, np.eye(V.shape[1]), atol=1e-12)
    fixed = ad.with_alpha(ALPHA)
    np.testing.assert_allclose(fixed["h.0.attn.c_attn"].parts["v"].delta(),
                               expected["h.0.attn.c_attn"][2 * D:], **TOL)


def test_svd_reconstructs_delta(gpt2, tmp_path):
    state, _, _ = gpt2
    ad = load_adapter(_save(tmp_path, state), alpha=ALPHA)
    for name, lr in {**ad, **ad.expanded()}.items():
        U, S, V = lr.svd()
        np.testing.assert_allclose((U * S) @ V.T, lr.delta(), rtol=1e-10, atol=1e-9, err_msg=name)
    assert ad["h.0.attn.c_attn"].rank == 2 * R


@pytest.mark.parametrize("cin,cout,k,groups", [(3, 6, 3, 1), (4, 6, 1, 2), (6, 6, 3, 3)])
def test_conv2d_with_base_weight(tmp_path, cin, cout, k, groups):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", lora.Conv2d(cin, cout, k, r=2, lora_alpha=4, groups=groups))
    _randomise(model, seed=1)
    p = _save(tmp_path, {k_: v.clone() for k_, v in model.state_dict().items()})
    want = _loralib_deltas(model, set())["conv"]
    lr = load_adapter(p, alpha=4)["conv"]
    assert lr.kind == "conv" and lr.weight_shape == (cout, cin // groups, k, k) and lr.meta["r"] == 2
    assert lr.scale == 2.0
    np.testing.assert_allclose(lr.delta(), want, **TOL)
    U, S, V = lr.svd()
    np.testing.assert_allclose((U * S) @ V.T, lr.delta(), atol=1e-9)


def test_conv2d_unsupported_view(tmp_path):
    model = nn.Sequential()
    model.add_module("conv", lora.Conv2d(4, 6, 3, r=2, lora_alpha=4, groups=2))
    with pytest.raises(UnsupportedAdapterError, match="conv.lora_A"):
        load_adapter(_save(tmp_path, model.state_dict()), alpha=4)


def _lora_file(tmp_path, tensors, name="bad.pt"):
    return _save(tmp_path, {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, name)


def test_enable_lora_option_and_inference(tmp_path):
    A, B = np.ones((2 * R, D)), np.ones((2 * D, R))
    p = _lora_file(tmp_path, {"blk.fused.lora_A": A, "blk.fused.lora_B": B})
    with pytest.raises(AdapterError, match="enable_lora"):
        load_adapter(p, alpha=ALPHA)
    m = load_adapter(p, alpha=ALPHA, enable_lora=[True, True, False, False])["blk.fused"]
    assert m.shape == (4 * D, D) and set(m.parts) == {"p0", "p1"}
    with pytest.raises(AdapterError, match="enables 1 groups"):
        load_adapter(p, alpha=ALPHA, enable_lora=[True, False, False])
    with pytest.raises(AdapterError, match="boolean"):
        load_adapter(p, alpha=ALPHA, enable_lora="TFT")
    with pytest.raises(AdapterError, match="do not apply"):
        load_adapter(p, alpha=ALPHA, adapter_rank=3)


@pytest.mark.parametrize("tensors,key,match", [
    ({"m.lora_A": np.ones((4, 8))}, "m.lora_A", "lora_A without lora_B"),
    ({"m.lora_B": np.ones((8, 4))}, "m.lora_B", "lora_B without lora_A"),
    ({"m.lora_A": np.ones((4, 8)), "m.lora_B": np.ones((8, 3))}, "m.lora_B", "rank mismatch"),
    ({"m.lora_A": np.ones((4, 8, 1)), "m.lora_B": np.ones((8, 4))}, "m.lora_A", "2-D"),
    ({"m.lora_A": np.ones((4, 8)), "m.lora_B": np.ones((6, 4)), "m.weight": np.ones((5, 5))},
     "m.weight", r"base weight is \(5, 5\)"),
])
def test_errors_name_file_and_key(tmp_path, tensors, key, match):
    p = _lora_file(tmp_path, tensors)
    with pytest.raises(AdapterError, match=match) as e:
        load_adapter(p, alpha=ALPHA)
    msg = str(e.value)
    assert str(p) in msg and f"key '{key}'" in msg and "\n" not in msg


def test_embedding_vs_linear_disambiguation(tmp_path):
    model = nn.Module()
    model.lookup = lora.Embedding(VOCAB, D, r=R, lora_alpha=ALPHA)  # not an embedding-like name
    model.time_emb_proj = lora.Linear(D, 2 * D, r=R, lora_alpha=ALPHA)  # 'emb' inside a Linear's name
    model.proj = lora.Linear(2 * D, D, r=R, lora_alpha=ALPHA, fan_in_fan_out=True, bias=True)
    _randomise(model, seed=2)
    p = _save(tmp_path, {k: v.clone() for k, v in model.state_dict().items()})
    want = _loralib_deltas(model, {"proj"})
    ad = load_adapter(p, alpha=ALPHA)
    assert ad["lookup"].kind == "embedding" and any("lookup: read as an Embedding" in n for n in ad.notes)
    assert ad["time_emb_proj"].kind == "linear" and ad["proj"].kind == "linear"
    assert ad["proj"].meta["fan_in_fan_out"] is True
    for name, w in want.items():
        np.testing.assert_allclose(ad[name].delta(), w, **TOL, err_msg=name)
