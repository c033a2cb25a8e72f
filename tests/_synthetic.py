"""Helpers for tests: a tiny synthetic base model whose tensor names match an adapter."""

import numpy as np


def write_base_for(adapter_path, out, *, seed=0, decay=0.8):
    """Write ``out`` (a .safetensors file) with one weight per module of the adapter.

    Each W = U diag(σ) Vᵀ has a decaying spectrum σ_i = decay^i, so that its top
    singular directions are well defined. Returns ``{name: W}``.
    """
    from safetensors.numpy import save_file

    from analysis import load_adapter

    rng = np.random.default_rng(seed)
    weights = {}
    for name, lr in load_adapter(adapter_path).items():
        d_out, d_in = lr.shape
        q = min(d_out, d_in)
        U = np.linalg.qr(rng.standard_normal((d_out, q)))[0]
        V = np.linalg.qr(rng.standard_normal((d_in, q)))[0]
        weights[name] = ((U * decay ** np.arange(q)) @ V.T).astype(np.float32)  # (d_out, q) @ (q, d_in)
    save_file({n + ".weight": w for n, w in weights.items()}, str(out))
    return weights
