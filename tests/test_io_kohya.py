"""kohya sd-scripts reader: checked against sd-scripts' merge formula, computed here with torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from analysis.errors import AdapterError
from analysis.io import load_adapter

TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
TE2 = "lora_te2_text_model_encoder_layers_1_mlp_fc1"
UNET = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
CONV1 = "lora_unet_down_blocks_0_attentions_0_proj_in"
CONV3 = "lora_unet_down_blocks_0_resnets_0_conv1"
# name: (down shape, up shape, alpha or None)
MODULES = {
    TE: ((4, 16), (16, 4), 2.0),
    TE2: ((2, 12), (20, 2), None),
    UNET: ((4, 24), (10, 4), 8.0),
    CONV1: ((4, 12, 1, 1), (12, 4, 1, 1), 1.0),
    CONV3: ((3, 6, 3, 3), (10, 3, 1, 1), 6.0),
}
META = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_network_module": "networks.lora",
        "ss_tag_frequency": "{}"}


def _tensors(dtype=torch.float32, seed=0, modules=MODULES):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (down, up, alpha) in modules.items():
        sd[f"{name}.lora_down.weight"] = torch.randn(down, generator=g).to(dtype)
        sd[f"{name}.lora_up.weight"] = torch.randn(up, generator=g).to(dtype)
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return sd


def _write(tmp_path, sd, metadata=META, name="lora.safetensors"):
    p = tmp_path / name
    save_file(sd, str(p), metadata=metadata)
    return p


def _kohya_merge(sd, name):
    """sd-scripts' ``LoRAInfModule.get_weight`` (multiplier 1), in float64."""
    down = sd[f"{name}.lora_down.weight"].double()
    up = sd[f"{name}.lora_up.weight"].double()
    dim = down.shape[0]
    alpha = sd[f"{name}.alpha"].double() if f"{name}.alpha" in sd else dim
    scale = alpha / dim
    if down.dim() == 2:
        return (up @ down) * scale
    if down.shape[2:4] == (1, 1):
        return (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * scale
    return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_delta_matches_kohya_merge(tmp_path, dtype):
    sd = _tensors(dtype)
    ad = load_adapter(_write(tmp_path, sd))
    assert ad.format == "kohya" and set(ad) == set(MODULES)
    for name in MODULES:
        lr = ad[name]
        want = _kohya_merge(sd, name).numpy()
        got = lr.delta()
        if want.ndim == 4:
            assert lr.kind == "conv" and lr.weight_shape == want.shape
            assert got.shape == (want.shape[0], int(np.prod(want.shape[1:])))
            got = got.reshape(lr.weight_shape)
        else:
            assert lr.kind == "linear" and lr.weight_shape is None
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
        U, S, V = lr.svd()
        np.testing.assert_allclose((U * S) @ V.T, lr.delta(), atol=1e-9, err_msg=name)
    assert ad[CONV3].r == 3 and ad[CONV3].rank == 3


def test_alpha_and_metadata(tmp_path):
    ad = load_adapter(_write(tmp_path, _tensors()))
    assert ad[TE].scale == 2.0 / 4 and ad[TE].meta["alpha_source"] == "file"
    assert ad[TE2].scale == 1.0 and ad[TE2].meta["alpha"] == 2.0  # no .alpha: alpha = r
    assert any("alpha = r" in n for n in ad.notes)
    assert ad[TE].meta["component"] == "te" and ad[TE2].meta["component"] == "te2"
    assert ad[CONV3].meta["component"] == "unet"
    assert ad[UNET].meta["ss_network_module"] == "networks.lora"
    assert ad.config["ss_network_dim"] == "4" and "ss_tag_frequency" not in ad.config
    assert any("underscore" in n for n in ad.notes)


def test_alpha_argument_only_fills_missing(tmp_path):
    ad = load_adapter(_write(tmp_path, _tensors()), alpha=5.0)
    assert ad[TE2].scale == 5.0 / 2 and ad[TE2].meta["alpha_source"] == "argument"
    assert ad[TE].scale == 2.0 / 4  # the file's alpha wins
    full = {k: v for k, v in MODULES.items() if v[2] is not None}
    ad = load_adapter(_write(tmp_path, _tensors(modules=full), name="full.safetensors"), alpha=5.0)
    assert any("ignored" in n for n in ad.notes)


def test_zero_alpha_means_rank(tmp_path):
    sd = _tensors(modules={TE: MODULES[TE]})
    sd[f"{TE}.alpha"] = torch.tensor(0.0)
    assert load_adapter(_write(tmp_path, sd))[TE].scale == 1.0


def test_no_metadata(tmp_path):
    ad = load_adapter(_write(tmp_path, _tensors(), metadata=None))
    assert ad.config == {} and "ss_network_dim" not in ad[TE].meta


@pytest.mark.parametrize("edit,key,err,match", [
    (lambda sd: sd.pop(f"{TE}.lora_down.weight"), f"{TE}.lora_up.weight", AdapterError, "lora_up without lora_down"),
    (lambda sd: sd.update({f"{TE}.lora_up.weight": torch.ones(16, 3)}), f"{TE}.lora_up.weight", AdapterError,
     "rank mismatch"),
    (lambda sd: sd.update({f"{TE}.lora_down.weight": torch.ones(4, 16, 1)}), f"{TE}.lora_down.weight",
     AdapterError, "both 2-D"),
    (lambda sd: sd.update({f"{CONV3}.lora_up.weight": torch.ones(10, 3, 3, 3)}), f"{CONV3}.lora_up.weight",
     AdapterError, "1x1"),
    (lambda sd: sd.update({f"{TE}.alpha": torch.ones(2)}), f"{TE}.alpha", AdapterError, "scalar"),
    (lambda sd: sd.__setitem__(f"{UNET}.lora_up.weight", torch.full((10, 4), float("nan"))),
     f"{UNET}.lora_up.weight", AdapterError, "NaN"),
    (lambda sd: sd.update({f"{TE}.dora_scale": torch.ones(3, 2)}), f"{TE}.dora_scale",
     AdapterError, "DoRA scale"),  # a well-shaped dora_scale is read since issue 13 (tests/test_formats_lycoris.py)
])
def test_errors_name_file_and_key(tmp_path, edit, key, err, match):
    sd = _tensors()
    edit(sd)
    p = _write(tmp_path, sd)
    with pytest.raises(err, match=match) as e:
        load_adapter(p)
    msg = str(e.value)
    assert str(p) in msg and f"key '{key}'" in msg and "\n" not in msg


def test_unknown_option_refused(tmp_path):
    with pytest.raises(AdapterError, match="do not apply"):
        load_adapter(_write(tmp_path, _tensors()), enable_lora=[True, False, True])
