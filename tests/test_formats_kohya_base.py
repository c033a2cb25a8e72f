"""kohya / LyCORIS names resolved against a base (a tiny diffusers UNet), and resize writing kohya back.

The adapters are written by lycoris-lora on the UNet itself (``lycoris_`` names, renamed to kohya's
``lora_unet_`` as its kohya wrapper names them); the base weights are the UNet's own
``diffusion_pytorch_model.safetensors`` as diffusers saves it. Oracles: the UNet's state dict (which
tensor a name means) and lycoris-lora's loaders (what a written file applies).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import torch  # noqa: E402
pytest.importorskip("lycoris")
diffusers = pytest.importorskip("diffusers")
from safetensors.torch import load_file, save_file  # noqa: E402

from analysis.errors import AdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402
from analysis.io.base import open_base  # noqa: E402
from analysis.io.kohya_names import resolve_adapter_names, resolve_kohya_name  # noqa: E402

logging.getLogger("lycoris").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
TO_OUT = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``(base file, {algo: kohya file})`` for a LoCon and a LoHa adapter on every Linear / Conv2d."""
    from lycoris import create_lycoris

    tmp = tmp_path_factory.mktemp("kohya_base")
    unet = tiny_unet()
    unet.save_pretrained(tmp / "unet")
    out = {}
    for algo in ("locon", "loha"):
        model = tiny_unet()
        net = create_lycoris(model, 1.0, linear_dim=2, linear_alpha=1.0, conv_dim=2, conv_alpha=1.0, algo=algo)
        net.apply_to()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, p in net.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        net.save_weights(str(tmp / "raw.safetensors"), None, {"ss_network_module": "lycoris.kohya"})
        sd = load_file(str(tmp / "raw.safetensors"))
        save_file({"lora_unet_" + k.removeprefix("lycoris_"): v for k, v in sd.items()}, str(tmp / f"{algo}.safetensors"),
                  metadata={"ss_network_module": "lycoris.kohya"})
        out[algo] = tmp / f"{algo}.safetensors"
    return tmp / "unet" / "diffusion_pytorch_model.safetensors", out


def test_names_resolve_to_the_unets_tensors(files):
    base_path, adapters = files
    sd = tiny_unet().state_dict()
    ad = load_adapter(adapters["locon"])
    with open_base(base_path) as base:
        for name in ad:
            real = base.resolve(name)
            assert "lora_unet_" + real.replace(".", "_") == name and real + ".weight" in sd
            np.testing.assert_array_equal(base.weight(name), sd[real + ".weight"].numpy())
            assert name in base
        assert base.resolve(TO_OUT) == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
        got = dict(base.weights([TO_OUT, CONV]))  # several at once, under the names asked for
        assert set(got) == {TO_OUT, CONV} and got[CONV].shape == (8, 8, 3, 3)


def test_missing_and_ambiguous_one_line(files):
    base_path, _ = files
    with open_base(base_path) as base:
        with pytest.raises(AdapterError) as e:
            base.weight("lora_unet_down_blocks_7_attn1_to_q")
        msg = str(e.value)
        assert "down_blocks_7_attn1_to_q" in msg and str(base_path) in msg and "\n" not in msg
        assert "lora_unet_down_blocks_7_attn1_to_q" not in base
    with pytest.raises(AdapterError, match="ambiguous.*a.b_c, a_b.c") as e:
        resolve_kohya_name("lora_te_a_b_c", ["a.b_c", "a_b.c"])
    assert "\n" not in str(e.value)
    # a pipeline-wide base keeps the component under its folder
    assert resolve_kohya_name("lora_te2_text_model_fc1", ["text_encoder.text_model.fc1",
                                                          "text_encoder_2.text_model.fc1"]) == \
        "text_encoder_2.text_model.fc1"


@pytest.mark.parametrize("algo", ["locon", "loha"])
@pytest.mark.slow
def test_base_analyses_run_on_kohya_files(files, algo):
    from analysis.sweeps.adapter import analyse_adapter
    from analysis.sweeps.intruders import intruder_sweep

    base_path, adapters = files
    ad = load_adapter(adapters[algo])
    sweep = analyse_adapter(ad, base=str(base_path), n_random=2)
    fr = sweep.frame.set_index("name")
    assert len(fr) == len(ad) and set(sweep.correlations) == set(ad)
    sd = tiny_unet().state_dict()  # ‖W‖_F of the tensor each kohya name means
    for name in (TO_OUT, CONV):
        real = "down_blocks.0." + ("attentions.0.transformer_blocks.0.attn1.to_out.0" if name == TO_OUT
                                   else "resnets.0.conv1")
        assert fr.loc[name, "w_norm"] == pytest.approx(float(sd[real + ".weight"].double().norm()), rel=1e-6)
    resolved = resolve_adapter_names(ad, open_base(base_path))
    assert resolved.format == "kohya-resolved"
    assert resolved["down_blocks.0.resnets.0.conv1"].meta["kohya_name"] == CONV
    np.testing.assert_array_equal(resolved["down_blocks.0.resnets.0.conv1"].delta(), ad[CONV].delta())
    res = intruder_sweep(resolved, str(base_path), top_k=2)
    assert len(res.to_frame()) == len(ad)


