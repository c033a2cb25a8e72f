"""diffusers LoRA files written by diffusers' own ``save_lora_weights`` for tiny UNet / SD3 transformer /
CLIP text encoder configs. Oracle: diffusers' loader (``load_lora_adapter``, which reads the header
config) and PEFT's ``get_delta_weight`` on the layers it builds, in float64."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import torch  # noqa: E402
diffusers = pytest.importorskip("diffusers")
from peft import LoraConfig, inject_adapter_in_model  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from analysis.errors import AdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402
from analysis.io.base import open_base  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
WEIGHTS = "pytorch_lora_weights.safetensors"
TOL = 1e-12  # max |ΔW − oracle| / max |oracle|


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)


def tiny_sd3():
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                                           attention_head_dim=4, num_attention_heads=2, joint_attention_dim=8,
                                           caption_projection_dim=8, pooled_projection_dim=8, out_channels=4)


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _deltas(model):
    """PEFT's get_delta_weight of every LoRA layer, float64, flattened to (d_out, d_in·∏k)."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, BaseTunerLayer):
            adapter = next(iter(m.lora_A))
            m.double()
            with torch.no_grad():
                W = m.get_delta_weight(adapter).double().numpy()
            out[n] = W.reshape(W.shape[0], -1)
    return out


def _max_rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def _check(ad, want):
    assert set(ad) == set(want)
    for name, W in want.items():
        assert _max_rel(ad[name].delta(), W) < TOL, name
        U, S, V = ad[name].svd()
        assert _max_rel((U * S) @ V.T, ad[name].delta()) < 1e-10, name


UNET_CFG = LoraConfig(r=2, lora_alpha=6, target_modules=["to_q", "to_k", "to_out.0", "conv1", "proj_in"],
                      rank_pattern={"conv1": 3}, init_lora_weights=False)


@pytest.mark.parametrize("metadata", [True, False])
@pytest.mark.slow
def test_unet_lora_down_up(tmp_path, metadata):
    """Oracles: the trained PEFT layers that made the file, and diffusers' loader for what it loads.

    (diffusers 0.42 loads only the conv / proj_in modules of a ``lora.down`` UNet file back: it drops the
    attention ones with a RuntimeWarning; its loader is compared on the modules it does load.)
    """
    from diffusers.utils import convert_state_dict_to_diffusers

    unet = tiny_unet()
    unet.add_adapter(copy.deepcopy(UNET_CFG))
    _randomise(unet)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    diffusers.StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=layers, unet_lora_adapter_metadata=UNET_CFG.to_dict() if metadata else None)
    assert any(k.endswith(".lora.down.weight") and k.startswith("unet.") for k in load_file(str(tmp_path / WEIGHTS)))
    tiny_unet().save_pretrained(tmp_path / "base")  # the frozen base, as diffusers saves it
    trained = _deltas(unet)
    if not metadata:  # no config in the file: diffusers reads α = r, scale 1 instead of the trained α / r
        trained = {n: W / (6 / (3 if n.endswith("conv1") else 2)) for n, W in trained.items()}
    fresh = tiny_unet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh.load_lora_adapter(str(tmp_path), weight_name=WEIGHTS, prefix="unet")  # diffusers' own reading
    loaded = _deltas(fresh)
    ad = load_adapter(tmp_path)
    assert ad.format == "diffusers"
    _check(ad, trained)
    assert len(loaded) >= 6 and all(_max_rel(ad[n].delta(), W) < TOL for n, W in loaded.items())
    conv = "down_blocks.0.resnets.0.conv1"
    assert ad[conv].kind == "conv" and ad[conv].r == 3
    assert ad[conv].scale == (6 / 3 if metadata else 1.0)
    # the names are the UNet's own tensor names: a diffusers-saved base lines up without resolution
    with open_base(tmp_path / "base" / "diffusion_pytorch_model.safetensors") as base:
        names = set(base.names())
        assert all(name in names for name in ad)


def test_sd3_transformer_lora_A_B_with_patterns(tmp_path):
    cfg = LoraConfig(r=2, lora_alpha=3, target_modules=["to_q", "to_k", "add_q_proj", "proj_out"],
                     rank_pattern={"proj_out": 4}, alpha_pattern={"to_k": 5}, init_lora_weights=False)
    tr = tiny_sd3()
    tr.add_adapter(copy.deepcopy(cfg))
    _randomise(tr)
    diffusers.StableDiffusion3Pipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(tr),
                                                         transformer_lora_adapter_metadata=cfg.to_dict())
    assert any(k.startswith("transformer.") and k.endswith("lora_A.weight") for k in load_file(str(tmp_path / WEIGHTS)))
    fresh = tiny_sd3()
    fresh.load_lora_adapter(str(tmp_path), weight_name=WEIGHTS, prefix="transformer")
    want = _deltas(fresh)
    ad = load_adapter(tmp_path / WEIGHTS)
    _check(ad, want)
    assert ad["proj_out"].r == 4 and ad["proj_out"].scale == 3 / 4
    assert ad["transformer_blocks.0.attn.to_k"].scale == 5 / 2


