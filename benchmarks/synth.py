"""Synthetic, seeded checkpoints with the exact shapes of Llama-2-7B / Llama-2-70B.

Written straight to disk tensor by tensor (a streaming safetensors writer), so
that generating a 1.7 GB adapter needs memory for one tensor only. Values are
Gaussian (lora_A ~ N(0, 1/d_in), lora_B ~ N(0, 0.02²), W ~ N(0, 0.02²)) rounded
to bf16; the analysis cost does not depend on them.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

__all__ = ["SHAPES", "module_shapes", "write_safetensors", "write_peft_adapter", "write_sharded_base",
           "adapter_nbytes"]

#: name -> (layers, hidden, intermediate, k/v output dim)
SHAPES = {
    "7b": (32, 4096, 11008, 4096),
    "70b": (80, 8192, 28672, 1024),  # grouped-query attention: 8 k/v heads of 128
}
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def module_shapes(shape, *, layers=None):
    """``[(module name, (d_out, d_in))]`` of the seven projections of every layer.

    Parameters
    ----------
    shape : str or tuple
        A key of :data:`SHAPES` or ``(layers, hidden, intermediate, kv)``.
    layers : int, optional
        Keep only the first ``layers`` layers.
    """
    n, h, f, kv = SHAPES[shape] if isinstance(shape, str) else shape
    n = n if layers is None else min(n, layers)
    dims = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
            "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}
    out = []
    for i in range(n):
        for p in PROJ:
            part = "self_attn" if p in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out.append((f"model.layers.{i}.{part}.{p}", dims[p]))
    return out


def _bf16_bits(x):
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype("<u2")


def write_safetensors(path, specs, fill, *, metadata=None):
    """Write a bf16 safetensors file one tensor at a time.

    Parameters
    ----------
    path : str
    specs : list of (key, shape)
    fill : callable
        ``fill(index, key, shape)`` -> float32 array of that shape.
    metadata : dict of str, optional

    Returns
    -------
    int
        Bytes written.
    """
    header, off = {}, 0
    for key, shape in specs:
        n = 2 * math.prod(shape)
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for i, (key, shape) in enumerate(specs):
            fh.write(_bf16_bits(fill(i, key, shape)).tobytes())
    os.replace(tmp, path)
    return 8 + len(text) + off


def _gauss(seed, i, shape, std):
    rng = np.random.default_rng([seed, i])
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(std)
    return x


def adapter_nbytes(shape, r, *, layers=None):
    """Bytes of the bf16 factors of a rank-r adapter on all seven projections."""
    return sum(2 * r * (o + i) for _, (o, i) in module_shapes(shape, layers=layers))


def _spec_ok(folder, spec):
    try:
        with open(os.path.join(folder, "benchmark_spec.json")) as fh:
            return json.load(fh) == spec
    except (OSError, ValueError):
        return False


def _mark(folder, spec):
    with open(os.path.join(folder, "benchmark_spec.json"), "w") as fh:
        json.dump(spec, fh)


def write_peft_adapter(folder, shape, r, *, seed=0, layers=None, alpha=None):
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors, bf16).

    Reused when ``folder`` already holds one written with the same arguments.

    Returns
    -------
    str
        The folder.
    """
    spec = {"kind": "peft", "shape": list(SHAPES[shape]) if isinstance(shape, str) else list(shape),
            "r": r, "seed": seed, "layers": layers, "alpha": alpha, "version": 1}
    if _spec_ok(folder, spec):
        return folder
    os.makedirs(folder, exist_ok=True)
    specs = []
    for name, (d_out, d_in) in module_shapes(shape, layers=layers):
        specs.append((f"base_model.model.{name}.lora_A.weight", (r, d_in)))
        specs.append((f"base_model.model.{name}.lora_B.weight", (d_out, r)))

    def fill(i, key, shp):
        return _gauss(seed, i, shp, 1 / math.sqrt(shp[1]) if key.endswith("lora_A.weight") else 0.02)

    write_safetensors(os.path.join(folder, "adapter_model.safetensors"), specs, fill,
                      metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha or 2 * r,
           "lora_dropout": 0.0, "target_modules": list(PROJ), "bias": "none", "use_rslora": False,
           "fan_in_fan_out": False, "base_model_name_or_path": f"synthetic/llama-{shape}-shaped"}
    with open(os.path.join(folder, "adapter_config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    _mark(folder, spec)
    return folder


def write_sharded_base(folder, shape, *, layers, shards=2, seed=0):
    """A sharded HF base (``model-0000i-of-0000n.safetensors`` + index), bf16, first ``layers`` layers.

    Returns
    -------
    (str, list of str, int)
        The folder, the module names, and the bytes of their weights.
    """
    mods = module_shapes(shape, layers=layers)
    names = [n for n, _ in mods]
    nbytes = sum(2 * o * i for _, (o, i) in mods)
    spec = {"kind": "base", "shape": list(SHAPES[shape]) if isinstance(shape, str) else list(shape),
            "layers": layers, "shards": shards, "seed": seed, "version": 1}
    if _spec_ok(folder, spec):
        return folder, names, nbytes
    os.makedirs(folder, exist_ok=True)
    per = math.ceil(len(mods) / shards)
    weight_map = {}
    for s in range(shards):
        chunk = mods[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        specs = [(n + ".weight", shp) for n, shp in chunk]
        write_safetensors(os.path.join(folder, fname), specs,
                          lambda i, key, shp, s=s: _gauss(seed + 1000 * (s + 1), i, shp, 0.02),
                          metadata={"format": "pt"})
        weight_map.update({k: fname for k, _ in specs})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": nbytes}, "weight_map": weight_map}, fh, indent=1)
    _mark(folder, spec)
    return folder, names, nbytes
