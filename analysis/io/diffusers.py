"""diffusers LoRA files (``pytorch_lora_weights.safetensors``, ``save_lora_weights``).

Keys carry the pipeline component as a prefix (``unet.``, ``transformer.``, ``text_encoder.``,
``text_encoder_2.``, ``text_encoder_3.``, ``prior.``) and one of diffusers' factor layouts::

    <component>.<module>.lora_A.weight / lora_B.weight                   PEFT layout (transformers, SD3, Flux)
    <component>.<module>.lora.down.weight / lora.up.weight               convert_state_dict_to_diffusers
    <component>.<module>.lora_linear_layer.down.weight / .up.weight      text encoders, older releases
    <component>.<attn>.processor.to_q_lora.down.weight / .up.weight      attention processors (to_out → to_out.0)

``down`` is lora_A (r, in[, kh, kw]) and ``up`` lora_B (out, r[, 1, 1]); a conv is flattened to
(out, in · kh · kw) as everywhere. The scale follows diffusers: the LoRA config saved in the header
(``__metadata__["lora_adapter_metadata"]``, PEFT's LoraConfig with keys ``<component>.r`` …: α / r per
module by PEFT's rank / alpha pattern rule), else ``<module>.alpha`` tensors (α / r), else α = r (scale 1,
as diffusers loads such files). Module names drop the component prefix when the file holds one component
(so they are the component's own tensor names: ``down_blocks.0.….to_q``) and keep it otherwise.
DoRA modules (``lora_magnitude_vector``) are read as their directional part, as in :mod:`analysis.io.peft`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter
from analysis.core.lowrank import LowRank
from analysis.errors import AdapterError
from analysis.io.kohya import read_metadata
from analysis.io.peft_config import parse_settings

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable
    from typing import Any

__all__ = ["COMPONENTS", "is_diffusers_keys", "load_diffusers"]

COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "prior")
_METADATA_KEY = "lora_adapter_metadata"
_PART_RE = re.compile(
    r"^(?P<component>" + "|".join(COMPONENTS) + r")\.(?P<module>.+?)\."
    r"(?:(?P<peft>lora_A|lora_B)\.weight|(?:lora|lora_linear_layer)\.(?P<ud>down|up)\.weight"
    r"|(?P<alpha>alpha)|(?P<mag>lora_magnitude_vector))$")
_PROC_RE = re.compile(r"^(?P<component>" + "|".join(COMPONENTS) + r")\.(?P<attn>.+)\.processor\."
                      r"(?P<proj>to_q|to_k|to_v|to_out|add_q_proj|add_k_proj|add_v_proj)_lora\.(?P<ud>down|up)\.weight$")


def _split(key):
    """``(component, module, role)`` of a diffusers LoRA key, or None."""
    p = _PROC_RE.match(key)
    if p is not None:  # attention-processor LoRA: …attn1.processor.to_out_lora -> …attn1.to_out.0
        module = f"{p['attn']}.{p['proj']}" + (".0" if p["proj"] == "to_out" else "")
        return p["component"], module, "A" if p["ud"] == "down" else "B"
    m = _PART_RE.match(key)
    if m is None:
        return None
    module = m["module"]
    if m["peft"]:
        role = "A" if m["peft"] == "lora_A" else "B"
    elif m["ud"]:
        role = "A" if m["ud"] == "down" else "B"
    else:
        role = "alpha" if m["alpha"] else "magnitude"
    return m["component"], module, role


def is_diffusers_keys(keys: Iterable[str], path: str | os.PathLike[str] | None = None) -> bool:
    """True when the keys are a diffusers LoRA file's (component prefix and a LoRA factor layout).

    ``transformer.<module>.lora_A.weight`` is also what a PEFT state dict of a GPT-2-like model
    (``transformer.h.0…``) saved without PEFT's prefix looks like: such keys count as diffusers only when
    ``path`` is diffusers' ``pytorch_lora_weights.safetensors`` or its header holds diffusers' LoRA config.
    """
    ambiguous = False
    for k in keys:
        split = _split(k)
        if split is None or split[2] in ("alpha", "magnitude"):
            continue
        if split[0] != "transformer" or not k.endswith((".lora_A.weight", ".lora_B.weight")):
            return True
        ambiguous = True
    if not ambiguous or path is None:
        return False
    from pathlib import Path

    return Path(path).name == "pytorch_lora_weights.safetensors" or _metadata(path) is not None


def _metadata(path):
    raw = read_metadata(path).get(_METADATA_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise AdapterError("expected a JSON object in the header, got text that is not JSON", path=path,
                           key=_METADATA_KEY) from None
    if not isinstance(meta, dict):
        raise AdapterError(f"expected a JSON object in the header, got {type(meta).__name__}", path=path,
                           key=_METADATA_KEY)
    return meta


def _factors(name, roles, source):
    (a_key, A), (b_key, B) = roles["A"], roles["B"]
    if A.ndim not in (2, 4) or B.ndim != A.ndim:
        raise AdapterError(f"expected down (r, in) and up (out, r), or 4-D for a conv, got {tuple(A.shape)} and "
                           f"{tuple(B.shape)}", path=source, key=b_key)
    r = A.shape[0]
    if B.shape[1] != r or (B.ndim == 4 and tuple(B.shape[2:]) != (1, 1)):
        raise AdapterError(f"expected up of shape (out, {r}{', 1, 1' if B.ndim == 4 else ''}) with r = {r} = rows of "
                           f"'{a_key}' {tuple(A.shape)}, got {tuple(B.shape)}", path=source, key=b_key)
    if A.ndim == 2:
        return A, B, "linear", None
    return A.reshape(r, -1), B.reshape(B.shape[0], r), "conv", (B.shape[0], *A.shape[1:])


def load_diffusers(path: str | os.PathLike[str], tensors: dict[str, np.ndarray], *, alpha: float | None = None,
                   **options: Any) -> Adapter:
    """Read a diffusers LoRA file.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.safetensors`` (or ``.bin``) file.
    tensors : dict[str, ndarray]
        Its validated tensors.
    alpha : float, optional
        Scale numerator for files with neither header config nor ``alpha`` tensors (default: α = r).

    Returns
    -------
    Adapter
        ``format="diffusers"``; each module's ``meta`` has ``component``, ``r``, ``alpha``, ``alpha_source``.

    Raises
    ------
    AdapterError
        Unpaired factors, shape or rank mismatches, a bad header config.
    UnsupportedAdapterError
        (an AdapterError) What the header config refuses (see :func:`~analysis.io.peft_config.parse_settings`).
    """
    if options:
        raise AdapterError(f"option(s) {sorted(options)} do not apply to a diffusers file (accepted: alpha)",
                           path=path)
    source = str(path)
    groups: dict[tuple[str, str], dict[str, tuple[str, np.ndarray]]]
    groups, other = {}, []
    for key, arr in tensors.items():
        split = _split(key)
        if split is None:
            other.append(key)
            continue
        comp, module, role = split
        roles = groups.setdefault((comp, module), {})
        if role in roles:
            raise AdapterError(f"expected one {role} factor for module '{comp}.{module}', got it also under "
                               f"'{roles[role][0]}'", path=source, key=key)
        roles[role] = (key, arr)
    comps = sorted({c for c, _ in groups})
    meta_all = _metadata(path)
    settings = {}
    if meta_all is not None:
        for comp in comps:
            cfg = {k.removeprefix(comp + "."): v for k, v in meta_all.items() if k.startswith(comp + ".")}
            settings[comp] = parse_settings(cfg, f"{source} [{_METADATA_KEY} {comp}.*]") if cfg else None
    modules, counts = {}, {"metadata": 0, "tensor": 0, "default": 0, "argument": 0}
    for (comp, module), roles in sorted(groups.items()):
        name = module if len(comps) == 1 else f"{comp}.{module}"
        if "A" not in roles or "B" not in roles:
            have, miss = ("down", "up") if "A" in roles else (("up", "down") if "B" in roles else ("alpha", "down"))
            raise AdapterError(f"{have} without {miss} for module '{comp}.{module}'", path=source,
                               key=next(iter(roles.values()))[0])
        A, B, kind, shape = _factors(name, roles, source)
        r = A.shape[0]
        st = settings.get(comp)
        if st is not None:
            cr, a, _, _ = st.rank_alpha(module)
            if cr != r:
                raise AdapterError(f"expected rank {cr} ({_METADATA_KEY} {comp}.r / rank_pattern), got shape "
                                   f"{tuple(roles['A'][1].shape)}", path=source, key=roles["A"][0])
            scale, where = st.scale(r, a), "metadata"
        elif "alpha" in roles:
            a = float(np.asarray(roles["alpha"][1]).reshape(-1)[0])
            scale, where = a / r, "tensor"
        elif alpha is not None:
            a, scale, where = float(alpha), float(alpha) / r, "argument"
        else:
            a, scale, where = float(r), 1.0, "default"
        counts[where] += 1
        meta = {"format": "diffusers", "component": comp, "r": r, "alpha": a, "alpha_source": where,
                "keys": (roles["A"][0], roles["B"][0])}
        if "magnitude" in roles:  # DoRA: ΔW is the directional part (analysis.io.dora for W' − W)
            m_key, m = roles["magnitude"]
            if m.size != B.shape[0]:
                raise AdapterError(f"expected a DoRA magnitude of shape ({B.shape[0]},) (one per output row), got "
                                   f"{tuple(m.shape)}", path=source, key=m_key)
            meta.update(dora=True, magnitude=np.asarray(m, dtype=np.float64).reshape(-1),
                        update="directional part s·B·A (DoRA)")
        modules[name] = LowRank(A, B, scale, name=name, source=source, kind=kind, weight_shape=shape, meta=meta)
    if not modules:
        raise AdapterError("expected diffusers LoRA keys (<component>.<module>.lora_A.weight or .lora.down.weight), "
                           "got none", path=source)
    notes = [f"diffusers LoRA of {', '.join(comps)}"
             + (": module names are the component's own" if len(comps) == 1 else
                ": module names keep the component prefix (several components in one file)")]
    if counts["default"]:
        notes.append(f"{counts['default']} module(s) without a header config or alpha: α = r (scale 1), as diffusers "
                     "loads them")
    if other:
        notes.append(f"ignored {len(other)} key(s) that are not LoRA factors, e.g. {other[0]}")
    return Adapter(modules, path=path, format="diffusers", config=meta_all or {}, notes=notes)
