"""Layer / block weights baked into a new adapter: every module's update multiplied by its weight (through
lora_B), checked through PEFT's own loading and sd-scripts' merge formula; kohya's block-weight blocks against
the Stable Diffusion UNet's block layout (CompVis input_blocks / output_blocks vs diffusers down / up blocks)."""

import json

import numpy as np
import pytest

import torch  # noqa: E402
pytest.importorskip("peft")
from safetensors.torch import load_file, save_file  # noqa: E402

from analysis import load_adapter  # noqa: E402
from analysis.resize import main  # noqa: E402
from analysis.sweeps.layer_weights import PRESETS, layer_weights, lbw_block_index  # noqa: E402
from analysis.sweeps.resize import resize_adapter  # noqa: E402

from conftest import make_peft_adapter  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
MODS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    root = tmp_path_factory.mktemp("lw")
    make_peft_adapter(root / "a", r=3, seed=0, layers=4, targets=MODS)
    return root / "a"


def _peft_deltas(path, layers=4):
    """ΔW of an adapter folder as PEFT applies it (merge_and_unload minus the base)."""
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    def base():
        torch.manual_seed(1234)
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        return LlamaForCausalLM(cfg)

    W0 = {k: v.double().numpy() for k, v in base().state_dict().items()}
    merged = PeftModel.from_pretrained(base(), str(path)).merge_and_unload().state_dict()
    return {k[: -len(".weight")]: merged[k].double().numpy() - W0[k] for k in W0 if k.endswith("proj.weight")}


@pytest.mark.parametrize("spec,want", [
    ("1,0.5,0,2", lambda l, role: [1, 0.5, 0, 2][l]),
    ("1-2=0.5,*=1", lambda l, role: 0.5 if l in (1, 2) else 1.0),
    ("decoder:3=0,attention=2,mlp=0.25", lambda l, role: 0.0 if l == 3 else (2.0 if role in "qkvo" else 0.25)),
    ("second-half", lambda l, role: 1.0 if l >= 2 else 0.0),
    ("ramp-up", lambda l, role: (l + 1) / 4),
    ("mlp-only", lambda l, role: 0.0 if role in "qkvo" else 1.0),
])
def test_weighted_adapter_through_peft(four, tmp_path, spec, want):
    from analysis.io.roles import module_role

    src = load_adapter(four)
    out = tmp_path / "w"
    assert main([str(four), "--layer-weights", spec, "--out", str(out), "--quiet"]) == 0
    got = _peft_deltas(out)
    orig = _peft_deltas(four)
    written = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    for name in src:
        p = module_role(name)
        w = want(p.layer, p.role)
        if w == 0:
            assert name not in written and not got[name].any()  # left out
        else:
            np.testing.assert_allclose(got[name], w * orig[name], rtol=0, atol=1e-6 * np.abs(orig[name]).max())


def test_weights_with_a_rank_criterion_truncate_the_weighted_update(four):
    src = load_adapter(four)
    res = resize_adapter(src, rank=1, layer_weights={"0": -1.5, "*": 1})
    for name, lr in src.items():
        w = -1.5 if ".0." in name else 1.0
        U, S, Vt = np.linalg.svd(w * lr.delta())
        np.testing.assert_allclose(res.modules[name].delta(), S[0] * np.outer(U[:, 0], Vt[0]), atol=1e-9 * S[0])
    assert res.frame["weight"].min() == -1.5


def test_bad_specs(four):
    names = list(load_adapter(four))
    for spec, msg in (("1,2", "one weight per layer"), ("decoder:9=0", "matches no module"), ("nope", "expected a"),
                      ("1,a=2", "not both"), ("encoder:1=0", "no stack")):
        with pytest.raises(ValueError, match=msg):
            layer_weights(spec, names)
    assert set(PRESETS) >= {"first-half", "ramp-down", "unet-only"}


# ------------------------------------------------------------------------------------------ kohya block weights
# SD 1.x: CompVis input_blocks 1, 2 = down_blocks.0 {resnets, attentions}.{0, 1}; 3 = its downsampler; 4, 5 =
# down_blocks.1; ... 10, 11 = down_blocks.3 (no attention); middle_block = mid_block; output_blocks 0-2 =
# up_blocks.0 (its upsampler in 2); 3-5 = up_blocks.1; ...; 9-11 = up_blocks.3.
SD1 = {"lora_unet_down_blocks_0_attentions_0_proj_in": "IN01",
       "lora_unet_down_blocks_0_resnets_1_conv1": "IN02",
       "lora_unet_down_blocks_0_downsamplers_0_conv": "IN03",
       "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": "IN04",
       "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k": "IN08",
       "lora_unet_down_blocks_3_resnets_1_conv2": "IN11",
       "lora_unet_mid_block_attentions_0_proj_out": "MID",
       "lora_unet_up_blocks_0_resnets_2_conv1": "OUT02",
       "lora_unet_up_blocks_0_upsamplers_0_conv": "OUT02",
       "lora_unet_up_blocks_1_attentions_0_proj_in": "OUT03",
       "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2": "OUT11",
       "lora_te_text_model_encoder_layers_0_mlp_fc1": "BASE"}
BLOCKS = ["BASE", *(f"IN{i:02d}" for i in range(12)), "MID", *(f"OUT{i:02d}" for i in range(12))]


def test_block_indices_follow_the_unet_layout():
    for name, block in SD1.items():
        assert BLOCKS[lbw_block_index(name)] == block, name
    assert BLOCKS[lbw_block_index("lora_unet_input_blocks_4_1_proj_in", sdxl=True)] == "IN04"
    assert BLOCKS[lbw_block_index("lora_unet_output_blocks_8_0_in_layers_2", sdxl=True)] == "OUT08"
    assert BLOCKS[lbw_block_index("lora_unet_middle_block_1_proj_in", sdxl=True)] == "MID"


def test_block_weight_vector_on_a_kohya_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name in SD1:
        sd[f"{name}.lora_down.weight"] = torch.randn(2, 8, generator=g)
        sd[f"{name}.lora_up.weight"] = torch.randn(8, 2, generator=g)
        sd[f"{name}.alpha"] = torch.tensor(1.0)
    save_file(sd, str(tmp_path / "k.safetensors"))
    # sd-scripts' 17-value vector sets BASE, IN01, IN02, IN04, IN05, IN07, IN08, MID, OUT03 … OUT11
    vec = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]
    sets = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(3, 12)]
    block_w = dict(zip(sets, vec))
    out = tmp_path / "w.safetensors"
    assert main([str(tmp_path / "k.safetensors"), "--layer-weights", ",".join(map(str, vec)), "--out", str(out),
                 "--quiet"]) == 0
    got = load_file(str(out))
    for name, block in SD1.items():
        w = block_w.get(block, 1.0)  # blocks the vector does not set (IN03, IN11, OUT02) keep 1
        before = (sd[f"{name}.lora_up.weight"] @ sd[f"{name}.lora_down.weight"]).double().numpy()
        r = got[f"{name}.lora_down.weight"].shape[0]
        after = (got[f"{name}.lora_up.weight"].double() @ got[f"{name}.lora_down.weight"].double()).numpy() \
            * float(got[f"{name}.alpha"]) / r  # sd-scripts' merge formula
        np.testing.assert_allclose(after, w * before * 0.5, rtol=0, atol=1e-6 * np.abs(before).max(), err_msg=name)
