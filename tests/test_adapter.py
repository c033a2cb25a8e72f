"""core.adapter: module names (layer, natural order, filters, embeddings) and the Adapter mapping."""

import numpy as np
import pytest

from analysis import Adapter, LowRank
from analysis.core.adapter import is_embedding_name, natural_key, parse_layers, select_modules, split_name

NAMES = [f"model.layers.{i}.self_attn.{m}" for i in (10, 2, 1, 0) for m in ("v_proj", "q_proj")] + ["lm_head"]


def test_natural_order_puts_layer_2_before_layer_10():
    got = sorted(NAMES, key=natural_key)
    layers = [split_name(n)[0] for n in got if split_name(n)[0] is not None]
    assert layers == sorted(layers) and got[-1] == "model.layers.10.self_attn.v_proj"


def test_select_modules_filters_and_sorts():
    assert select_modules(NAMES, modules=["q_proj"], layers="0-2") == [
        f"model.layers.{i}.self_attn.q_proj" for i in (0, 1, 2)]
    assert select_modules(NAMES, layers={10}) == ["model.layers.10.self_attn.q_proj",
                                                  "model.layers.10.self_attn.v_proj"]
    assert select_modules(NAMES, modules=["nothing"]) == []
    with pytest.raises(ValueError, match="bad module pattern"):
        select_modules(NAMES, modules=["(unclosed"])


@pytest.mark.parametrize("spec, want", [("3", {3}), ("0,5,10-12", {0, 5, 10, 11, 12}), (" 1 , 2 ", {1, 2})])
def test_parse_layers(spec, want):
    assert parse_layers(spec) == want


@pytest.mark.parametrize("spec", ["a", "3-1", "1-2-3", "-1"])
def test_parse_layers_refuses_bad_specs(spec):
    with pytest.raises(ValueError, match="layer"):
        parse_layers(spec)


def test_split_name_and_embeddings():
    assert split_name("model.layers.3.self_attn.q_proj") == (3, "self_attn.q_proj")
    assert split_name("lora_unet_down_blocks_0_attentions_1_proj_in") == (0, "attentions_1_proj_in")
    assert split_name("lm_head") == (None, "lm_head")
    for name in ("model.embed_tokens", "transformer.wte", "bert.embeddings.word_embeddings", "shared"):
        assert is_embedding_name(name), name
    for name in ("lm_head", "model.layers.0.self_attn.q_proj", "transformer.h.0.attn.c_attn"):
        assert not is_embedding_name(name), name


def test_adapter_mapping_alpha_and_parts():
    rng = np.random.default_rng(0)
    q = LowRank(rng.standard_normal((2, 6)), rng.standard_normal((4, 2)), None, meta={"r": 2})
    part = LowRank(rng.standard_normal((2, 6)), rng.standard_normal((4, 2)), None)
    merged = LowRank(rng.standard_normal((2, 6)), rng.standard_normal((8, 2)), None, kind="merged",
                     parts={"q": part})
    ad = Adapter({"h.0.q": q, "h.0.c_attn": merged}, path="x.pt", format="loralib")
    assert len(ad) == 2 and ad.ranks == {"h.0.q": 2, "h.0.c_attn": 2}
    assert sorted(ad.expanded()) == ["h.0.c_attn:q", "h.0.q"]
    scaled = ad.with_alpha(8)
    assert scaled["h.0.q"].scale == 4.0 and ad["h.0.q"].scale is None
    np.testing.assert_allclose(scaled["h.0.q"].delta(), 4.0 * q.lora_B @ q.lora_A)
