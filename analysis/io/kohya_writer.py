"""Write low-rank updates as a kohya sd-scripts LoRA / LoCon ``.safetensors`` file.

Keys keep the source's style (``lora_unet_…``, ``lora_te_…``, ``lycoris_…``)::

    <name>.lora_down.weight   (k, d_in)          or (k, c_in, kh, kw) for a conv
    <name>.lora_up.weight     (d_out, k)         or (c_out, k, 1, 1)
    <name>.alpha              ()                 alpha = scale · k, so that alpha / k is the scale

which sd-scripts (``networks.lora``) and lycoris-lora (LoCon) merge as ``W += up @ down · alpha / k``.
A LoHa or LoKr module truncated to rank k is a plain rank-k LoRA and is written as one. The file is
written whole or not at all (a temporary file renamed into place), float32 (or the ``dtype`` asked for), with
the source's ``ss_*`` header entries and what tools read back updated as sd-scripts' own ``resize_lora.py``
does: ``ss_network_dim`` (the rank, or ``"Dynamic"`` when modules differ), ``ss_network_alpha`` (the alpha,
or ``"Dynamic"``), ``ss_training_comment`` (what was done, before the source's comment) and the model hashes
``sshs_model_hash`` / ``sshs_legacy_hash`` (sd-webui-additional-networks', computed as
``library.train_util.precalculate_safetensors_hashes`` does: over the file as serialised with only the ``ss_*``
entries).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.core.adapter import natural_key
from analysis.errors import AdapterError, InputError
from analysis.io.base import open_base
from analysis.io.kohya import read_metadata
from analysis.io.outputs import atomic_output, check_target

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    from numpy.typing import DTypeLike

    from analysis.core.adapter import Adapter
    from analysis.core.lowrank import LowRank
    from analysis.io.base import BaseWeights

__all__ = ["write_kohya_file", "kohya_factors", "kohya_header", "addnet_hashes", "source_header", "flattened_shapes"]

_DTYPES = {"float32": np.float32, "float16": np.float16}


def kohya_factors(name: str, lr: LowRank, weight_shape: Sequence[int] | None = None, *,
                  dtype: DTypeLike = np.float32) -> dict[str, np.ndarray]:
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
        In ``dtype`` (float32 or float16; bfloat16 is not a numpy dtype).
    """
    A = np.ascontiguousarray(lr.lora_A, dtype=dtype)  # (k, d_in)
    B = np.ascontiguousarray(lr.lora_B, dtype=dtype)  # (d_out, k)
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
    # ignored: LowRank.scale is Optional; a None scale raises here as before (write_kohya_file checks it first)
    return {f"{name}.lora_down.weight": A, f"{name}.lora_up.weight": B,
            f"{name}.alpha": np.asarray(float(lr.scale) * k, dtype=dtype)}  # type: ignore[arg-type]


def flattened_shapes(modules: Mapping[str, LowRank], base: str | os.PathLike[str] | BaseWeights | None, *,
                     path: str | None = None) -> dict[str, tuple[int, ...]]:
    """Layer weight shapes, read from ``base``, of LyCORIS LoHa / LoKr modules whose factors are stored flattened.

    Parameters
    ----------
    modules : Mapping[str, LowRank]
        kohya module name -> update as read.
    base : str, os.PathLike, BaseWeights or None
        The base model.
    path : str, optional
        The source, for messages.

    Returns
    -------
    dict[str, tuple]
        Only for those modules (their files do not say whether the layer is a convolution).

    Raises
    ------
    AdapterError
        Such modules and no base.
    """
    flat = [n for n, lr in modules.items() if lr.meta.get("algo") in ("loha", "lokr") and lr.weight_shape is None]
    if not flat:
        return {}
    if base is None:
        raise AdapterError(f"{len(flat)} LyCORIS LoHa / LoKr module(s) store their factors flattened, so the file "
                           "does not say whether the layer is a convolution; pass the base model (--base) to "
                           "write them with their layer's shape", path=path, key=flat[0])

    if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
        with open_base(base) as bw:
            return {name: tuple(W.shape) for name, W in bw.weights(flat)}
    return {name: tuple(W.shape) for name, W in base.weights(flat)}


def source_header(adapter: Adapter) -> dict[str, Any]:
    """The whole header of a kohya source file (every ``ss_*`` entry is carried into a written file).

    The reader keeps only a few entries in ``adapter.config``; sd-scripts' resize carries them all.
    """
    import os

    path = str(getattr(adapter, "path", "") or "")
    header = read_metadata(path) if path.endswith(".safetensors") and os.path.isfile(path) else {}
    return {**dict(getattr(adapter, "config", None) or {}), **header}


def addnet_hashes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> tuple[str, str]:
    """sd-webui-additional-networks' ``(sshs_model_hash, sshs_legacy_hash)`` of a file, as sd-scripts computes them.

    Parameters
    ----------
    tensors : Mapping[str, ndarray]
    metadata : Mapping[str, str]
        Only the ``ss_*`` entries count (the others may change without changing the model).

    Returns
    -------
    tuple of str
        SHA-256 of the bytes after the header; the first 8 hex digits of the SHA-256 of the 64 KiB at 1 MiB.
    """
    import hashlib

    from safetensors.numpy import save

    data = save(dict(tensors), metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n:]).hexdigest(), hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def _number(x):
    return str(float(x))


