"""Write low-rank updates as a kohya sd-scripts LoRA / LoCon ``.safetensors`` file.

Keys keep the source's style (``lora_unet_…``, ``lora_te_…``, ``lycoris_…``)::

    <name>.lora_down.weight   (k, d_in)          or (k, c_in, kh, kw) for a conv
    <name>.lora_up.weight     (d_out, k)         or (c_out, k, 1, 1)
    <name>.alpha              ()                 alpha = scale · k, so that alpha / k is the scale

which sd-scripts (``networks.lora``) and lycoris-lora (LoCon) merge as ``W += up @ down · alpha / k``.
A LoHa or LoKr module truncated to rank k is a plain rank-k LoRA and is written as one. The file is
written whole or not at all (a temporary file renamed into place), float32, with the source's ``ss_*``
header entries and ``ss_network_dim`` / ``ss_network_alpha`` describing the result.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from analysis.core.adapter import natural_key
from analysis.errors import AdapterError
from analysis.io.outputs import atomic_output, check_target

__all__ = ["write_kohya_file", "kohya_factors"]


def kohya_factors(name, lr, weight_shape=None):
    """kohya's tensors for one update: ``{key: array}`` (float32).

    Parameters
    ----------
    name : str
        The kohya module name (``lora_unet_…``).
    lr : LowRank
        ``kind`` linear or conv (``weight_shape`` (out, in, *kernel)).
    weight_shape : tuple of int, optional
        The layer's weight shape when ``lr`` does not know it (a LyCORIS LoHa / LoKr conv stored
        flattened): a kernel of more than 2 dimensions is written as a conv.

    Returns
    -------
    dict[str, ndarray]
    """
    A = np.ascontiguousarray(lr.lora_A, dtype=np.float32)  # (k, d_in)
    B = np.ascontiguousarray(lr.lora_B, dtype=np.float32)  # (d_out, k)
    k = A.shape[0]
    ws = tuple(lr.weight_shape) if lr.kind == "conv" and lr.weight_shape is not None else (
        tuple(weight_shape) if weight_shape is not None and len(weight_shape) > 2 else None)
    if ws is not None:
        if (ws[0], int(np.prod(ws[1:]))) != lr.shape:
            raise AdapterError(f"expected a layer of {lr.shape[0]} × {lr.shape[1]} (ΔW), got weight shape {ws}",
                               key=name)
        A = A.reshape(k, *ws[1:])  # (k, c_in, kh, kw)
        B = B.reshape(ws[0], k, *([1] * (len(ws) - 2)))  # (c_out, k, 1, 1)
    elif lr.kind not in ("linear", "conv"):
        raise AdapterError(f"expected a linear or conv update to write as kohya, got kind {lr.kind!r}", key=name)
    return {f"{name}.lora_down.weight": A, f"{name}.lora_up.weight": B,
            f"{name}.alpha": np.asarray(float(lr.scale) * k, dtype=np.float32)}


def write_kohya_file(out, modules, *, metadata=None, overwrite=False, shapes=None):
    """Save updates as one kohya ``.safetensors`` file.

    Parameters
    ----------
    out : str or os.PathLike
        The file to create (``.safetensors``).
    modules : Mapping[str, LowRank]
        kohya module name -> update (rank ≥ 1, scale known).
    metadata : Mapping[str, str], optional
        The source's header (``ss_*`` entries are carried over).
    overwrite : bool
        Replace an existing file.
    shapes : Mapping[str, tuple], optional
        Layer weight shapes (from the base) for modules whose LowRank does not know its kernel.

    Returns
    -------
    dict
        What was written: ``format`` ("kohya"), ``r`` (the most common rank), ``rank_pattern`` (the
        modules of another rank), ``lora_alpha`` (None: alpha is stored per module), ``modules``.

    Raises
    ------
    AdapterError
        ``out`` exists without ``overwrite``, a scale is unknown, or a value does not fit float32.
    """
    from safetensors.numpy import save

    out = str(out)
    if not out.endswith(".safetensors"):
        raise AdapterError("expected a .safetensors file name for a kohya adapter", path=out)
    if not modules:
        raise AdapterError("no module to write", path=out)
    check_target(out, force=overwrite)
    tensors, ranks = {}, {}
    for name in sorted(modules, key=natural_key):
        lr = modules[name]
        if lr.scale is None or not math.isfinite(lr.scale):
            raise AdapterError(f"expected a known scale, got {lr.scale}", path=out, key=name)
        for key, arr in kohya_factors(name, lr, (shapes or {}).get(name)).items():
            if not np.isfinite(arr).all():
                raise AdapterError("the factors do not fit float32; nothing was written", path=out, key=key)
            tensors[key] = arr
        ranks[name] = lr.r
    counts = Counter(ranks.values())
    r0 = max(counts, key=lambda k: (counts[k], k))
    header = {k: str(v) for k, v in dict(metadata or {}).items() if k.startswith("ss_")}
    header.update(ss_network_dim=str(r0), ss_network_module=header.get("ss_network_module", "networks.lora"))
    header.pop("ss_network_alpha", None)  # alpha is per module (alpha = scale · k)
    with atomic_output(out, force=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(save(tensors, metadata=header))
    return {"format": "kohya", "r": int(r0), "rank_pattern": {n: r for n, r in ranks.items() if r != r0},
            "lora_alpha": None, "modules": len(ranks)}
