"""Reader for kohya sd-scripts and LyCORIS files (LoRA, LoCon, LoHa, LoKr).

Keys are ``<prefix>_<module_path_with_underscores>.<part>`` with prefixes
``lora_unet_``, ``lora_te_``, ``lora_te1_``, ``lora_te2_``, ``lora_te3_``
(sd-scripts, LyCORIS's kohya wrapper) or ``lycoris_`` (LyCORIS's own wrapper),
and parts

- LoRA / LoCon: ``lora_down.weight`` (r, in[, kh, kw]), ``lora_up.weight``
  (out, r[, 1, 1]), with LyCORIS's Tucker convs also ``lora_mid.weight``
  (r, r, kh, kw);
- LoHa: ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (Tucker:
  ``hada_t1``, ``hada_t2``); LoKr: ``lokr_w1`` or ``lokr_w1_a``/``lokr_w1_b``,
  ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b`` (Tucker: ``lokr_t2``);
  see :mod:`analysis.io.lycoris` for their exact factored forms;
- ``alpha`` (a scalar). A missing alpha, or alpha = 0, means alpha = r (scale 1).

LoRA: sd-scripts merges ``W += up @ down · alpha / r``. A k×k conv (LoCon
``conv_dim``) has ``down`` (r, in, kh, kw) and ``up`` (out, r, 1, 1), and
sd-scripts' merge ``conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)``
equals ``up (out, r) @ down.reshape(r, in·kh·kw)``: an exact rank-r
factorisation of the kernel flattened to (out, in·kh·kw), as PEFT flattens conv
weights. A Tucker conv ``up · mid · down`` is flattened the same way (exact, rank r).

LoHa / LoKr scale as LyCORIS applies it (``module.get_weight``, the update its
wrapped layer really adds): ``alpha / r`` with r the rows of ``hada_w1_b``
(LoHa) or the columns of ``lokr_w1_a`` / ``lokr_w2_a`` (LoKr); 1 for a LoKr
whose two halves are both full. (lycoris-lora 4.1.3's ``get_diff_weight``
applies that scale twice; the layer's output does not.)

Module names are kept as written (``lora_unet_…_proj_in``): the underscore
form cannot be mapped back to the dotted name of the base module without the
base itself (``down_blocks_0`` and ``to_out_0`` contain underscores of their
own); a base model resolves them (:func:`analysis.io.base.kohya_candidates`,
used by every base reader), so ``--base``, ``intruders`` and ``resize`` work
on these files.

DoRA modules (``dora_scale``, LyCORIS's ``dora_wd``) are read as their
directional part ΔW, with the magnitude in ``meta["magnitude"]`` and the norm's
axis in ``meta["dora_norm"]``; the effective update needs the base
(:mod:`analysis.io.dora`). Refused, with the reason: LyCORIS OFT / BOFT, GLoRA,
(IA)³, full and norm updates (see :data:`analysis.io.lycoris.LYCORIS_REFUSED`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter
from analysis.core.lowrank import LowRank
from analysis.errors import AdapterError, UnsupportedAdapterError
from analysis.io.lycoris import (LOHA_PARTS, LOKR_PARTS, LYCORIS_REFUSED, loha_lowrank, lokr_lowrank,
                                 lycoris_kind, lycoris_rank)
from analysis.core.products import tucker_factors

if TYPE_CHECKING:
    import os
    from typing import Any

__all__ = ["load_kohya", "read_metadata", "split_kohya_key", "KOHYA_PREFIXES"]

KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "te1", "lora_te2_": "te2", "lora_te3_": "te3",
                  "lora_te_": "te", "lycoris_": "lycoris"}
_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_META_KEYS = ("ss_network_dim", "ss_network_alpha", "ss_network_module", "ss_network_args",
              "ss_base_model_version", "ss_v2")
#: part (after the module name) -> role
_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "alpha": "alpha",
          "dora_scale": "dora_scale",
          **{p: p for p in LOHA_PARTS + LOKR_PARTS}, **{p + ".weight": p for p in LOHA_PARTS + LOKR_PARTS}}


def split_kohya_key(key: str) -> tuple[str, str] | None:
    """``(module, role)`` of a kohya / LyCORIS key, or None when it is not one.

    >>> split_kohya_key("lora_unet_mid_block_attentions_0_proj_in.lora_down.weight")
    ('lora_unet_mid_block_attentions_0_proj_in', 'down')
    >>> split_kohya_key("lycoris_q.hada_w1_a")
    ('lycoris_q', 'hada_w1_a')
    """
    for part, role in _ROLES.items():
        if key.endswith("." + part):
            return key[: -len(part) - 1], role
    return None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (``{}`` for other files).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict[str, str]
    """
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        msg = " ".join(str(e).split())[:200]
        raise AdapterError(f"cannot read the safetensors header metadata: {msg}", path=path) from None