def kohya_header(metadata: Mapping[str, Any] | None, ranks: Mapping[str, int], alphas: Mapping[str, float], *,
                 comment: str | None = None, dynamic: bool = False) -> dict[str, str]:
    """The header of a written kohya file: the source's ``ss_*`` entries, updated to describe the result.

    Parameters
    ----------
    metadata : Mapping[str, str] or None
        The source's header.
    ranks, alphas : Mapping[str, int / float]
        Per module, the rank k and the alpha written.
    comment : str, optional
        What was done; put before the source's ``ss_training_comment`` (as sd-scripts' resize does).
    dynamic : bool
        Ranks chosen per module by a criterion: ``ss_network_dim`` and ``ss_network_alpha`` are ``"Dynamic"``
        whatever the ranks came out as (sd-scripts' resize with ``--dynamic_method``).

    Returns
    -------
    dict[str, str]
        Without the hashes (:func:`addnet_hashes` adds them over the final tensors).
    """
    header = {k: str(v) for k, v in dict(metadata or {}).items() if k.startswith("ss_")}
    dims, alps = set(ranks.values()), {float(np.float32(a)) for a in alphas.values()}
    header["ss_network_dim"] = str(dims.pop()) if len(dims) == 1 and not dynamic else "Dynamic"
    header["ss_network_alpha"] = _number(alps.pop()) if len(alps) == 1 and not dynamic else "Dynamic"
    header["ss_network_module"] = header.get("ss_network_module", "networks.lora")
    if comment:
        old = header.get("ss_training_comment", "")
        header["ss_training_comment"] = f"{comment}; {old}" if old and old != "None" else comment
    return header


def write_kohya_file(out: str | os.PathLike[str], modules: Mapping[str, LowRank], *,
                     metadata: Mapping[str, Any] | None = None, force: bool = False,
                     shapes: Mapping[str, Sequence[int]] | None = None, comment: str | None = None,
                     dtype: str = "float32", dynamic: bool = False) -> dict[str, Any]:
    """Save updates as one kohya ``.safetensors`` file.

    Parameters
    ----------
    out : str or os.PathLike
        The file to create (``.safetensors``).
    modules : Mapping[str, LowRank]
        kohya module name -> update (rank ≥ 1, scale known).
    metadata : Mapping[str, str], optional
        The source's header (``ss_*`` entries are carried over).
    force : bool
        Replace an existing file.
    shapes : Mapping[str, tuple], optional
        Layer weight shapes (from the base) for modules whose LowRank does not know its kernel.
    comment : str, optional
        What was done (``ss_training_comment``, before the source's).
    dtype : {"float32", "float16"}
        The tensors' dtype (sd-scripts' ``--save_precision float|fp16``).
    dynamic : bool
        ``ss_network_dim`` / ``ss_network_alpha`` ``"Dynamic"`` (ranks chosen per module by a criterion).

    Returns
    -------
    dict
        What was written: ``format`` ("kohya"), ``r`` (the most common rank), ``rank_pattern`` (the
        modules of another rank), ``lora_alpha`` (None: alpha is stored per module), ``modules``, ``header``
        (the file's metadata) and ``bytes`` (its size).

    Raises
    ------
    AdapterError
        ``out`` exists without ``force``, a scale is unknown, or a value does not fit float32.
    """
    from safetensors.numpy import save

    out = str(out)
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {tuple(_DTYPES)}, got {dtype!r}")
    if not out.endswith(".safetensors"):
        raise AdapterError("expected a .safetensors file name for a kohya adapter", path=out)
    if not modules:
        raise AdapterError("no module to write", path=out)
    check_target(out, force=force)
    tensors, ranks, alphas = {}, {}, {}
    for name in sorted(modules, key=natural_key):
        lr = modules[name]
        if lr.scale is None or not math.isfinite(lr.scale):
            raise AdapterError(f"expected a known scale, got {lr.scale}", path=out, key=name)
        for key, arr in kohya_factors(name, lr, (shapes or {}).get(name), dtype=_DTYPES[dtype]).items():
            if not np.isfinite(arr).all():
                raise AdapterError(f"the factors do not fit {dtype}; nothing was written", path=out, key=key)
            tensors[key] = arr
        ranks[name], alphas[name] = lr.r, float(tensors[f"{name}.alpha"])
    counts = Counter(ranks.values())
    r0 = max(counts, key=lambda k: (counts[k], k))
    header = kohya_header(metadata, ranks, alphas, comment=comment, dynamic=dynamic)
    header["sshs_model_hash"], header["sshs_legacy_hash"] = addnet_hashes(tensors, header)
    data = save(tensors, metadata=header)
    with atomic_output(out, force=force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return {"format": "kohya", "r": int(r0), "rank_pattern": {n: r for n, r in ranks.items() if r != r0},
            "lora_alpha": None, "modules": len(ranks), "header": header, "bytes": len(data)}
