"""GGUF bases of several architectures: every weight comes back as the HF model it was converted from holds it.

Each case builds a tiny random HF model with transformers, writes the GGUF file llama.cpp's
``convert_hf_to_gguf.py`` would write for it with ``gguf.GGUFWriter`` — tensor names from the tables below,
and the converter's tensor changes re-implemented here from its formulas: the rotary row permutation of
Wq / Wk (``LlamaModel.permute``), the fused QKV regrouped into ``[Q; K; V]`` (BLOOM / GPT-NeoX per head,
Falcon per KV group), GPT-2's Conv1D weights transposed, Gemma's norms stored as 1 + w — and reads every
weight back under its HF name through :func:`analysis.io.base.open_base`. Oracle: the HF model's own state
dict, in the ``nn.Linear`` (d_out, d_in) orientation (a Conv1D weight transposed).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import torch  # noqa: E402
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from analysis.errors import AdapterError  # noqa: E402
from analysis.io.base import LinearOriented, base_matrix, open_base, read_base  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

D, HEADS, KV, LAYERS, VOCAB = 16, 4, 2, 2, 40

# llama.cpp's tensor names for each HF name ("{i}" = the block), as its converter writes them
LLAMA = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "model.layers.{i}.input_layernorm": "blk.{i}.attn_norm",
    "model.layers.{i}.self_attn.q_proj": "blk.{i}.attn_q", "model.layers.{i}.self_attn.k_proj": "blk.{i}.attn_k",
    "model.layers.{i}.self_attn.v_proj": "blk.{i}.attn_v", "model.layers.{i}.self_attn.o_proj": "blk.{i}.attn_output",
    "model.layers.{i}.post_attention_layernorm": "blk.{i}.ffn_norm",
    "model.layers.{i}.mlp.gate_proj": "blk.{i}.ffn_gate", "model.layers.{i}.mlp.up_proj": "blk.{i}.ffn_up",
    "model.layers.{i}.mlp.down_proj": "blk.{i}.ffn_down",
}
GPT2 = {
    "transformer.wte": "token_embd", "transformer.wpe": "position_embd", "transformer.ln_f": "output_norm",
    "transformer.h.{i}.ln_1": "blk.{i}.attn_norm", "transformer.h.{i}.attn.c_attn": "blk.{i}.attn_qkv",
    "transformer.h.{i}.attn.c_proj": "blk.{i}.attn_output", "transformer.h.{i}.ln_2": "blk.{i}.ffn_norm",
    "transformer.h.{i}.mlp.c_fc": "blk.{i}.ffn_up", "transformer.h.{i}.mlp.c_proj": "blk.{i}.ffn_down",
}
BLOOM = {
    "transformer.word_embeddings": "token_embd", "transformer.word_embeddings_layernorm": "token_embd_norm",
    "transformer.ln_f": "output_norm", "transformer.h.{i}.input_layernorm": "blk.{i}.attn_norm",
    "transformer.h.{i}.self_attention.query_key_value": "blk.{i}.attn_qkv",
    "transformer.h.{i}.self_attention.dense": "blk.{i}.attn_output",
    "transformer.h.{i}.post_attention_layernorm": "blk.{i}.ffn_norm",
    "transformer.h.{i}.mlp.dense_h_to_4h": "blk.{i}.ffn_up", "transformer.h.{i}.mlp.dense_4h_to_h": "blk.{i}.ffn_down",
}
FALCON = {  # the new decoder architecture (Falcon-40B style): ln_mlp -> attn_norm, ln_attn -> attn_norm_2
    "transformer.word_embeddings": "token_embd", "transformer.ln_f": "output_norm", "lm_head": "output",
    "transformer.h.{i}.ln_mlp": "blk.{i}.attn_norm", "transformer.h.{i}.ln_attn": "blk.{i}.attn_norm_2",
    "transformer.h.{i}.self_attention.query_key_value": "blk.{i}.attn_qkv",
    "transformer.h.{i}.self_attention.dense": "blk.{i}.attn_output",
    "transformer.h.{i}.mlp.dense_h_to_4h": "blk.{i}.ffn_up", "transformer.h.{i}.mlp.dense_4h_to_h": "blk.{i}.ffn_down",
}
NEOX = {
    "gpt_neox.embed_in": "token_embd", "gpt_neox.final_layer_norm": "output_norm", "embed_out": "output",
    "gpt_neox.layers.{i}.input_layernorm": "blk.{i}.attn_norm",
    "gpt_neox.layers.{i}.post_attention_layernorm": "blk.{i}.ffn_norm",
    "gpt_neox.layers.{i}.attention.query_key_value": "blk.{i}.attn_qkv",
    "gpt_neox.layers.{i}.attention.dense": "blk.{i}.attn_output",
    "gpt_neox.layers.{i}.mlp.dense_h_to_4h": "blk.{i}.ffn_up",
    "gpt_neox.layers.{i}.mlp.dense_4h_to_h": "blk.{i}.ffn_down",
}
QWEN2 = LLAMA  # Qwen2ForCausalLM uses the Llama names (plus q / k / v biases, not weights)
GEMMA = {k: v for k, v in LLAMA.items() if k != "lm_head"}  # tied to the embedding, not written


def rope_permute(W, n):
    """llama.cpp's ``LlamaModel.permute`` (the forward direction)."""
    return W.reshape(n, 2, W.shape[0] // n // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def qkv_per_head_to_gguf(W, n):
    """BLOOM / GPT-NeoX: HF's per-head [q_h, k_h, v_h] rows -> [Q; K; V]."""
    qkv = W.reshape(n, 3, W.shape[0] // n // 3, W.shape[1])
    return np.concatenate([qkv[:, j].reshape(-1, W.shape[1]) for j in range(3)])


def qkv_kv_groups_to_gguf(W, n, kv):
    """Falcon: HF's KV groups [q .. q, k, v] -> [Q; K; V]."""
    hd = W.shape[0] // (n + 2 * kv)
    qkv = W.reshape(kv, n // kv + 2, hd, W.shape[1])
    return np.concatenate([qkv[:, :-2].reshape(-1, W.shape[1]), qkv[:, -2].reshape(-1, W.shape[1]),
                           qkv[:, -1].reshape(-1, W.shape[1])])


def _model(kind):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=D, intermediate_size=2 * D, num_key_value_heads=KV, max_position_embeddings=32, **common))
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            hidden_size=D, intermediate_size=2 * D, num_key_value_heads=KV, max_position_embeddings=32, **common))
    if kind == "gemma":
        return transformers.GemmaForCausalLM(transformers.GemmaConfig(
            hidden_size=D, intermediate_size=2 * D, num_key_value_heads=KV, head_dim=D // HEADS,
            max_position_embeddings=32, **common))
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=32))
    if kind == "bloom":
        return transformers.BloomForCausalLM(transformers.BloomConfig(
            vocab_size=VOCAB, hidden_size=D, n_layer=LAYERS, n_head=HEADS))
    if kind == "falcon":
        return transformers.FalconForCausalLM(transformers.FalconConfig(
            hidden_size=D, new_decoder_architecture=True, num_kv_heads=KV, alibi=False, **common))
    if kind == "gptneox":
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            hidden_size=D, intermediate_size=2 * D, max_position_embeddings=32, **common))
    raise ValueError(kind)