def test_text_encoder_and_two_components(tmp_path):
    from diffusers.utils import convert_state_dict_to_diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, vocab_size=20, max_position_embeddings=8,
                                          projection_dim=8, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    te_cfg = LoraConfig(r=2, lora_alpha=7, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    te = _randomise(inject_adapter_in_model(copy.deepcopy(te_cfg), te))
    te_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(te))
    assert all("lora_linear_layer" in k for k in te_layers)
    want = _deltas(te)  # PEFT's own layers, as trained
    unet = tiny_unet()
    unet.add_adapter(copy.deepcopy(UNET_CFG))
    _randomise(unet)
    unet_want = _deltas(unet)
    diffusers.StableDiffusionPipeline.save_lora_weights(
        tmp_path, text_encoder_lora_layers=te_layers, text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        unet_lora_adapter_metadata=UNET_CFG.to_dict())
    ad = load_adapter(tmp_path)
    _check(ad, {**{f"text_encoder.{n}": W for n, W in want.items()}, **{f"unet.{n}": W for n, W in unet_want.items()}})
    assert {lr.meta["component"] for lr in ad.values()} == {"text_encoder", "unet"}
    assert any("component prefix" in n for n in ad.notes)


def test_attention_processor_keys_and_alpha_tensors(tmp_path):
    """The oldest layout (attention processors) with kohya-converted ``.alpha`` tensors."""
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)
    pre = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    sd = {f"{pre}.processor.to_out_lora.down.weight": down, f"{pre}.processor.to_out_lora.up.weight": up,
          f"{pre}.to_out.0.alpha": torch.tensor(3.0)}
    save_file(sd, str(tmp_path / "a.safetensors"))
    ad = load_adapter(tmp_path / "a.safetensors")
    lr = ad["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"]
    np.testing.assert_allclose(lr.delta(), (up.double() @ down.double()).numpy() * 3.0 / 2, rtol=1e-12)
    del sd[f"{pre}.processor.to_out_lora.down.weight"]
    save_file(sd, str(tmp_path / "b.safetensors"))
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path / "b.safetensors")
    msg = str(e.value)
    assert "up without down" in msg and "b.safetensors" in msg and "to_out_lora.up.weight" in msg and "\n" not in msg


def test_sd3_dora_directional_and_merged(tmp_path):
    """DoRA in a diffusers file: the directional part against PEFT's get_delta_weight, W' against PEFT's merge."""
    from analysis.io.dora import dora_weight

    cfg = LoraConfig(r=2, lora_alpha=3, target_modules=["to_q", "proj_out"], use_dora=True, init_lora_weights=False)
    tr = tiny_sd3()
    tr.add_adapter(copy.deepcopy(cfg))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(p + torch.randn(p.shape, generator=g) * 0.3)
    diffusers.StableDiffusion3Pipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(tr),
                                                         transformer_lora_adapter_metadata=cfg.to_dict())
    assert any(k.endswith("lora_magnitude_vector") for k in load_file(str(tmp_path / WEIGHTS)))
    ad = load_adapter(tmp_path)
    layers = {n: m for n, m in tr.named_modules() if isinstance(m, BaseTunerLayer)}
    assert set(ad) == set(layers)
    for name, m in layers.items():
        m.double()
        with torch.no_grad():
            W = m.base_layer.weight.detach().clone().numpy()
            direc = m.get_delta_weight("default").numpy()
            m.merge()
            merged = m.base_layer.weight.detach().numpy()
        lr = ad[name]
        assert lr.meta["dora"]
        assert _max_rel(lr.delta(), direc) < TOL, name
        assert _max_rel(dora_weight(lr, W), merged) < TOL, name


def test_transformer_prefix_is_diffusers_only_for_diffusers_files(tmp_path):
    """``transformer.h.0….lora_A.weight`` is also a GPT-2 PEFT state dict saved without PEFT's prefix."""
    g = torch.Generator().manual_seed(0)
    sd = {"transformer.h.0.attn.c_attn.lora_A.weight": torch.randn(2, 8, generator=g),
          "transformer.h.0.attn.c_attn.lora_B.weight": torch.randn(24, 2, generator=g)}
    save_file(sd, str(tmp_path / "gpt2_lora.safetensors"))
    assert load_adapter(tmp_path / "gpt2_lora.safetensors", alpha=2.0).format == "peft"
    (tmp_path / "d").mkdir()
    save_file(sd, str(tmp_path / "d" / WEIGHTS))
    ad = load_adapter(tmp_path / "d" / WEIGHTS)
    assert ad.format == "diffusers" and set(ad) == {"h.0.attn.c_attn"} and ad["h.0.attn.c_attn"].scale == 1.0
