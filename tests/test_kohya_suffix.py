"""kohya text-encoder names against bases whose tensor names carry another prefix: a unique suffix resolves.

transformers 5 saves a ``CLIPTextModel`` as ``encoder.layers.0.…`` and a ``CLIPTextModelWithProjection``
(SDXL's second encoder) as ``text_model.encoder.layers.0.…``; kohya names the modules
``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` (``lora_te1_`` / ``lora_te2_`` for SDXL). The bases
here are real tiny encoders saved by transformers; the adapters are kohya LoRA files written here with
safetensors (``.lora_down.weight`` (r, in), ``.lora_up.weight`` (out, r), ``.alpha``) and read by
:func:`analysis.load_adapter`. Oracles: the encoder's own state dict (which tensor a name means) and
sd-scripts' merge rule ``up @ down · alpha / r``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import torch  # noqa: E402
transformers = pytest.importorskip("transformers")
from safetensors.numpy import save_file  # noqa: E402

from analysis import load_adapter  # noqa: E402
from analysis.errors import AdapterError  # noqa: E402
from analysis.io.base import open_base, read_base  # noqa: E402
from analysis.io.kohya_names import resolve_adapter_names, resolve_kohya_name, underscore_index  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
LAYERS, R, ALPHA = 2, 2, 3.0
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def _config(**kw):
    return transformers.CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=LAYERS,
                                       num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
                                       eos_token_id=1, pad_token_id=1, **kw)


def _state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def write_kohya(path, prefix, sd_names, seed=0):
    """A kohya LoRA on every attention / MLP Linear of the encoder: ``{kohya name: (up, down)}``."""
    rng = np.random.default_rng(seed)
    tensors, factors = {}, {}
    for i in range(LAYERS):
        for m in MODULES:
            W = sd_names[f"{i}.{m}"]
            down = rng.standard_normal((R, W.shape[1])).astype(np.float32)
            up = rng.standard_normal((W.shape[0], R)).astype(np.float32)
            name = f"{prefix}text_model_encoder_layers_{i}_{m.replace('.', '_')}"
            tensors |= {name + ".lora_down.weight": down, name + ".lora_up.weight": up,
                        name + ".alpha": np.array(ALPHA, dtype=np.float32)}
            factors[name] = (up, down, f"encoder.layers.{i}.{m}")
    save_file(tensors, str(path))
    return factors


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """``(folder, state dict)`` of a CLIPTextModel (``te``) and a CLIPTextModelWithProjection (``te2``)."""
    tmp = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    te = transformers.CLIPTextModel(_config())
    torch.manual_seed(1)
    te2 = transformers.CLIPTextModelWithProjection(_config(projection_dim=8))
    te.save_pretrained(str(tmp / "te"))
    te2.save_pretrained(str(tmp / "te2"))
    return {"te": (tmp / "te", _state(te)), "te2": (tmp / "te2", _state(te2))}


def _layer_weights(sd, prefix):
    return {f"{i}.{m}": sd[f"{prefix}encoder.layers.{i}.{m}.weight"] for i in range(LAYERS) for m in MODULES}


def test_transformers_saves_clip_text_model_without_text_model(encoders):
    _, sd = encoders["te"]
    _, sd2 = encoders["te2"]
    assert "encoder.layers.0.self_attn.q_proj.weight" in sd and not any(k.startswith("text_model.") for k in sd)
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in sd2


def test_kohya_te_names_resolve_by_unique_suffix(encoders, tmp_path):
    folder, sd = encoders["te"]
    factors = write_kohya(tmp_path / "te.safetensors", "lora_te_", _layer_weights(sd, ""))
    ad = load_adapter(tmp_path / "te.safetensors")
    assert set(ad) == set(factors)
    with open_base(folder) as base:
        for name in ad:
            real = factors[name][2]
            assert base.resolve(name) == real and name in base
            np.testing.assert_array_equal(base.weight(name), sd[real + ".weight"])
        resolved = resolve_adapter_names(ad, base)
    assert resolved.format == "kohya-resolved" and set(resolved) == {f[2] for f in factors.values()}
    for name, lr in resolved.items():
        up, down, real = factors[lr.meta["kohya_name"]]
        assert real == name
        np.testing.assert_allclose(np.asarray(lr.delta(), dtype=np.float64),
                                   up.astype(np.float64) @ down.astype(np.float64) * ALPHA / R, rtol=1e-6, atol=1e-9)
        assert lr.shape == sd[name + ".weight"].shape
    # a mapping base goes through the same resolution (read_base, as DoRA and the sweeps use it)
    mapping = {k[: -len(".weight")]: v for k, v in sd.items() if k.endswith(".weight")}
    got = dict(read_base(mapping, list(ad)))
    np.testing.assert_array_equal(got["lora_te_text_model_encoder_layers_1_mlp_fc2"],
                                  sd["encoder.layers.1.mlp.fc2.weight"])


def test_analyses_run_on_the_suffix_resolved_base(encoders, tmp_path):
    from analysis.sweeps.adapter import analyse_adapter
    from analysis.sweeps.intruders import intruder_sweep

    folder, sd = encoders["te"]
    write_kohya(tmp_path / "te.safetensors", "lora_te_", _layer_weights(sd, ""))
    ad = load_adapter(tmp_path / "te.safetensors")
    fr = analyse_adapter(ad, base=str(folder), n_random=2).frame.set_index("name")
    name = "lora_te_text_model_encoder_layers_0_self_attn_out_proj"
    W = sd["encoder.layers.0.self_attn.out_proj.weight"].astype(np.float64)
    assert len(fr) == len(ad) and fr.loc[name, "w_norm"] == pytest.approx(float(np.linalg.norm(W)), rel=1e-6)
    assert len(intruder_sweep(ad, str(folder), top_k=2).to_frame()) == len(ad)


def test_sdxl_te1_suffix_and_te2_exact(encoders, tmp_path):
    """SDXL: te1 (CLIPTextModel) by suffix, te2 (CLIPTextModelWithProjection) exactly, each in its own folder
    and in one pipeline-wide file (where te1 must not take text_encoder_2's ``text_model.…`` tensors)."""
    (f1, sd1), (f2, sd2) = encoders["te"], encoders["te2"]
    write_kohya(tmp_path / "k.safetensors", "lora_te1_", _layer_weights(sd1, ""), seed=1)
    f = write_kohya(tmp_path / "k2.safetensors", "lora_te2_", _layer_weights(sd2, "text_model."), seed=2)
    ad1, ad2 = load_adapter(tmp_path / "k.safetensors"), load_adapter(tmp_path / "k2.safetensors")
    with open_base(f1) as b1, open_base(f2) as b2:
        assert b1.resolve("lora_te1_text_model_encoder_layers_1_mlp_fc1") == "encoder.layers.1.mlp.fc1"
        assert b2.resolve("lora_te2_text_model_encoder_layers_1_mlp_fc1") == "text_model.encoder.layers.1.mlp.fc1"
        assert len(resolve_adapter_names(ad1, b1)) == len(resolve_adapter_names(ad2, b2)) == len(f)
    pipe = {f"text_encoder.{k}": v for k, v in sd1.items()} | {f"text_encoder_2.{k}": v for k, v in sd2.items()}
    save_file(pipe, str(tmp_path / "pipeline.safetensors"))
    with open_base(tmp_path / "pipeline.safetensors") as base:
        for name in ad1:
            real = base.resolve(name)
            assert real.startswith("text_encoder.encoder.layers.")
            np.testing.assert_array_equal(base.weight(name), sd1[real[len("text_encoder."):] + ".weight"])
        for name in ad2:
            assert base.resolve(name).startswith("text_encoder_2.text_model.encoder.layers.")


def test_exact_match_keeps_priority(encoders):
    """A base that matches exactly resolves as before, even when a suffix would also match elsewhere."""
    _, sd2 = encoders["te2"]
    names = [k[: -len(".weight")] for k in sd2 if k.endswith(".weight")]
    with_copy = names + ["cond_stage_model.transformer." + n for n in names]  # a second, longer-prefixed copy
    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert resolve_kohya_name(name, names) == "text_model.encoder.layers.0.self_attn.q_proj"
    assert resolve_kohya_name(name, with_copy) == "text_model.encoder.layers.0.self_attn.q_proj"
    # the original single-file checkpoint layout alone resolves by suffix
    assert resolve_kohya_name(name, with_copy[len(names):]) == \
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj"


def test_two_suffix_candidates_are_one_error_naming_both(encoders, tmp_path):
    _, sd = encoders["te"]
    both = dict(sd) | {f"model.text_model.{k}": v.copy() for k, v in sd.items()}
    save_file(both, str(tmp_path / "both.safetensors"))
    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    with open_base(tmp_path / "both.safetensors") as base:
        with pytest.raises(AdapterError) as e:
            base.resolve(name)
        msg = str(e.value)
        assert "encoder.layers.0.self_attn.q_proj," in msg
        assert "model.text_model.encoder.layers.0.self_attn.q_proj" in msg
        assert "ambiguous" in msg and str(tmp_path / "both.safetensors") in msg and "\n" not in msg
        assert e.value.key == name and name not in base
        # no match at all: today's error
        with pytest.raises(AdapterError, match="text_model_encoder_layers_7_mlp_fc1.*got none"):
            base.weight("lora_te_text_model_encoder_layers_7_mlp_fc1")


def test_suffix_must_end_at_a_component_boundary():
    name = "lora_te_a_b_attn_q_proj"  # 'a_b_attn_q_proj' without its prefix
    # a base name must end it right after an '_' ('ttn_q_proj' does not), or it must end a base name right
    # after a '.' of that name ('x.za_b_attn_q_proj' does not)
    with pytest.raises(AdapterError, match="got none"):
        resolve_kohya_name(name, ["ttn_q_proj", "x.za_b_attn_q_proj"])
    assert resolve_kohya_name(name, ["attn_q_proj", "c.d"]) == "attn_q_proj"
    assert resolve_kohya_name(name, ["model.a.b.attn_q_proj", "model.xa.b.attn_q_proj"]) == "model.a.b.attn_q_proj"


def test_resolution_scales_linearly():
    """Thousands of base tensors and hundreds of modules: one index, a few dictionary probes per module."""
    base = [f"model.diffusion_model.blocks.{i}.{part}" for i in range(2000)
            for part in ("attn.to_q", "attn.to_k", "ff.net_0", "norm")]
    mods = [f"lora_unet_diffusion_model_blocks_{i}_attn_to_q" for i in range(0, 2000, 4)]
    t0 = time.perf_counter()
    index = underscore_index(base)
    got = [resolve_kohya_name(m, base_names=set(base), index=index) for m in mods]
    assert got[3] == "model.diffusion_model.blocks.12.attn.to_q" and len(set(got)) == len(mods)
    assert time.perf_counter() - t0 < 5.0
