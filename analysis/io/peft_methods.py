"""PEFT methods other than LoRA whose update has an exact factored form: LoHa, LoKr and VeRA.

Saved keys (adapter name dropped)::

    base_model.model.<module>.hada_w1_a / hada_w1_b / hada_w2_a / hada_w2_b [/ hada_t1 / hada_t2]    LOHA
    base_model.model.<module>.lokr_w1 | lokr_w1_a, lokr_w1_b ; lokr_w2 | lokr_w2_a, lokr_w2_b [, lokr_t2]  LOKR
    base_model.model.<module>.vera_lambda_b (d_out,), vera_lambda_d (r,)                            VERA
    base_model.vera_A (r, max d_in), base_model.vera_B (max d_out, r)   shared, frozen (save_projection)

Every module becomes a :class:`~analysis.core.LowRank` whose ``delta()`` equals PEFT's
``get_delta_weight`` (flattened to (d_out, d_in · ∏k) for a convolution):

- LoHa / LoKr: :mod:`analysis.io.lycoris`, scale ``alpha / r`` with r and α per module from
  ``rank_pattern`` / ``alpha_pattern`` (PEFT's pattern rule; PEFT keeps α / r even when both LoKr halves
  are full, unlike LyCORIS).
- VeRA: ``ΔW = (λ_b ⊙ B[:d_out]) (λ_d ⊙ A[:, :d_in])``, so ``lora_B = diag(λ_b) B[:d_out]`` (d_out, r) and
  ``lora_A = diag(λ_d) A[:, :d_in]`` (r, d_in), scale 1; transposed by PEFT for ``fan_in_fan_out``, kept in
  nn.Linear orientation here. The file does not store a layer's d_in: it is read as ``vera_A``'s width
  (the widest targeted layer, which is every layer's when the targets share their input width); a base
  model whose weight is narrower is refused by the one base-shape rule.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter
from analysis.core.lowrank import LowRank
from analysis.errors import AdapterError, UnsupportedAdapterError
from analysis.io.lycoris import LOHA_PARTS, LOKR_PARTS, loha_lowrank, lokr_lowrank, lycoris_kind
from analysis.io.peft_config import get_pattern_key

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable
    from pathlib import Path
    from typing import Any

__all__ = ["PEFT_METHODS", "load_peft_method", "add_part", "check_one_adapter", "key_module"]


def key_module(m: re.Match[str], names: set[str | None], adapter_name: str | None) -> str | None:
    """The module a matched PEFT tensor key belongs to, or None when the key is another adapter's.

    ``m`` has the groups ``module`` and ``adapter``; the adapter name is recorded in ``names`` (for
    :func:`check_one_adapter`). PEFT's prefix ``base_model.model.`` is dropped, and so are the ``base_layer``
    levels its wrappers put the original layer under (the base model has no such level).
    """
    names.add(m["adapter"])
    if adapter_name is not None and m["adapter"] not in (None, adapter_name):
        return None
    return ".".join(c for c in m["module"].removeprefix("base_model.model.").split(".") if c != "base_layer")


def add_part(groups: dict[str, dict[str, tuple[str, np.ndarray]]], module: str, part: str, key: str,
             arr: np.ndarray, *, source: str | os.PathLike[str]) -> None:
    """Record tensor ``key`` as ``part`` (``"lora_A"``, ``"hada_w1_a"`` …) of ``module`` in ``groups``.

    Raises
    ------
    AdapterError
        The module already has that part under another key (two adapters in one file).
    """
    parts = groups.setdefault(module, {})
    if part in parts:
        raise AdapterError(f"expected one {part} for module '{module}', got it also under "
                           f"'{parts[part][0]}'; pass adapter_name=", path=source, key=key)
    parts[part] = (key, arr)


def check_one_adapter(names: Iterable[str | None], adapter_name: str | None, *,
                      source: str | os.PathLike[str]) -> None:
    """Refuse keys of several named adapters in one file unless ``adapter_name`` picks one.

    ``names``: the adapter names seen in the keys (None for keys without one).
    """
    named = sorted(n for n in names if n is not None)
    if adapter_name is None and len(named) > 1:
        raise AdapterError(f"expected the keys of one adapter, got adapters {named}; pass adapter_name=",
                           path=source)

PEFT_METHODS = ("LOHA", "LOKR", "VERA")
_VERA_PARTS = ("vera_lambda_b", "vera_lambda_d")
_KEY_RE = re.compile(rf"^(?P<module>.+)\.(?P<part>{'|'.join(LOHA_PARTS + LOKR_PARTS + _VERA_PARTS)})"
                     r"(?:\.(?!weight$)(?P<adapter>[^.]+))?(?:\.weight)?$")
_SHARED_RE = re.compile(r"^(?:base_model\.)?(?P<part>vera_A|vera_B)(?:\.(?P<adapter>[^.]+))?$")


def _number(cfg, key, path, default, *, integer=False):
    v = cfg.get(key, default)
    v = default if v is None else v
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not np.isfinite(v) or (integer and v <= 0):
        want = "a positive integer" if integer else "a finite number"
        raise AdapterError(f"expected {want}, got {v!r}", path=path, key=key)
    return v


def _pattern(cfg, key, path):
    pat = cfg.get(key) or {}
    if not isinstance(pat, dict):
        raise AdapterError(f"expected an object mapping module patterns to values, got {pat!r}", path=path, key=key)
    return pat


def _group(tensors, source, adapter_name):
    """``({module: {part: (key, array)}}, {shared part: (key, array)}, ignored keys)``."""
    groups, shared, ignored, names = {}, {}, [], set()
    for key, arr in tensors.items():
        m = _SHARED_RE.match(key)
        if m is not None:
            names.add(m["adapter"])
            if adapter_name is None or m["adapter"] in (None, adapter_name):
                shared[m["part"]] = (key, arr)
            continue
        m = _KEY_RE.match(key)
        if m is None:
            ignored.append(key)
            continue
        module = key_module(m, names, adapter_name)
        if module is not None:
            add_part(groups, module, m["part"], key, arr, source=source)
    check_one_adapter(names, adapter_name, source=source)
    return groups, shared, ignored


def _vera_module(name, parts, shared, cfg, source, cfg_path):
    for p in _VERA_PARTS:
        if p not in parts:
            raise AdapterError(f"expected VeRA tensors vera_lambda_b and vera_lambda_d for '{name}', got no {p}",
                               path=source, key=next(iter(parts.values()))[0])
    (bk, lam_b), (dk, lam_d) = parts["vera_lambda_b"], parts["vera_lambda_d"]
    (ak, A), (Bk, B) = shared["vera_A"], shared["vera_B"]
    r = A.shape[0]
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != r:
        raise AdapterError(f"expected vera_A (r, d_in) and vera_B (d_out, r), got {tuple(A.shape)} and "
                           f"{tuple(B.shape)}", path=source, key=Bk)
    if lam_d.reshape(-1).shape[0] != r or lam_d.size != r:
        raise AdapterError(f"expected vera_lambda_d of shape ({r},) (the rows of vera_A), got {tuple(lam_d.shape)}",
                           path=source, key=dk)
    d_out = lam_b.size
    if lam_b.ndim != 1 or d_out > B.shape[0]:
        raise AdapterError(f"expected vera_lambda_b of shape (d_out,) with d_out ≤ {B.shape[0]} (the rows of "
                           f"vera_B), got {tuple(lam_b.shape)}", path=source, key=bk)
    if cfg.get("r") is not None and cfg["r"] != r:
        raise AdapterError(f"expected rank {cfg['r']} ({cfg_path.name} r), got vera_A of shape {tuple(A.shape)}",
                           path=source, key=ak)
    lam_b = np.asarray(lam_b, dtype=np.float64)
    lam_d = np.asarray(lam_d, dtype=np.float64).reshape(r)
    lora_B = lam_b[:, None] * np.asarray(B[:d_out], dtype=np.float64)  # (d_out, r): diag(λ_b) B[:d_out]
    lora_A = lam_d[:, None] * np.asarray(A, dtype=np.float64)  # (r, d_in): diag(λ_d) A
    fan = bool(cfg.get("fan_in_fan_out"))
    shape = (A.shape[1], d_out) if fan else (d_out, A.shape[1])
    meta = {"format": "peft", "peft_type": "VERA", "algo": "vera", "r": r, "keys": (dk, bk, ak, Bk),
            "fan_in_fan_out": fan, "d_in": "width of vera_A"}
    return LowRank(lora_A, lora_B, 1.0, name=name, source=source, kind="linear", weight_shape=shape, meta=meta)


def load_peft_method(path: str | os.PathLike[str], weights: Path, cfg: dict[str, Any], cfg_path: Path,
                     tensors: dict[str, np.ndarray], *, adapter_name: str | None = None) -> Adapter:
    """Read a PEFT LoHa, LoKr or VeRA adapter.

    Parameters
    ----------
    path : str or os.PathLike
        The adapter as the caller named it (recorded in the Adapter).
    weights : Path
        The weights file (named in errors).
    cfg : dict
        Its ``adapter_config.json``, with ``peft_type`` in :data:`PEFT_METHODS`.
    cfg_path : Path
    tensors : dict[str, ndarray]
        The validated tensors of ``weights``.
    adapter_name : str, optional
        Select one adapter when the keys still carry adapter names.

    Returns
    -------
    Adapter
        ``format="peft"``; module names as in the base model; each module's ``meta`` has ``peft_type``
        and ``algo`` (loha, lokr, vera).

    Raises
    ------
    AdapterError
        Missing or mismatched tensors, ranks not matching the config.
    UnsupportedAdapterError
        VeRA saved without its projections (``save_projection=False``).
    """
    peft_type = str(cfg.get("peft_type")).upper()
    source = str(weights)
    groups, shared, ignored = _group(tensors, source, adapter_name)
    if not groups:
        sample = ", ".join(list(tensors)[:3]) or "none"
        raise AdapterError(f"expected {peft_type} tensors for the peft_type of {cfg_path.name}, got none; first "
                           f"keys: {sample}", path=source)
    notes = []
    modules = {}
    if peft_type == "VERA":
        if "vera_A" not in shared or "vera_B" not in shared:
            raise UnsupportedAdapterError(
                "VeRA adapter saved without its shared projections vera_A / vera_B (save_projection = false): "
                "PEFT regenerates them from projection_prng_key with torch's generator; re-save with "
                "save_projection=True", path=source, key=next(iter(groups.values()))["vera_lambda_d"][0]
                if "vera_lambda_d" in next(iter(groups.values())) else None)
        for name in sorted(groups):
            modules[name] = _vera_module(name, groups[name], shared, cfg, source, cfg_path)
        notes.append("VeRA: ΔW = diag(λ_b) B diag(λ_d) A with the shared frozen vera_A, vera_B; d_in is read as "
                     f"vera_A's width {shared['vera_A'][1].shape[1]} (a layer's own width is not stored)")
    else:
        r0 = _number(cfg, "r", cfg_path, 8, integer=True)
        alpha0 = _number(cfg, "alpha", cfg_path, 8)
        rank_pattern, alpha_pattern = _pattern(cfg, "rank_pattern", cfg_path), _pattern(cfg, "alpha_pattern", cfg_path)
        want = "loha" if peft_type == "LOHA" else "lokr"
        for name in sorted(groups):
            parts = groups[name]
            kind = lycoris_kind(parts)
            if kind != want:
                raise AdapterError(f"expected {peft_type} tensors for module '{name}' (peft_type in "
                                   f"{cfg_path.name}), got {sorted(parts)}", path=source,
                                   key=next(iter(parts.values()))[0])
            r_key = get_pattern_key(rank_pattern, name, str(cfg_path), "rank_pattern")
            a_key = get_pattern_key(alpha_pattern, name, str(cfg_path), "alpha_pattern")
            r, alpha = rank_pattern.get(r_key, r0), float(alpha_pattern.get(a_key, alpha0))
            stored = parts["hada_w1_b"][1].shape[0] if "hada_w1_b" in parts else None
            if stored is not None and stored != r:
                raise AdapterError(f"expected rank {r} ({cfg_path.name}), got hada_w1_b of shape "
                                   f"{tuple(parts['hada_w1_b'][1].shape)}", path=source, key=parts["hada_w1_b"][0])
            meta = {"format": "peft", "peft_type": peft_type, "alpha": alpha}
            build = loha_lowrank if want == "loha" else lokr_lowrank
            modules[name] = build(name, parts, alpha / r, path=source, meta=meta)
            modules[name].meta["r"] = r
        notes.append("LoHa: ΔW = (α/r)·(w1_a w1_b) ⊙ (w2_a w2_b), read exactly as a rank ≤ r² face-splitting "
                     "product" if want == "loha" else "LoKr: ΔW = (α/r)·kron(W1, W2), read exactly as the Kronecker "
                     "product of the halves' factors (rank = rank W1 · rank W2)")
    if ignored:
        notes.append(f"ignored {len(ignored)} tensors that are not {peft_type} factors (e.g. "
                     f"{', '.join(ignored[:3])})")
    return Adapter(modules, path=str(path), format="peft", config=cfg, notes=notes)