# kind -> (GGUF architecture, name table, the converter's change of a tensor: (hf name, W) -> stored W)
CASES = {
    "llama": ("llama", LLAMA, lambda n, W: rope_permute(W, HEADS) if n.endswith("q_proj") else
              rope_permute(W, KV) if n.endswith("k_proj") else W),
    "qwen2": ("qwen2", QWEN2, lambda n, W: W),
    "gemma": ("gemma", GEMMA, lambda n, W: W + np.float32(1) if n.endswith("norm") else W),
    "gpt2": ("gpt2", GPT2, lambda n, W: W.T if n.endswith(("c_attn", "c_proj", "c_fc")) else W),
    "bloom": ("bloom", BLOOM, lambda n, W: qkv_per_head_to_gguf(W, HEADS) if n.endswith("query_key_value") else W),
    "falcon": ("falcon", FALCON, lambda n, W: qkv_kv_groups_to_gguf(W, HEADS, KV) if n.endswith("query_key_value")
               else W),
    "gptneox": ("gptneox", NEOX, lambda n, W: qkv_per_head_to_gguf(W, HEADS) if n.endswith("query_key_value") else W),
}


def gguf_name(table, hf):
    """The GGUF tensor name (without ``.weight``) llama.cpp gives HF module ``hf``, or None."""
    m = re.search(r"\.(\d+)\.", hf)
    template = re.sub(r"\.(\d+)\.", ".{i}.", hf, count=1) if m else hf
    return table[template].format(i=m.group(1) if m else "") if template in table else None