def _refusal(key):
    """The reason a key's LyCORIS algorithm is not read, or None."""
    last = key.split(".", 1)[1] if "." in key else ""
    for marker, why in LYCORIS_REFUSED.items():
        if last == marker or last.startswith(marker + "."):
            return why
    return None


def _group(tensors, path):
    """``{module: {role: key}}`` and the keys belonging to no module."""
    mods, other = {}, []
    for key in tensors:
        why = _refusal(key)
        if why is not None:
            raise UnsupportedAdapterError(why + " and is not supported", path=path, key=key)
        split = split_kohya_key(key)
        if split is None:
            other.append(key)
            continue
        name, role = split
        roles = mods.setdefault(name, {})
        if role in roles:
            raise AdapterError(f"expected one {role} tensor for module '{name}', got it also under '{roles[role]}'",
                               path=path, key=key)
        roles[role] = key
    for name, roles in sorted(mods.items()):
        if lycoris_kind(roles):
            continue
        if "down" not in roles or "up" not in roles:
            have = "lora_up" if "up" in roles else ("lora_down" if "down" in roles else
                                                    ("lora_mid" if "mid" in roles else "alpha"))
            miss = "lora_up" if "up" not in roles else "lora_down"
            raise AdapterError(f"{have} without {miss}: expected '{name}{_DOWN}' and '{name}{_UP}'",
                               path=path, key=roles.get("up") or roles.get("down") or roles.get("mid")
                               or roles["alpha"])
    return mods, other


def _dora(lr, key, m, path):
    """Mark a LyCORIS DoRA module (``dora_scale``): ΔW is its directional part, the magnitude in meta.

    LyCORIS merges ``W' = (W + ΔW) · m / (‖W + ΔW‖ + eps)`` (eps of the merge dtype) with the norm per output row
    (``dora_scale`` (out, 1, …), ``wd_on_output``) or per input channel (``(1, in, …)``).
    """
    shape = tuple(m.shape)
    d_out, d_in = lr.shape
    c_in = lr.weight_shape[1] if lr.weight_shape is not None else d_in
    if len(shape) >= 2 and shape[0] == d_out and all(s == 1 for s in shape[1:]):
        norm = "row"
    elif len(shape) >= 2 and shape[0] == 1 and all(s == 1 for s in shape[2:]) and (
            shape[1] == c_in or (lr.weight_shape is None and len(shape) > 2 and shape[1] and d_in % shape[1] == 0)):
        norm = "column"  # a flattened conv (LoHa / LoKr) tells its input channels by its dora_scale
    else:
        raise AdapterError(f"expected a DoRA scale of shape ({d_out}, 1…) (norm per output row) or (1, {c_in}, …) "
                           f"(per input channel), got {shape}", path=path, key=key)
    # LyCORIS adds the eps of the dtype it merges in to the norm (2e-16 in float64, 1e-7 in float32: at the
    # rounding level of that dtype); the exact form here leaves it out (meta["dora_eps"] = 0)
    lr.meta.update(dora=True, magnitude=np.asarray(m, dtype=np.float64).reshape(-1), dora_norm=norm, dora_eps=0.0,
                   update="directional part (DoRA: dora_scale)")


