"""Reader for kohya sd-scripts LoRA files (``networks.lora``, LoCon conv layers).

Keys are ``<prefix>_<module_path_with_underscores>.lora_down.weight``
(r, in[, kh, kw]), ``….lora_up.weight`` (out, r[, 1, 1]) and ``….alpha``
(a scalar), with prefixes ``lora_unet_``, ``lora_te_``, ``lora_te1_``,
``lora_te2_``. sd-scripts merges ``W += up @ down · alpha / r``; a missing
``.alpha`` means alpha = r (scale 1), and so does alpha = 0.

Module names are kept as kohya writes them (``lora_unet_…_proj_in``): the
underscore form cannot be mapped back to the dotted name of the base module
without the base model itself (``down_blocks_0`` and ``to_out_0`` contain
underscores of their own), so the name is not guessed. Comparing two kohya
files works on these names directly.

Convolutions: a 1×1 conv is a plain matrix; a k×k conv (LoCon ``conv_dim``)
has ``down`` (r, in, kh, kw) and ``up`` (out, r, 1, 1), and sd-scripts'
merge ``conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)`` equals
``up (out, r) @ down.reshape(r, in·kh·kw)``: an exact rank-r factorisation of
the kernel flattened to (out, in·kh·kw), as PEFT flattens conv weights.

Refused: DoRA (``dora_scale``: the update is not s·B·A) and LyCORIS Tucker
convs (``lora_mid``); LoHa / LoKr are refused by the dispatcher.
"""

from __future__ import annotations

from pathlib import Path

from analysis.core.adapter import Adapter
from analysis.core.lowrank import LowRank
from analysis.errors import AdapterError, UnsupportedAdapterError

__all__ = ["load_kohya", "read_metadata", "KOHYA_PREFIXES"]

KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "te1", "lora_te2_": "te2", "lora_te3_": "te3",
                  "lora_te_": "te"}
_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_META_KEYS = ("ss_network_dim", "ss_network_alpha", "ss_network_module", "ss_network_args",
              "ss_base_model_version", "ss_v2")
_REFUSED = {"dora_scale": "DoRA (dora_scale): the update W' - W depends on W and is not s·B·A",
            "lora_mid": "LyCORIS Tucker conv (lora_mid): up · mid · down is not read here"}


def read_metadata(path):
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


def _group(tensors, path):
    """``{module: {"down"|"up"|"alpha": key}}`` and the keys belonging to no LoRA pair."""
    mods, other = {}, []
    for key in tensors:
        for marker, why in _REFUSED.items():
            if marker in key:
                raise UnsupportedAdapterError(why + " and is not supported", path=path, key=key)
        for suffix, role in ((_DOWN, "down"), (_UP, "up"), (_ALPHA, "alpha")):
            if key.endswith(suffix):
                mods.setdefault(key[: -len(suffix)], {})[role] = key
                break
        else:
            other.append(key)
    for name, roles in sorted(mods.items()):
        if "down" not in roles or "up" not in roles:
            have = "lora_up" if "up" in roles else ("lora_down" if "down" in roles else "alpha")
            miss = "lora_up" if "up" not in roles else "lora_down"
            raise AdapterError(f"{have} without {miss}: expected '{name}{_DOWN}' and '{name}{_UP}'",
                               path=path, key=roles.get("up") or roles.get("down") or roles["alpha"])
    return mods, other


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


def load_kohya(path, tensors, *, alpha=None, **options):
    """Read a kohya sd-scripts LoRA file into an :class:`~analysis.core.adapter.Adapter`.

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
        the ``ss_*`` header metadata. Each module's ``meta`` has ``r``,
        ``alpha``, ``alpha_source``, ``component`` (unet, te, te1, te2) and
        the ``ss_network_*`` entries present in the header.

    Raises
    ------
    AdapterError
        lora_up without lora_down (or the reverse), rank mismatch, bad shapes.
    UnsupportedAdapterError
        DoRA (``dora_scale``) or Tucker (``lora_mid``) keys.
    """
    if options:
        raise AdapterError(f"option(s) {sorted(options)} do not apply to a kohya file (accepted: alpha)",
                           path=path)
    metadata = read_metadata(path)
    mods, other = _group(tensors, path)
    if not mods:
        raise AdapterError("no kohya keys ending in '.lora_down.weight' / '.lora_up.weight'", path=path)
    header = {k: metadata[k] for k in _META_KEYS if k in metadata}
    counts = {"zero": 0, "argument": 0, "default": 0}
    out = {}
    for name, roles in sorted(mods.items()):
        down, up = tensors[roles["down"]], tensors[roles["up"]]
        lora_A, lora_B, weight_shape, kind = _factors(down, up, path, roles)
        r = lora_A.shape[0]
        a, source = _alpha(r, tensors, roles, alpha, path, counts)
        meta = {"format": "kohya", "r": r, "alpha": a, "alpha_source": source,
                "component": _component(name), **header}
        # ΔW (out, in·kh·kw) = (alpha / r) · lora_up (out, r) @ lora_down (r, in·kh·kw)
        out[name] = LowRank(lora_A, lora_B, a / r, name=name, source=str(path), kind=kind,
                            weight_shape=weight_shape, meta=meta)
    notes = ["module names are kohya's underscore names (e.g. lora_unet_..._proj_in): they cannot be "
             "mapped back to dotted base-model names without the base model"]
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
