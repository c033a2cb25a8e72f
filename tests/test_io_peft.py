"""PEFT reader, checked against PEFT's own ``get_delta_weight`` on tiny models built from configs."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import AdaLoraConfig, IA3Config, LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft.utils.other import get_pattern_key as peft_get_pattern_key  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from analysis.errors import AdapterError, MissingAlphaError, UnsupportedAdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402
from analysis.io.peft_config import get_pattern_key  # noqa: E402
from analysis.io.peft import is_peft_dir, is_peft_file, load_peft  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::RuntimeWarning")
F32 = 1e-5
HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # ~2 eps of the saved dtype
Q = "model.layers.0.self_attn.q_proj"


# ---------------------------------------------------------------- helpers
def tiny_llama(hidden=32, layers=2):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=16)
    return LlamaForCausalLM(cfg)


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=48, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))


class ConvEmb(nn.Module):
    """Every non-Linear layer type PEFT's LoRA supports."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.conv1 = nn.Conv1d(3, 5, 3)
        self.conv3x3 = nn.Conv2d(3, 6, 3)
        self.conv1x1 = nn.Conv2d(6, 7, 1)
        self.conv3d = nn.Conv3d(2, 4, (1, 2, 3))


def randomise(model, seed=0, names=("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_E")):
    """Random LoRA factors (B and E are zero at init), seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(f".{t}." in n for t in names) and p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.3)
    return model


def lora_layers(model, adapter="default"):
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, BaseTunerLayer) and (adapter in getattr(m, "lora_A", {})
                                              or adapter in getattr(m, "lora_embedding_A", {})):
            out[n.removeprefix("base_model.model.")] = m
    return out


def peft_deltas(model, adapter="default"):
    """PEFT's get_delta_weight per module, in our orientation: Conv1D transposed back, convs flattened."""
    out = {}
    for name, m in lora_layers(model, adapter).items():
        d = m.get_delta_weight(adapter).detach().to(torch.float64)
        if getattr(m, "fan_in_fan_out", False) and d.ndim == 2 and adapter in m.lora_A:
            d = d.T
        out[name] = d.reshape(d.shape[0], -1).numpy()
    return out


def assert_close(got, ref, rtol):
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * 0.2 * max(np.abs(ref).max(), 1e-30))


def assert_matches_peft(ad, model, adapter="default", rtol=F32):
    ref = peft_deltas(model, adapter)
    assert sorted(ad) == sorted(ref)
    for name, d in ref.items():
        assert_close(ad[name].delta(), d, rtol)


def save(model, path, **kw):
    model.save_pretrained(str(path), **kw)
    return path


def peft_on(base, cfg, seed=0, **kw):
    return randomise(get_peft_model(base, cfg, **kw), seed)