def _tucker(down, up, mid, path, roles):
    """LyCORIS LoCon's Tucker conv ``up · mid · down`` flattened: (r, in·kh·kw), (out, r), weight_shape."""
    r = mid.shape[0]
    if (down.ndim != 4 or up.ndim != 4 or mid.ndim != 4 or tuple(down.shape[2:]) != (1, 1)
            or tuple(up.shape[2:]) != (1, 1) or down.shape[0] != mid.shape[1] or up.shape[1] != r):
        raise AdapterError(f"expected lora_down (r, in, 1, 1), lora_mid (r, r, kh, kw) and lora_up (out, r, 1, 1), "
                           f"got {tuple(down.shape)}, {tuple(mid.shape)} and {tuple(up.shape)}", path=path,
                           key=roles["mid"])
    # W[p, q, k, l] = Σ_ij up[p, i] mid[i, j, k, l] down[j, q], in float64 (no rounding of its own)
    up, down, mid = (np.asarray(x, dtype=np.float64) for x in (up, down, mid))
    A, B = tucker_factors(mid, up.reshape(up.shape[0], r).T, down.reshape(down.shape[0], -1))
    return A, B, (up.shape[0], down.shape[1], *mid.shape[2:]), "conv"


def _factors(down, up, path, roles):
    """``(lora_A (r, in·kh·kw), lora_B (out, r), weight_shape, kind)`` from kohya's tensors."""
    if down.ndim not in (2, 4) or up.ndim != down.ndim:
        raise AdapterError(f"expected lora_down and lora_up both 2-D (linear) or both 4-D (conv), got "
                           f"lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)}",
                           path=path, key=roles["down"])
    r = down.shape[0]
    if up.shape[1] != r:
        raise AdapterError(f"rank mismatch: lora_down is {tuple(down.shape)} (r, in…) and lora_up is "
                           f"{tuple(up.shape)} (out, r…); expected lora_up.shape[1] == {r}",
                           path=path, key=roles["up"])
    if down.ndim == 2:
        return down, up, None, "linear"
    if tuple(up.shape[2:]) != (1, 1):
        raise AdapterError(f"expected a 1x1 lora_up (out, r, 1, 1), got {tuple(up.shape)}",
                           path=path, key=roles["up"])
    weight_shape = (up.shape[0], *down.shape[1:])  # (out, in, kh, kw)
    return down.reshape(r, -1), up.reshape(up.shape[0], r), weight_shape, "conv"


def _alpha(r, tensors, roles, alpha, path, counts):
    """(alpha, where it came from) following sd-scripts: missing or 0 means alpha = r."""
    if "alpha" in roles:
        a = tensors[roles["alpha"]]
        if a.size != 1:
            raise AdapterError(f"expected a scalar alpha, got shape {tuple(a.shape)}", path=path,
                               key=roles["alpha"])
        value = float(a.reshape(()))
        if value == 0.0:
            counts["zero"] += 1
            return float(r), "file (0 means alpha = r)"
        return value, "file"
    if alpha is not None:
        counts["argument"] += 1
        return float(alpha), "argument"
    counts["default"] += 1
    return float(r), "default (alpha = r)"


def _component(name):
    for prefix, comp in KOHYA_PREFIXES.items():
        if name.startswith(prefix):
            return comp
    return None


