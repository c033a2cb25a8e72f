"""Helpers for the rank / surgery tests: synthetic adapters and the tiny Llama of conftest."""

import numpy as np


def orthonormal(rng, d, k):
    """(d, k) random orthonormal columns."""
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


def lowrank_from(U, S, V, *, scale=1.0, name=""):
    """A LowRank with ΔW = U diag(S) Vᵀ (scale folded into the factors)."""
    from analysis import LowRank

    root = np.sqrt(np.asarray(S, dtype=float) / scale)
    return LowRank((V * root).T, U * root, scale, name=name)


def random_adapter(rng, shapes, *, r=4, scale=2.0, fmt="peft", path="synthetic"):
    """An Adapter of random LowRanks: ``shapes`` maps name -> (d_out, d_in)."""
    from analysis import Adapter, LowRank

    mods = {n: LowRank(rng.standard_normal((r, din)), rng.standard_normal((dout, r)), scale, name=n)
            for n, (dout, din) in shapes.items()}
    return Adapter(mods, path=path, format=fmt)


def tiny_llama(hidden=32, layers=2):
    """The tiny random Llama of conftest.make_peft_adapter (same seed, same weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def base_state(hidden=32, layers=2):
    """Float64 numpy copy of the tiny Llama's weights, by tensor key."""
    return {k: v.detach().double().numpy().copy() for k, v in tiny_llama(hidden, layers).state_dict().items()}
