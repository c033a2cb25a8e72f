"""Write low-rank updates as a PEFT LoRA adapter that PEFT itself loads.

The folder gets ``adapter_model.safetensors`` (float32) and
``adapter_config.json``. One global ``lora_alpha`` is written; every module's
rank goes into ``r`` (the most common one) or ``rank_pattern``, so PEFT's
scale ``lora_alpha / r_module`` must equal each module's ``LowRank.scale``
(the surgery functions build factors that way, see
:func:`analysis.core.truncate.from_svd`). ``target_modules`` is the exact list of
module names, so PEFT adapts exactly these modules and no others.

Rank-pattern keys follow PEFT's ``get_pattern_key``: a key ``p`` matches a
module name ``n`` when ``re.match(rf"(.*\\.)?({p})$", n)``; the key written
for a module is its shortest dotted suffix (starting at a non-numeric
component, e.g. ``layers.3.self_attn.q_proj``) that matches no other written
module, which older PEFT releases (``.*\\.{p}$``) also match.

Tensors saved beside the factors (``modules_to_save`` heads, trainable tokens, biases, embedding layers)
are the caller's to give (``extra_tensors``): a config that makes PEFT load such tensors
(:func:`saved_fields`) is refused without them, since ``PeftModel.from_pretrained`` would fail
(``KeyError: 'base_model.model.classifier.weight'``) or silently keep the base's.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import natural_key
from analysis.errors import AdapterError, InputError
from analysis.io.outputs import atomic_output, check_target, target_type
from analysis.io.peft_config import pattern_matches

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from analysis.core.lowrank import LowRank

__all__ = ["write_peft_adapter", "pattern_keys", "peft_factors", "saved_fields", "CONFIG_NAME", "WEIGHTS_NAME",
           "HEAD_TASK_TYPES"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."
#: Config fields the writer sets itself (they describe the factors it writes); the rest is carried over.
_LORA_FIELDS = frozenset({"peft_type", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern",
                          "fan_in_fan_out", "use_rslora", "use_dora", "init_lora_weights", "lora_bias",
                          "exclude_modules"})


#: Task types whose PeftModel class adds its head to ``modules_to_save`` when it loads (PEFT 0.21:
#: ``classifier`` / ``score``, ``qa_outputs``), so the file must hold the head.
HEAD_TASK_TYPES = frozenset({"SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"})


def saved_fields(config: Mapping[str, Any]) -> dict[str, object]:
    """The fields of an adapter config that make PEFT load tensors saved beside the LoRA factors.

    Parameters
    ----------
    config : Mapping
        An ``adapter_config.json``.

    Returns
    -------
    dict[str, object]
        Those of ``task_type`` (one of :data:`HEAD_TASK_TYPES`), ``modules_to_save`` (non-empty),
        ``trainable_token_indices`` (set) and ``bias`` (not ``"none"``) that are present; empty when PEFT
        loads the factors only.

    Examples
    --------
    >>> saved_fields({"task_type": "CAUSAL_LM", "modules_to_save": None, "bias": "none"})
    {}
    >>> saved_fields({"task_type": "SEQ_CLS", "modules_to_save": ["classifier"]})
    {'task_type': 'SEQ_CLS', 'modules_to_save': ['classifier']}
    """
    cfg = dict(config or {})
    out = {}
    if cfg.get("task_type") in HEAD_TASK_TYPES:
        out["task_type"] = cfg["task_type"]
    for key in ("modules_to_save", "trainable_token_indices"):
        if cfg.get(key):
            out[key] = cfg[key]
    if cfg.get("bias") not in (None, "none"):
        out["bias"] = cfg["bias"]
    return out


def _check_saved(config, extra_tensors, out):
    """Refuse a config that makes PEFT load saved tensors when the caller gave none (``extra_tensors=None``)."""
    fields = saved_fields(config)
    if fields and extra_tensors is None:
        what = ", ".join(f"{k} = {v!r}" for k, v in fields.items())
        raise AdapterError(f"expected the tensors saved beside the factors (extra_tensors) for a config with {what}: "
                           "PeftModel.from_pretrained would fail (KeyError) or keep the base's modules; pass the "
                           "source's tensors, or {} to state that it has none", path=out)


def _matches(key, name):
    try:
        return pattern_matches(key, name)
    except re.error:  # a name that is no valid regular expression as it stands: never used as a key
        return False


def pattern_keys(names: Iterable[str]) -> dict[str, str]:
    """A short PEFT ``rank_pattern`` key for each module name.

    Parameters
    ----------
    names : iterable of str
        Dotted module names in the base model (``model.layers.3.self_attn.q_proj``).

    Returns
    -------
    dict[str, str]
        ``name -> key`` such that, under PEFT's rule, ``key`` matches ``name``
        and none of the other names.

    Examples
    --------
    >>> pattern_keys(["model.layers.1.self_attn.q_proj", "model.layers.11.self_attn.q_proj"])
    {'model.layers.1.self_attn.q_proj': 'layers.1.self_attn.q_proj', 'model.layers.11.self_attn.q_proj': 'layers.11.self_attn.q_proj'}
    """
    names = list(names)
    out = {}
    for name in names:
        parts = name.split(".")
        chosen = name
        # shortest suffix first; keep at least one component before it when possible
        for start in range(len(parts) - 1, 0, -1):
            if parts[start].isdigit():
                continue
            key = ".".join(parts[start:])
            if _matches(key, name) and not any(_matches(key, o) for o in names if o != name):
                chosen = key
                break
        out[name] = chosen if _matches(chosen, name) else re.escape(name)
    return out


def peft_factors(lr: LowRank) -> dict[str, np.ndarray]:
    """PEFT's saved tensors for one update: ``{suffix: array}``.

    Parameters
    ----------
    lr : LowRank
        ``kind`` linear (also fan_in_fan_out / merged: one update of the whole
        weight), conv or embedding.

    Returns
    -------
    dict[str, ndarray]
        Linear: ``lora_A.weight`` (r, d_in), ``lora_B.weight`` (d_out, r).
        Conv: ``lora_A.weight`` (r, c_in, *kernel), ``lora_B.weight``
        (c_out, r, 1, …). Embedding: ``lora_embedding_A`` (r, num_embeddings),
        ``lora_embedding_B`` (embedding_dim, r).
    """
    A = np.ascontiguousarray(lr.lora_A, dtype=np.float32)  # (r, d_in)
    B = np.ascontiguousarray(lr.lora_B, dtype=np.float32)  # (d_out, r)
    r = A.shape[0]
    if lr.kind in ("linear", "merged"):
        return {"lora_A.weight": A, "lora_B.weight": B}
    if lr.kind == "conv":
        if lr.weight_shape is None:
            raise InputError(f"module {lr.name!r}: a convolution update needs its kernel's weight_shape "
                             "(out, in, *kernel) to be written as PEFT factors; pass weight_shape= to LowRank")
        ws = tuple(lr.weight_shape)
        return {"lora_A.weight": A.reshape(r, *ws[1:]),
                "lora_B.weight": B.reshape(ws[0], r, *([1] * (len(ws) - 2)))}
    if lr.kind == "embedding":
        # PEFT: ΔW = (B_e A_e)ᵀ s with A_e (r, num_emb), B_e (emb_dim, r); here ΔW = lora_B lora_A
        return {"lora_embedding_A": np.ascontiguousarray(B.T), "lora_embedding_B": np.ascontiguousarray(A.T)}
    raise ValueError(f"cannot write a LowRank of kind {lr.kind!r}")


def _fan_in_fan_out(modules, out):
    flags = {bool(lr.meta.get("fan_in_fan_out")) for lr in modules.values() if lr.kind in ("linear", "merged")}
    if len(flags) > 1:
        raise AdapterError("expected all linear modules to share one orientation, got both nn.Linear and "
                           "fan_in_fan_out (Conv1D) modules; PEFT's config has one fan_in_fan_out flag: "
                           "write them as two adapters", path=out)
    return flags.pop() if flags else False


def write_peft_adapter(out: str | os.PathLike[str], modules: Mapping[str, LowRank], *, lora_alpha: float,
                       base_model_name_or_path: str | None = None, task_type: str | None = None,
                       force: bool = False, config: Mapping[str, Any] | None = None,
                       extra_tensors: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Save updates as a PEFT LoRA adapter folder.

    Parameters
    ----------
    out : str or os.PathLike
        Folder to create (or reuse when empty / ``force``).
    modules : Mapping[str, LowRank]
        Module name in the base model -> update, each with rank ≥ 1 and
        ``scale == lora_alpha / r`` (PEFT's scale for that module).
    lora_alpha : float
        The single α written to the config.
    base_model_name_or_path, task_type : str, optional
        Copied into the config (e.g. from the source adapter).
    force : bool
        Replace an existing adapter in ``out``.
    config : Mapping, optional
        The source adapter's ``adapter_config.json``: every field that does not describe the LoRA factors
        (``task_type``, ``modules_to_save``, ``base_model_name_or_path``, ``layers_to_transform`` …) is carried
        over unchanged, so PEFT loads the result as it loaded the source.
    extra_tensors : Mapping[str, ndarray], optional
        Tensors of the source that are not LoRA factors (``modules_to_save`` heads …), written as they are.
        Required (``{}`` if there are none) when the config written makes PEFT load such tensors
        (:func:`saved_fields`: a ``SEQ_CLS`` / ``TOKEN_CLS`` / ``QUESTION_ANS`` task type,
        ``modules_to_save``, ``trainable_token_indices``, ``bias`` other than ``"none"``).

    Returns
    -------
    dict
        The config written.

    Raises
    ------
    AdapterError
        ``out`` already holds an adapter, modules mix orientations, a
        module's scale is not ``lora_alpha / r``, or the config makes PEFT
        load saved tensors and ``extra_tensors`` is None.
    """
    from safetensors.numpy import save

    out = Path(out)
    alpha = float(lora_alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise InputError(f"lora_alpha must be a positive number, got {lora_alpha!r}")
    if not modules:
        raise AdapterError("no module to write", path=out)
    if out.exists() and not out.is_dir() and target_type(out) == "path":  # the null device discards a folder
        raise AdapterError("expected a folder to write the adapter into, got an existing file", path=out)
    check_target(out, force=force)
    fan = _fan_in_fan_out(modules, out)
    tensors, ranks = {}, {}
    for name, lr in modules.items():
        r = lr.r
        if r < 1:
            raise AdapterError(f"expected rank >= 1 (PEFT cannot load r = 0), got lora_A {lr.lora_A.shape}",
                               path=out, key=name)
        if lr.scale is None or not math.isclose(lr.scale, alpha / r, rel_tol=1e-9):
            raise AdapterError(f"expected scale lora_alpha / r = {alpha:g} / {r} = {alpha / r:.6g}, got "
                               f"{lr.scale}; rebuild the factors with analysis.core.truncate.from_svd",
                               path=out, key=name)
        for suffix, arr in peft_factors(lr).items():
            if not np.isfinite(arr).all():
                raise AdapterError(f"the factors of ΔW (largest singular value {lr.singular_values()[0]:.3g}) do not "
                                   f"fit float32 (largest {np.finfo(np.float32).max:.3g}); nothing was written",
                                   path=out, key=name)
            tensors[f"{_PREFIX}{name}.{suffix}"] = arr
        ranks[name] = r
    counts = Counter(ranks.values())
    r0 = max(counts, key=lambda k: (counts[k], k))
    keys = pattern_keys(ranks)
    rank_pattern = {keys[n]: r for n, r in ranks.items() if r != r0}
    carried = {k: v for k, v in dict(config or {}).items() if k not in _LORA_FIELDS}
    config = {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
        "lora_dropout": 0.0, "bias": "none", "inference_mode": True, "modules_to_save": None, "revision": None,
        **carried,
        "r": int(r0), "lora_alpha": alpha if not alpha.is_integer() else int(alpha),
        "target_modules": sorted(modules, key=natural_key), "rank_pattern": rank_pattern, "alpha_pattern": {},
        "fan_in_fan_out": fan, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
    }
    _check_saved(config, extra_tensors, out)
    for key, arr in dict(extra_tensors or {}).items():
        if key in tensors:
            raise AdapterError("expected a tensor that is not a LoRA factor, got one the writer makes", path=out,
                               key=key)
        tensors[key] = np.ascontiguousarray(arr)
    with atomic_output(out, force=force, folder=True) as tmp:  # the whole adapter, or nothing
        with open(os.path.join(tmp, WEIGHTS_NAME), "wb") as fh:  # Python's open: any file name the OS allows
            fh.write(save(tensors, metadata={"format": "pt"}))
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
            fh.write("\n")
    return config