def _lycoris_applied(path, tmp_path):
    """What lycoris-lora applies from a kohya LoRA file: {name: (d_out, d_in·∏k) float64}.

    (Its kohya wrapper cannot be built on a diffusers UNet in 4.1.3, "duplicated lora name"; its own wrapper
    reads the same tensors under the ``lycoris_`` prefix.)
    """
    from lycoris.wrapper import create_lycoris_from_weights

    sd = load_file(str(path))
    renamed = tmp_path / "as_lycoris.safetensors"
    save_file({"lycoris_" + k.removeprefix("lora_unet_"): v for k, v in sd.items()}, str(renamed))
    net, _ = create_lycoris_from_weights(1.0, str(renamed), tiny_unet().double())
    out = {}
    for m in net.loras:
        m.double()
        with torch.no_grad():
            W = m.get_diff_weight(shape=m.shape)[0].double().numpy()  # LoCon: the scale applied once
        out["lora_unet_" + m.lora_name.removeprefix("lycoris_")] = W.reshape(W.shape[0], -1)
    return out


def _sd_scripts_merge(sd, name):
    """sd-scripts' merge of one module: up @ down · alpha / r (convs flattened), float64."""
    down, up = sd[f"{name}.lora_down.weight"].double(), sd[f"{name}.lora_up.weight"].double()
    r = down.shape[0]
    return (up.reshape(up.shape[0], r) @ down.reshape(r, -1) * sd[f"{name}.alpha"].double() / r).numpy()


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_resize_writes_kohya_that_lycoris_reads(files, tmp_path, algo):
    from analysis.cli.resize import main
    from analysis.sweeps.resize import resize_adapter

    _, adapters = files
    base_path = files[0]
    src = load_adapter(adapters[algo])
    out = tmp_path / "small.safetensors"
    if algo == "loha":  # flattened LoHa convs: the file cannot say which layers are convolutions
        with pytest.raises(AdapterError, match="--base"):
            resize_adapter(src, rank=1).write(out)
        assert not out.exists()
    assert main([str(adapters[algo]), "--rank", "1", "--out", str(out), "--quiet", "--base", str(base_path)]) == 0
    sd = load_file(str(out))
    assert all(k.startswith("lora_unet_") for k in sd) and f"{TO_OUT}.alpha" in sd
    assert sd[f"{CONV}.lora_down.weight"].shape == (1, 8, 3, 3) and sd[f"{CONV}.lora_up.weight"].shape == (8, 1, 1, 1)
    back = load_adapter(out)
    applied = _lycoris_applied(out, tmp_path)
    assert set(back) == set(src) == set(applied)
    for name, lr in src.items():
        U, S, V = lr.svd()
        want = S[0] * np.outer(U[:, 0], V[:, 0])  # Eckart–Young: the best rank-1 ΔW, from the SVD
        scale = np.abs(want).max()
        assert np.abs(back[name].delta() - want).max() < 1e-6 * scale, name
        assert np.abs(applied[name] - want).max() < 1e-6 * scale, name
        assert np.abs(_sd_scripts_merge(sd, name) - want).max() < 1e-6 * scale, name


@pytest.mark.slow
def test_subspace_cli_with_base_on_two_lycoris_files(files, tmp_path, capsys):
    """``python -m analysis.subspace A B --base MODEL`` on a LoCon and a LoHa file of one UNet."""
    import json

    from analysis.cli.subspace import main

    base_path, adapters = files
    js = tmp_path / "pair.json"
    assert main([str(adapters["locon"]), str(adapters["loha"]), "--base", str(base_path), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "to_out_0" in out or "to_out" in out
    recs = json.loads(js.read_text())
    mods = recs["modules"] if isinstance(recs, dict) else recs
    assert len(mods) == len(load_adapter(adapters["locon"]))
    sd = tiny_unet().state_dict()  # the W-vs-ΔW columns were computed on the right base tensors
    rec = next(m for m in mods if m["name"] == TO_OUT)
    real = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight"
    assert rec["w_norm"] == pytest.approx(float(sd[real].double().norm()), rel=1e-6)
    assert np.isfinite(rec["amplification_a"]) and np.isfinite(rec["amplification_b"])


def test_intruders_cli_on_a_kohya_file_matches_the_resolved_adapter(files, tmp_path):
    """``python -m analysis.intruders KOHYA --base MODEL``: names resolved against the base, the same counts
    as the library on the adapter re-keyed by the base's own names."""
    import json

    from analysis.cli.intruders import main
    from analysis.sweeps.intruders import intruder_sweep

    base_path, adapters = files
    js = tmp_path / "intr.json"
    assert main([str(adapters["locon"]), "--base", str(base_path), "--top-k", "2", "--json", str(js),
                 "--progress", "off"]) == 0
    got = {m["name"]: m["count"] for m in json.loads(js.read_text())["modules"]}
    ref = intruder_sweep(resolve_adapter_names(load_adapter(adapters["locon"]), open_base(base_path)),
                         str(base_path), top_k=2).frame
    assert got == dict(zip(ref["name"], ref["count"])) and len(got) == len(load_adapter(adapters["locon"]))