def write_adapter(folder, tensors, config=None):
    """A hand-made PEFT folder; ``tensors`` maps keys to arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()},
              str(folder / "adapter_model.safetensors"))
    if config is not None:
        (folder / "adapter_config.json").write_text(
            config if isinstance(config, str) else json.dumps(config))
    return folder


def hand_made(r=2, d_in=6, d_out=5, seed=0):
    rng = np.random.default_rng(seed)
    pre = "base_model.model.layer.lin"
    return {f"{pre}.lora_A.weight": rng.standard_normal((r, d_in)),
            f"{pre}.lora_B.weight": rng.standard_normal((d_out, r))}


CFG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_rslora": False, "fan_in_fan_out": False}


def one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ---------------------------------------------------------------- plain LoRA and its options
@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    model = peft_on(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return model, save(model, tmp_path_factory.mktemp("plain"))


def test_plain_matches_peft(plain):
    model, path = plain
    ad = load_adapter(path)
    assert ad.format == "peft" and ad.config["r"] == 4 and len(ad) == 4
    assert Q in ad and "model.layers.1.self_attn.v_proj" in ad  # name + ".weight" is the base tensor
    base = dict(model.get_base_model().named_parameters())
    for name, lr in ad.items():
        assert lr.scale == 2.0 and lr.r == 4 and lr.kind == "linear"
        assert lr.weight_shape == tuple(base[name + ".base_layer.weight"].shape) == lr.shape
        assert lr.meta["fan_in_fan_out"] is False and lr.lora_A.dtype == np.float32
    assert_matches_peft(ad, model)


def test_svd_reconstructs_delta(plain):
    ad = load_adapter(plain[1])
    for lr in ad.values():
        U, S, V = lr.svd()
        assert U.shape == (lr.shape[0], 4) and V.shape == (lr.shape[1], 4)
        assert_close(U @ np.diag(S) @ V.T, lr.delta(), 1e-10)


def test_rslora(tmp_path):
    model = peft_on(tiny_llama(), LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj"]))
    ad = load_adapter(save(model, tmp_path))
    assert ad[Q].scale == pytest.approx(8.0) and ad[Q].meta["use_rslora"] is True
    assert_matches_peft(ad, model)


def test_rank_and_alpha_patterns(tmp_path):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                     rank_pattern={"model.layers.0.self_attn.q_proj": 2, "v_proj": 6},
                     alpha_pattern={r"layers\.1\..*q_proj": 3, "o_proj": 5})
    model = peft_on(tiny_llama(), cfg)
    ad = load_adapter(save(model, tmp_path))
    for name, m in lora_layers(model).items():
        assert ad[name].r == m.r["default"] and ad[name].scale == pytest.approx(m.scaling["default"])
    assert ad[Q].r == 2 and ad["model.layers.1.self_attn.q_proj"].scale == pytest.approx(3 / 4)
    assert {ad[n].r for n in ad if n.endswith("v_proj")} == {6}
    assert_matches_peft(ad, model)


@pytest.mark.parametrize("name", [Q, "model.layers.10.self_attn.q_proj", "q_proj", "model.layers.0.mlp.proj",
                                  "encoder.block.1.layer.0.SelfAttention.q"])
def test_pattern_matching_is_peft_s(name):
    patterns = ["q", "proj", "q_proj", r"layers\.1\..*", r"layers\.1.*q_proj", "^model.layers.0.self_attn.q_proj",
                "self_attn.q_proj", "layers.0", r".*\.0\.self_attn\.q_proj", "SelfAttention.q"]
    for i in range(len(patterns)):
        keys = patterns[i:] + patterns[:i]
        assert get_pattern_key(keys, name) == peft_get_pattern_key(keys, name)


def test_gpt2_conv1d_fan_in_fan_out(tmp_path):
    cfg = LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    model = peft_on(tiny_gpt2(), cfg)
    ad = load_adapter(save(model, tmp_path))
    layers = lora_layers(model)
    assert len(ad) == len(layers) == 8
    for name, m in layers.items():
        stored = tuple(m.get_base_layer().weight.shape)  # Conv1D: (d_in, d_out)
        assert ad[name].weight_shape == stored and ad[name].shape == stored[::-1]
        assert ad[name].meta["fan_in_fan_out"] is True
    assert ad["transformer.h.0.attn.c_attn"].shape == (96, 32)
    assert_matches_peft(ad, model)  # against get_delta_weight transposed back


def test_embedding_and_conv(tmp_path):
    model = peft_on(ConvEmb(), LoraConfig(r=2, lora_alpha=4, target_modules=["emb", "conv1", "conv3x3",
                                                                              "conv1x1", "conv3d"]))
    ad = load_adapter(save(model, tmp_path))
    base = model.get_base_model()
    assert ad["emb"].kind == "embedding" and ad["emb"].shape == (20, 8) == ad["emb"].weight_shape
    for name in ("conv1", "conv3x3", "conv1x1", "conv3d"):
        w = getattr(base, name).get_base_layer().weight
        assert ad[name].kind == "conv" and ad[name].weight_shape == tuple(w.shape)
        assert ad[name].shape == (w.shape[0], int(np.prod(w.shape[1:])))
    assert_matches_peft(ad, model)
    # the exact SVD of the flattened update, and the table-shaped embedding update
    for lr in ad.values():
        U, S, V = lr.svd()
        assert_close(U @ np.diag(S) @ V.T, lr.delta(), 1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_upcast(tmp_path, dtype):
    model = peft_on(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model = model.to(dtype)
    ad = load_adapter(save(model, tmp_path))
    assert load_file(str(tmp_path / "adapter_model.safetensors"))[
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].dtype == dtype
    assert_matches_peft(ad, model, rtol=HALF_TOL[dtype])  # PEFT rounds its result to the saved dtype
    for name, m in lora_layers(model).items():  # the upcast itself is exact
        assert ad[name].lora_A.dtype == np.float32
        exact = (m.lora_B["default"].weight.double() @ m.lora_A["default"].weight.double()).detach() * 2.0
        assert_close(ad[name].delta(), exact.numpy(), 1e-12)


def test_legacy_bin(plain, tmp_path):
    model, st_path = plain
    save(model, tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file() and not (tmp_path / "adapter_model.safetensors").exists()
    ad, ref = load_adapter(tmp_path), load_adapter(st_path)
    assert_matches_peft(ad, model)
    assert all(np.array_equal(ad[n].lora_B, ref[n].lora_B) for n in ad)
    assert load_adapter(tmp_path / "adapter_model.bin")[Q].scale == 2.0  # the file: config beside it


def test_named_adapter_subfolder(tmp_path):
    model = peft_on(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    model.add_adapter("second", LoraConfig(r=3, lora_alpha=9, target_modules=["v_proj", "o_proj"]))
    randomise(model, seed=5)
    save(model, tmp_path)
    assert (tmp_path / "second" / "adapter_config.json").is_file()
    assert_matches_peft(load_adapter(tmp_path), model, "default")
    second = load_adapter(tmp_path, adapter_name="second")
    assert second[Q.replace("q_proj", "v_proj")].scale == 3.0
    assert_matches_peft(second, model, "second")
    assert_matches_peft(load_adapter(tmp_path / "second"), model, "second")
    with pytest.raises(AdapterError, match="no PEFT adapter named 'third'"):
        load_adapter(tmp_path, adapter_name="third")


def test_lora_bias_noted(tmp_path):
    model = peft_on(tiny_llama(), LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], lora_bias=True))
    ad = load_adapter(save(model, tmp_path))
    assert any("lora_bias" in n for n in ad.notes) and ad[Q].meta["lora_B_bias"].shape == (32,)
    assert_matches_peft(ad, model)


# ---------------------------------------------------------------- without a config
@pytest.mark.parametrize("filename", ["adapter_model.safetensors", "my_lora.safetensors"])
def test_bare_file_without_config(plain, tmp_path, filename):
    model, path = plain
    f = tmp_path / filename
    shutil.copy(path / "adapter_model.safetensors", f)
    ad = load_adapter(f)
    assert ad[Q].scale is None and any("no adapter_config.json" in n for n in ad.notes)
    with pytest.raises(MissingAlphaError):
        ad[Q].delta()
    assert ad[Q].basis("input").shape == (32, 4)  # subspaces need no scale
    assert_matches_peft(load_adapter(f, alpha=8), model)  # alpha / r = 2
    assert_matches_peft(ad.with_alpha(8), model)


def test_alpha_ignored_when_config_has_it(plain):
    ad = load_adapter(plain[1], alpha=100)
    assert ad[Q].scale == 2.0 and any("ignored" in n for n in ad.notes)


# ---------------------------------------------------------------- AdaLoRA (exact)
@pytest.mark.parametrize("lora_alpha", [8, 0])
def test_adalora_exact(tmp_path, lora_alpha):
    cfg = AdaLoraConfig(init_r=6, target_r=4, total_step=10, lora_alpha=lora_alpha,
                        target_modules=["q_proj", "v_proj"])
    model = peft_on(tiny_llama(), cfg)
    # what RankAllocator.mask_to_budget leaves behind: masked triplets zeroed, a boolean mask per lora_E
    masks = {Q: [True, False, True, True, False, True], "model.layers.1.self_attn.v_proj": [False] * 6}
    layers = lora_layers(model)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].lora_E["default"][~torch.tensor(mask)] = 0.0
    model.peft_config["default"].rank_pattern = {f"{n}.lora_E.default": m for n, m in masks.items()}
    before = peft_deltas(model)
    save(model, tmp_path)
    ad = load_adapter(tmp_path)
    assert ad[Q].r == 4 and ad["model.layers.1.self_attn.v_proj"].r == 0
    assert ad["model.layers.0.self_attn.v_proj"].r == 6
    assert any("AdaLoRA" in n for n in ad.notes)
    for name, d in before.items():  # PEFT's training-time ΔW
        if lora_alpha <= 0 and name == Q:  # PEFT itself: scaling = init_r in training, = rank after loading
            d = d * 4 / 6
            assert any("lora_alpha <= 0" in n for n in ad.notes)
        assert_close(ad[name].delta(), d, F32)
    loaded = PeftModel.from_pretrained(tiny_llama(), str(tmp_path))  # PEFT's own reading of the files
    assert_matches_peft(ad, loaded)
    assert ad["model.layers.1.self_attn.v_proj"].is_zero


def test_adalora_without_config_refused(tmp_path):
    model = peft_on(tiny_llama(), AdaLoraConfig(init_r=4, total_step=10, target_modules=["q_proj"]))
    save(model, tmp_path / "a")
    shutil.copy(tmp_path / "a" / "adapter_model.safetensors", tmp_path / "ada.safetensors")
    with pytest.raises(UnsupportedAdapterError) as e:
        load_adapter(tmp_path / "ada.safetensors")
    one_line_error(e, "ada.safetensors", "lora_E", "init_r")


# ---------------------------------------------------------------- refused
# (DoRA is read since issue 13: tests/test_formats_dora.py)


def test_pissa_unconverted_refused_converted_exact(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=2, init_lora_weights="pissa",
                                                    target_modules=["q_proj"]))
    init = {n: (m.lora_B["default"].weight.detach().double().clone(),
                m.lora_A["default"].weight.detach().double().clone()) for n, m in lora_layers(model).items()}
    model.peft_config["default"].init_lora_weights = True  # PEFT's recipe to save the initial factors
    save(model, tmp_path / "pissa_init")
    model.peft_config["default"].init_lora_weights = "pissa"
    randomise(model, seed=3)  # "training"
    save(model, tmp_path / "raw")
    with pytest.raises(UnsupportedAdapterError) as e:
        load_adapter(tmp_path / "raw")
    one_line_error(e, "init_lora_weights", "pissa", "B₀")
    save(model, tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "pissa_init"))
    ad = load_adapter(tmp_path / "converted")
    for name, m in lora_layers(model).items():  # ΔW against the original W = s (B A − B₀ A₀), rank 2r
        B0, A0 = init[name]
        B, A = m.lora_B["default"].weight.double(), m.lora_A["default"].weight.double()
        assert ad[name].r == 4
        assert_close(ad[name].delta(), (1.0 * (B @ A - B0 @ A0)).detach().numpy(), F32)


@pytest.mark.parametrize("cfg,name", [(IA3Config(target_modules=["q_proj", "down_proj"],
                                                 feedforward_modules=["down_proj"]), "IA3")])
def test_other_peft_types_refused(tmp_path, cfg, name):
    save(get_peft_model(tiny_llama(), cfg), tmp_path)
    with pytest.raises(UnsupportedAdapterError) as e:
        load_adapter(tmp_path)
    one_line_error(e, "adapter_config.json", "peft_type", name)


@pytest.mark.parametrize("change,key", [({"init_lora_weights": "olora"}, "init_lora_weights"),
                                        ({"init_lora_weights": "loftq"}, "init_lora_weights"),
                                        ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights"),
                                        ({"use_qalora": True}, "use_qalora"),
                                        ({"target_parameters": ["mlp.experts.gate_up_proj"]}, "target_parameters")])
def test_variants_refused(tmp_path, change, key):
    write_adapter(tmp_path, hand_made(), {**CFG, **change})
    with pytest.raises(UnsupportedAdapterError) as e:
        load_adapter(tmp_path)
    one_line_error(e, "adapter_config.json", f"key '{key}'")


def test_unknown_variant_tensors_without_config_refused(tmp_path):
    t = {**hand_made(), "base_model.model.layer.lin.lora_diag.weight": np.ones(2)}  # KaSA-like
    write_adapter(tmp_path, t)
    with pytest.raises(UnsupportedAdapterError) as e:
        load_adapter(tmp_path / "adapter_model.safetensors")
    one_line_error(e, "lora_diag", "adapter_config.json")


def test_grouped_conv_refused(tmp_path):
    model = peft_on(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(UnsupportedAdapterError, match="grouped convolution"):
        load_adapter(save(model, tmp_path))


# ---------------------------------------------------------------- malformed input
@pytest.mark.parametrize("config,key,needle", [
    ("{not json", None, "invalid JSON"),
    ("[1, 2]", None, "got a JSON list"),
    ({**CFG, "r": 0}, "r", "positive integer"),
    ({**CFG, "r": "2"}, "r", "positive integer"),
    ({**CFG, "r": True}, "r", "positive integer"),
    ({**CFG, "lora_alpha": "4"}, "lora_alpha", "finite number"),
    ({**CFG, "use_rslora": "yes"}, "use_rslora", "true or false"),
    ({**CFG, "rank_pattern": {"lin": -1}}, "rank_pattern", "positive integer"),
    ({**CFG, "rank_pattern": {"lin(": 2}}, "rank_pattern", "regular expression"),
    ({**CFG, "peft_type": 3}, "peft_type", "string"),
])
def test_malformed_config(tmp_path, config, key, needle):
    write_adapter(tmp_path, hand_made(), config)
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path)
    msg = one_line_error(e, str(tmp_path / "adapter_config.json"), needle)
    assert key is None or f"key '{key}'" in msg


@pytest.mark.parametrize("config,needle", [({**CFG, "r": 3}, "expected rank 3 (adapter_config.json r), got "
                                                              "shape (2, 6) (rank 2)"),
                                           ({**CFG, "rank_pattern": {"lin": 5}}, "rank_pattern['lin']")])
def test_rank_mismatch(tmp_path, config, needle):
    write_adapter(tmp_path, hand_made(), config)
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path)
    one_line_error(e, "adapter_model.safetensors", "key 'base_model.model.layer.lin.lora_A.weight'", needle)


def _drop(key):
    return lambda t: {k: v for k, v in t.items() if k != key}


A_KEY, B_KEY = "base_model.model.layer.lin.lora_A.weight", "base_model.model.layer.lin.lora_B.weight"


@pytest.mark.parametrize("edit,key,needle", [
    (lambda t: {**t, B_KEY: np.ones((5, 3))}, B_KEY, "got (5, 3)"),  # inner dimension
    (_drop(B_KEY), A_KEY, "lora_B"),  # unpaired
    (_drop(A_KEY), B_KEY, "lora_A"),
    (lambda t: {**t, A_KEY: np.ones(6)}, A_KEY, "got shape (6,)"),  # 1-D
    (lambda t: {**t, B_KEY: np.ones((5, 2, 1))}, B_KEY, "2-D lora_B"),  # ndim mismatch
    (lambda t: {**t, A_KEY: np.full((2, 6), np.nan)}, A_KEY, "NaN"),
    (lambda t: {"base_model.model.layer.lin.weight": np.ones((5, 6))}, None, "expected PEFT LoRA tensors"),
])
def test_malformed_tensors(tmp_path, edit, key, needle):
    write_adapter(tmp_path, edit(hand_made()), CFG)
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path)
    one_line_error(e, str(tmp_path / "adapter_model.safetensors"), needle,
                   *([f"key '{key}'"] if key else []))


def test_truncated_safetensors(plain, tmp_path):
    shutil.copytree(plain[1], tmp_path / "a")
    f = tmp_path / "a" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path / "a")
    one_line_error(e, str(f), "truncated or corrupt")


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_not_run(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    write_adapter(tmp_path / "a", hand_made(), CFG)
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    payload = {A_KEY: torch.ones(2, 6), B_KEY: _Evil(marker)}
    f = tmp_path / "a" / "adapter_model.bin"
    if legacy:
        with open(f, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    else:
        torch.save(payload, f)
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path / "a")
    one_line_error(e, str(f), "weights_only")
    assert not marker.exists()


def test_several_adapter_names_in_keys(tmp_path):
    t = {k: v.astype(np.float32).astype(np.float64) for k, v in hand_made().items()}
    raw = {k.replace(".weight", f".{n}.weight"): v for n in ("default", "other") for k, v in t.items()}
    write_adapter(tmp_path, raw, CFG)
    with pytest.raises(AdapterError, match="adapter_name="):
        load_adapter(tmp_path)
    ad = load_peft(tmp_path, adapter_name="other")
    assert_close(ad["layer.lin"].delta(), 2.0 * t[B_KEY] @ t[A_KEY], 1e-12)


def test_sniffing_helpers(plain, tmp_path):
    assert is_peft_dir(plain[1]) and not is_peft_dir(tmp_path)
    assert is_peft_file(plain[1] / "adapter_model.safetensors") and not is_peft_file(plain[1])
    with pytest.raises(TypeError, match="enable_lora"):
        load_peft(plain[1], enable_lora=[True])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(plain[1])  # no warnings from the reader