def hf_weights(model):
    """``{module name: (W as HF stores it, W in the nn.Linear orientation)}`` for every weight."""
    conv1d = {n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    out = {}
    for key, t in model.state_dict().items():
        if key.endswith(".weight"):
            name = key[: -len(".weight")]
            W = t.detach().float().numpy().copy()
            out[name] = (W, W.T.copy() if name in conv1d else W)
    return out


def write_gguf(path, arch, tensors, *, heads=HEADS, kv=KV, blocks=LAYERS, dtype=np.float32):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(blocks)
    w.add_embedding_length(D)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    for name, W in tensors.items():
        w.add_tensor(name + ".weight", np.ascontiguousarray(W, dtype=dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def convert(kind, tmp_path, *, dtype=np.float32):
    """(GGUF path, {hf name: (HF-stored W, nn.Linear W)}, {hf name: gguf name}) as llama.cpp converts ``kind``."""
    arch, table, change = CASES[kind]
    weights = hf_weights(_model(kind))
    names = {n: gguf_name(table, n) for n in weights}
    assert all(g is not None for n, g in names.items() if n != "lm_head"), names  # the table covers the model
    names = {n: g for n, g in names.items() if g is not None}
    tensors = {names[n]: change(n, weights[n][0]) for n in names}
    return write_gguf(tmp_path / f"{kind}.gguf", arch, tensors, dtype=dtype), weights, names


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_weight_comes_back_as_the_hf_model_holds_it(kind, tmp_path):
    path, weights, names = convert(kind, tmp_path)
    with open_base(path) as base:
        assert base.arch == CASES[kind][0]
        for hf, g in names.items():
            W = base.weight(hf)
            want = weights[hf][1]
            assert W.dtype == np.float32 and W.shape == want.shape, hf
            if kind == "gemma" and hf.endswith("norm"):  # (w + 1) - 1 in float32: within one ulp of 1
                np.testing.assert_allclose(W, want, rtol=0, atol=2 ** -23, err_msg=hf)
            else:
                np.testing.assert_array_equal(W, want, err_msg=hf)
            assert hf in base and base.resolve(g) == base.resolve(hf)  # its GGUF name finds the same tensor
        listed = set(base.names())
        if kind == "llama":  # a llama file lists the HF Llama names, as before
            assert listed == set(names)
        else:
            assert listed == set(names.values())
        assert set(base.names(matrices_only=True)) <= listed


@pytest.mark.parametrize("kind", ["llama", "bloom", "falcon"])
def test_the_undone_reordering_matters(kind, tmp_path):
    """The stored tensor differs from HF's: reading it as stored would not line up with the adapters."""
    path, weights, names = convert(kind, tmp_path)
    target = {"llama": "model.layers.1.self_attn.k_proj",
              "bloom": "transformer.h.1.self_attention.query_key_value",
              "falcon": "transformer.h.1.self_attention.query_key_value"}[kind]
    reader = gguf.GGUFReader(str(path))
    stored = next(t for t in reader.tensors if t.name == names[target] + ".weight")
    assert not np.array_equal(np.asarray(stored.data), weights[target][1])
    with open_base(path) as base:
        np.testing.assert_array_equal(base.weight(target), weights[target][1])


def test_f16_file_and_any_mapped_spelling(tmp_path):
    path, weights, names = convert("qwen2", tmp_path, dtype=np.float16)
    with open_base(path) as base:
        for hf in names:
            np.testing.assert_array_equal(base.weight(hf), weights[hf][1].astype(np.float16).astype(np.float32))
        # the same tensor under other spellings the gguf package maps (llama-pth style, GGUF's own)
        np.testing.assert_array_equal(base.weight("layers.1.attention.wq"),
                                      base.weight("model.layers.1.self_attn.q_proj"))
        assert base.resolve("model.layers.0.mlp.down_proj") == "blk.0.ffn_down"
        got = dict(base.weights(["model.layers.0.self_attn.v_proj", "blk.0.attn_v"]))
        np.testing.assert_array_equal(got["model.layers.0.self_attn.v_proj"], got["blk.0.attn_v"])



def _gpt2_hf_and_adapter(tmp_path, targets, *, seed):
    """The tiny GPT-2 saved as an HF folder (``tmp_path/hf``) and a PEFT LoRA on ``targets`` with random B
    (``tmp_path/adapter``, fan_in_fan_out), read back."""
    from peft import LoraConfig, get_peft_model

    from analysis import load_adapter

    model = _model("gpt2")
    model.save_pretrained(str(tmp_path / "hf"))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=list(targets),
                                                  fan_in_fan_out=True, lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    return load_adapter(tmp_path / "adapter")

def test_gpt2_conv1d_orientation_with_a_peft_adapter(tmp_path):
    """A PEFT LoRA on GPT-2's Conv1D layers (``fan_in_fan_out``) meets the same W from the GGUF file as from the
    HF safetensors file, for every module (``attn.c_proj`` is square: a wrong transpose would pass the shapes)."""
    path, weights, _ = convert("gpt2", tmp_path)
    adapter = _gpt2_hf_and_adapter(tmp_path, ["c_attn", "c_proj", "c_fc"], seed=3)
    assert "transformer.h.0.attn.c_proj" in adapter and adapter["transformer.h.0.attn.c_proj"].shape == (D, D)
    with open_base(path) as gg, open_base(tmp_path / "hf") as hf:
        assert isinstance(gg.weight("transformer.h.0.attn.c_attn"), LinearOriented)
        for stored in (False, True):
            from_gguf = dict(read_base(gg, list(adapter), stored=stored))
            from_hf = dict(read_base(hf, list(adapter), stored=stored))
            for name, lr in adapter.items():
                A = np.asarray(base_matrix(from_gguf[name], lr, path=gg.path))
                B = np.asarray(base_matrix(from_hf[name], lr, path=hf.path))
                assert A.shape == lr.shape and type(A) is np.ndarray
                np.testing.assert_array_equal(A, B, err_msg=name)
                np.testing.assert_array_equal(A, weights[name][1])


def test_gpt2_gguf_base_gives_the_same_analysis_as_the_hf_base(tmp_path):
    from analysis.sweeps.adapter import analyse_adapter

    path, _, _ = convert("gpt2", tmp_path)
    adapter = _gpt2_hf_and_adapter(tmp_path, ["c_attn", "c_proj"], seed=5)
    a = analyse_adapter(adapter, base=str(path), n_random=2).frame.set_index("name").sort_index()
    b = analyse_adapter(adapter, base=str(tmp_path / "hf"), n_random=2).frame.set_index("name").sort_index()
    num = a.select_dtypes("number").columns
    assert len(a) == len(adapter) and "amplification" in " ".join(num)
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-6, atol=1e-9)


def test_unknown_architecture_is_one_clear_error(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "nonesuch")
    w.add_block_count(1)
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(AdapterError) as e:
        open_base(path)
    msg = str(e.value)
    assert str(path) in msg and "'nonesuch'" in msg and "general.architecture" in msg and "\n" not in msg


def test_missing_metadata_and_unmapped_names(tmp_path):
    path = tmp_path / "nocount.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(AdapterError, match="qwen2.block_count.*expected this metadata key"):
        open_base(path)
    path, _, _ = convert("gpt2", tmp_path)
    with open_base(path) as base:
        with pytest.raises(AdapterError) as e:  # mapped by the package, not in this file (a tied output)
            base.weight("lm_head")
        assert "'output.weight'" in str(e.value) and str(path) in str(e.value)
        with pytest.raises(AdapterError, match="maps to a tensor of a gpt2 model") as e:
            base.weight("transformer.h.0.attn.nonesuch")
        assert e.value.key == "transformer.h.0.attn.nonesuch.weight" and "\n" not in str(e.value)
        assert "transformer.h.0.attn.nonesuch" not in base
