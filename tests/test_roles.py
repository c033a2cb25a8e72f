"""The roles table: every module of every family of the corpus gets the role its architecture gives it.

The expected roles are written here from each architecture's own code (transformers / diffusers module names), not
taken from the table under test; the names come from the saved base models of the corpus (what users' adapters key).
"""

import pytest
from safetensors import safe_open

from analysis.io.roles import ROLES, module_role, stack_order, with_roles

#: family -> {suffix of a module name (after the layer index): role}
EXPECTED = {
    "gpt2": {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down"},
    "bert": {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
             "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down"},
    "roberta": {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
                "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down"},
    "distilbert": {"attention.q_lin": "q", "attention.k_lin": "k", "attention.v_lin": "v",
                   "attention.out_lin": "o", "ffn.lin1": "up", "ffn.lin2": "down"},
    "t5": {"layer.0.SelfAttention.q": "q", "layer.0.SelfAttention.k": "k", "layer.0.SelfAttention.v": "v",
           "layer.0.SelfAttention.o": "o", "layer.1.EncDecAttention.q": "cross_q",
           "layer.1.EncDecAttention.v": "cross_v", "layer.1.EncDecAttention.o": "cross_o"},
    "llama_gqa": {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
                  "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"},
    "qwen2_gqa": {"self_attn.q_proj": "q", "self_attn.v_proj": "v", "mlp.down_proj": "down"},
    "clip_text": {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
                  "self_attn.out_proj": "o", "mlp.fc1": "up", "mlp.fc2": "down"},
    "unet": {"attn1.to_q": "q", "attn1.to_k": "k", "attn1.to_v": "v", "attn1.to_out.0": "o", "attn2.to_q": "cross_q",
             "attn2.to_k": "cross_k", "attn2.to_v": "cross_v", "attn2.to_out.0": "cross_o", "ff.net.0.proj": "up",
             "ff.net.2": "down"},
    "gpt_neox": {"attention.query_key_value": "qkv", "attention.dense": "o", "mlp.dense_h_to_4h": "up",
                 "mlp.dense_4h_to_h": "down"},
}
#: family -> the stacks its layered modules sit in
STACKS = {"gpt2": {"decoder"}, "bert": {"encoder"}, "roberta": {"encoder"}, "distilbert": {"encoder"},
          "t5": {"encoder", "decoder"}, "llama_gqa": {"decoder"}, "qwen2_gqa": {"decoder"},
          "clip_text": {"encoder"}, "unet": {"unet down", "unet mid", "unet up"}, "gpt_neox": {"decoder"}}


def _module_names(model):
    from corpus import base_weights_file

    with safe_open(base_weights_file(model), framework="numpy") as fh:
        return [k[: -len(".weight")] for k in fh.keys() if k.endswith(".weight")]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_every_family_gets_its_roles(corpus, family):
    names = _module_names(corpus[family])
    seen = {}
    for n in names:
        r = module_role(n)
        assert r.role in ROLES and r.name == n
        hits = [sfx for sfx in EXPECTED[family] if n.endswith("." + sfx)]
        if hits:  # the longest suffix decides (attention.output.dense is not output.dense)
            suffix = max(hits, key=len)
            seen[suffix] = EXPECTED[family][suffix]
            assert r.role == seen[suffix], (n, r.role, seen[suffix])
        if r.layer is not None and r.role in ("q", "k", "v", "o", "qkv"):
            assert r.stack in STACKS[family], (n, r.stack)
    assert set(seen) == set(EXPECTED[family]), f"names not found: {set(EXPECTED[family]) - set(seen)}"


def test_positions_are_unique_across_stacks(corpus):
    names = _module_names(corpus["t5"])
    qs = [module_role(n) for n in names if module_role(n).role == "q"]
    assert {r.stack for r in qs} == {"encoder", "decoder"}
    keys = [(r.kind, r.layer) for r in map(module_role, names)]
    assert len(keys) == len(set(keys))  # (kind, layer) names a module uniquely


@pytest.mark.parametrize("name, role, stack, layer", [
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "q", "text_encoder", 0),
    ("lora_te2_text_model_encoder_layers_3_self_attn_v_proj", "v", "text_encoder_2", 3),
    ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", "cross_k", "unet down", 1),
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0", "o", "unet down", 4),
    ("transformer.h.11.attn.c_attn:q", "q", "decoder", 11),
    ("model.decoder.layers.2.encoder_attn.v_proj", "cross_v", "decoder", 2),
    ("transformer_blocks.3.attn.add_k_proj", "cross_k", "transformer_blocks", 3),
    ("model.layers.0.mlp.gate_up_proj", "gate_up", "decoder", 0),
    ("model.embed_tokens", "embedding", "", None),
    ("lm_head", "other", "", None),
    ("some.unknown.7.thing", "other", "some.unknown", 7)])
def test_kohya_fused_and_unknown_names(name, role, stack, layer):
    r = module_role(name)
    assert (r.role, r.stack, r.layer) == (role, stack, layer)


def test_stack_order_and_frame_columns():
    import pandas as pd

    assert sorted(["unet up", "encoder", "unet down", "decoder", "zzz"], key=stack_order) == [
        "decoder", "encoder", "unet down", "unet up", "zzz"]
    fr = with_roles(pd.DataFrame({"name": ["model.layers.0.self_attn.q_proj"], "layer": [0],
                                  "module": ["self_attn.q_proj"], "x": [1.0]}))
    assert list(fr.columns) == ["name", "layer", "module", "stack", "role", "x"]
    assert fr.loc[0, "role"] == "q" and fr.loc[0, "stack"] == "decoder"