def load_kohya(path: str | os.PathLike[str], tensors: dict[str, np.ndarray], *, alpha: float | None = None,
               **options: Any) -> Adapter:
    """Read a kohya sd-scripts or LyCORIS file into an :class:`~analysis.core.adapter.Adapter`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.safetensors`` (or legacy ``.pt`` / ``.ckpt``) file.
    tensors : dict[str, ndarray]
        Its validated tensors from :func:`~analysis.io.tensors.read_tensors`.
    alpha : float, optional
        Used only for modules whose ``.alpha`` is missing from the file
        (otherwise sd-scripts' default alpha = r, scale 1, applies).

    Returns
    -------
    Adapter
        ``format="kohya"``, keyed by kohya's module names; ``config`` holds
        the ``ss_*`` header metadata. Each module's ``meta`` has ``algo``
        (lora, loha, lokr), ``r``, ``alpha``, ``alpha_source``, ``component``
        (unet, te, te1, te2, lycoris) and the ``ss_network_*`` entries present
        in the header.

    Raises
    ------
    AdapterError
        lora_up without lora_down (or the reverse), rank mismatch, bad shapes.
    UnsupportedAdapterError
        OFT, GLoRA, (IA)³, full or norm LyCORIS modules.
    """
    if options:
        raise AdapterError(f"option(s) {sorted(options)} do not apply to a kohya file (accepted: alpha)",
                           path=path)
    metadata = read_metadata(path)
    mods, other = _group(tensors, path)
    if not mods:
        raise AdapterError("no kohya keys ending in '.lora_down.weight' / '.lora_up.weight' (or LyCORIS "
                           "'.hada_w1_a' / '.lokr_w1' …)", path=path)
    header = {k: metadata[k] for k in _META_KEYS if k in metadata}
    counts = {"zero": 0, "argument": 0, "default": 0}
    out: dict[str, LowRank]
    algos: dict[str, int]
    out, algos = {}, {}
    for name, roles in sorted(mods.items()):
        algo = lycoris_kind(roles) or "lora"
        algos[algo] = algos.get(algo, 0) + 1
        if algo != "lora":
            parts = {role: (key, tensors[key]) for role, key in roles.items() if role not in ("alpha", "dora_scale")}
            r = lycoris_rank(parts)
            a, source = _alpha(r if r is not None else 1, tensors, roles, alpha, path, counts)
            scale = 1.0 if r is None else a / r  # LyCORIS: scale 1 for a LoKr of two full halves
            meta = {"format": "kohya", "alpha": a, "alpha_source": source, "component": _component(name),
                    **header}
            build = loha_lowrank if algo == "loha" else lokr_lowrank
            out[name] = build(name, parts, scale, path=str(path), meta=meta)
            if r is not None:
                out[name].meta["r"] = r  # type: ignore[index]  # the reader's own meta dict
            continue
        down, up = tensors[roles["down"]], tensors[roles["up"]]
        if "mid" in roles:
            lora_A, lora_B, weight_shape, kind = _tucker(down, up, tensors[roles["mid"]], path, roles)
        else:
            lora_A, lora_B, weight_shape, kind = _factors(down, up, path, roles)
        r = lora_A.shape[0]
        a, source = _alpha(r, tensors, roles, alpha, path, counts)
        meta = {"format": "kohya", "algo": "lora", "r": r, "alpha": a, "alpha_source": source,
                "component": _component(name), "tucker": "mid" in roles, **header}
        # ΔW (out, in·kh·kw) = (alpha / r) · lora_up (out, r) @ lora_down (r, in·kh·kw)
        out[name] = LowRank(lora_A, lora_B, a / r, name=name, source=str(path), kind=kind,
                            weight_shape=weight_shape, meta=meta)
    for name, roles in mods.items():
        if "dora_scale" in roles:
            _dora(out[name], roles["dora_scale"], tensors[roles["dora_scale"]], path)
    notes = ["module names are kohya's underscore names (e.g. lora_unet_..._proj_in): a base model "
             "resolves them to its dotted tensor names (--base, intruders, resize)"]
    if set(algos) - {"lora"}:
        notes.append("LyCORIS modules: " + ", ".join(f"{n} {k}" for k, n in sorted(algos.items()))
                     + "; LoHa read exactly as a rank ≤ r² face-splitting product, LoKr as the Kronecker "
                     "product of its halves' factors (rank = product of their ranks)")
    if counts["default"]:
        notes.append(f"{counts['default']} module(s) have no '.alpha': alpha = r (scale 1), as sd-scripts does")
    if counts["argument"]:
        notes.append(f"{counts['argument']} module(s) have no '.alpha': used alpha={alpha} from the caller")
    if counts["zero"]:
        notes.append(f"{counts['zero']} module(s) store alpha = 0, which sd-scripts reads as alpha = r")
    if alpha is not None and not counts["argument"]:
        notes.append(f"alpha={alpha} ignored: the file stores alpha for every module")
    if other:
        notes.append(f"ignored {len(other)} key(s) that are not lora_down/lora_up/alpha, e.g. {other[0]}")
    return Adapter(out, path=path, format="kohya", config=header, notes=notes)
