"""Per-layer / per-block weights for an adapter's modules: a list, a ``key=weight`` map or a named preset.

Positions come from the roles table (:func:`analysis.io.roles.module_role`: stack, layer index, role), so one
spelling works for every architecture it knows. A module's update is multiplied by its weight (the writers put
it into ``lora_B``; ``lora_A`` and α are unchanged, because PEFT's single ``lora_alpha`` cannot carry a
per-module factor); weight 0 leaves the module out.

list (``"1,1,0.5,0"`` or a sequence of numbers)
    One weight per layer index, for every stack with that many layers (modules outside the layers keep 1).
    For kohya Stable Diffusion files (``lora_unet_…`` / ``lora_te…`` names), a list of 12, 17, 20 or 26 numbers
    is instead sd-scripts' LoRA-block-weight vector (``networks/svd_merge_lora.py --lbws``): its values go to
    the blocks that length selects among BASE (text encoder), IN00–IN11, MID and OUT00–OUT11; 12 and 20 mean
    SDXL, whose blocks are numbered after ``input_blocks`` / ``output_blocks``.
map (``"10-19=0.5,decoder:3=0,attention=1.2,*=1"`` or a dict)
    keys: a layer index or range (any stack), ``stack:layer`` (``decoder:3``, ``text_encoder:0-5``), a stack
    (``decoder``, ``text_encoder``, ``unet_down`` …), a role (``q``, ``k``, ``v``, ``o``, ``up``, ``gate``,
    ``down``, or ``attention`` / ``mlp`` / ``cross``), a block of the block-weight vector (``IN04``, ``MID``,
    ``OUT03``, ``BASE``) and ``*`` for the rest. The most specific key wins (stack:layer, then a layer or a
    block, then a role, then a stack, then ``*``); between equals the last one given.
preset
    ``first-half`` / ``second-half`` (1 on the first / second half of each stack's layers, 0 on the others),
    ``ramp-up`` ((l + 1) / L) / ``ramp-down`` ((L − l) / L), ``attention-only`` / ``mlp-only``,
    ``unet-only`` / ``text-encoder-only``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from analysis.errors import InputError
from analysis.io.roles import module_role

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = ["PRESETS", "LBW_LENGTHS", "layer_weights", "lbw_block_index"]

PRESETS = ("first-half", "second-half", "ramp-up", "ramp-down", "attention-only", "mlp-only", "unet-only",
           "text-encoder-only")
#: Lengths of sd-scripts' block-weight vectors (12 and 20: SDXL).
LBW_LENGTHS = (12, 17, 20, 26)
_BLOCKS = ("BASE", *(f"IN{i:02d}" for i in range(12)), "MID", *(f"OUT{i:02d}" for i in range(12)))
# which of the 26 blocks each length sets (sd-scripts' LAYER12 / 17 / 20 / 26 tables)
_TARGETS = {
    12: ("BASE", "IN04", "IN05", "IN07", "IN08", "MID", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"),
    17: ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID", "OUT03", "OUT04", "OUT05", "OUT06",
         "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"),
    20: ("BASE", *(f"IN{i:02d}" for i in range(9)), "MID", *(f"OUT{i:02d}" for i in range(9))),
    26: _BLOCKS,
}
_ROLE_GROUPS = {"attention": ("q", "k", "v", "o", "qkv"), "mlp": ("up", "gate", "gate_up", "down"),
                "cross": ("cross_q", "cross_k", "cross_v", "cross_o")}
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
_KOHYA_SD = re.compile(r"^lora_(unet|te\d?)_")


def lbw_block_index(name: str, *, sdxl: bool = False) -> int:
    """The block (index into BASE, IN00–IN11, MID, OUT00–OUT11) of a kohya SD module name; -1 for none.

    sd-scripts' ``get_lbw_block_index``: the text encoder is BASE (0); SD 1/2 names go by
    ``down_blocks_i_{resnets,attentions}_j`` (IN 3i + j + 1), ``down_blocks_i_downsamplers`` (IN 3(i + 1)),
    ``mid_block`` (MID), ``up_blocks_i_{resnets,attentions}_j`` (OUT 3i + j) and ``up_blocks_i_upsamplers``
    (OUT 3i + 2); SDXL names by ``input_blocks_N`` (IN N), ``middle_block`` (MID), ``output_blocks_N`` (OUT N).
    """
    if "text_model_encoder_" in name:
        return 0
    if not sdxl:
        m = _UPDOWN.search(name)
        if m:
            updown, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            if kind in ("resnets", "attentions"):
                idx = 3 * i + j + (1 if updown == "down" else 0)
            elif kind == "downsamplers" and updown == "down":
                idx = 3 * (i + 1)
            elif kind == "upsamplers" and updown == "up":
                idx = 3 * i + 2
            else:
                return -1
            return 1 + idx if updown == "down" else 1 + 12 + 1 + idx
        return 1 + 12 if "mid_block_" in name else -1
    if not name.startswith("lora_unet_"):
        return -1
    rest = name[len("lora_unet_"):]
    if rest.startswith(("time_embed_", "label_emb_")):
        return 1
    if rest.startswith("input_blocks_"):
        return 1 + int(rest.split("_")[2])
    if rest.startswith("middle_block_"):
        return 13
    if rest.startswith("output_blocks_"):
        return 14 + int(rest.split("_")[2])
    return 23 if rest.startswith("out_") else -1


def _number(text, spec):
    try:
        x = float(text)
    except ValueError:
        raise InputError(f"--layer-weights: expected a number, got {text!r} in {spec!r}") from None
    if not math.isfinite(x):
        raise InputError(f"--layer-weights: expected a finite number, got {text!r} in {spec!r}")
    return x


def _parse(spec):
    """``("list", [w…])``, ``("map", [(key, w)…])`` or ``("preset", name)``."""
    if isinstance(spec, dict):
        return "map", [(str(k), float(v)) for k, v in spec.items()]
    if not isinstance(spec, str):
        return "list", [float(x) for x in spec]
    text = spec.strip().strip("[]")
    if text.lower() in PRESETS:
        return "preset", text.lower()
    parts = [p.strip() for p in re.split(r"[,\s]+", text) if p.strip()]
    if not parts:
        raise InputError(f"--layer-weights: expected a list, a key=weight map or one of {PRESETS}, got {spec!r}")
    if all("=" in p for p in parts):
        return "map", [(p.split("=", 1)[0].strip(), _number(p.split("=", 1)[1], spec)) for p in parts]
    if any("=" in p for p in parts):
        raise InputError(f"--layer-weights: expected either numbers or key=weight entries, not both, got {spec!r}")
    try:
        return "list", [_number(p, spec) for p in parts]
    except ValueError:
        raise InputError(f"--layer-weights: expected a list of numbers, a key=weight map or one of {PRESETS}, "
                         f"got {spec!r}") from None


def _depths(positions):
    """stack -> number of layers (max index + 1)."""
    out = {}
    for p in positions.values():
        if p.layer is not None:
            out[p.stack] = max(out.get(p.stack, 0), p.layer + 1)
    return out


def _from_list(values, positions, kohya):
    if kohya and len(values) in LBW_LENGTHS:
        sdxl = len(values) in (12, 20)
        blocks = dict(zip(_TARGETS[len(values)], values))
        return {n: blocks.get(_BLOCKS[i], 1.0) if (i := lbw_block_index(n, sdxl=sdxl)) >= 0 else 1.0
                for n in positions}, f"sd-scripts block weights ({len(values)} values{', SDXL' if sdxl else ''})"
    depths = _depths(positions)
    if not depths:
        raise InputError("--layer-weights: a list gives one weight per layer, but no module has a layer index; "
                         "use a key=weight map")
    bad = {s: d for s, d in depths.items() if d != len(values)}
    if bad:
        have = ", ".join(f"{s or 'layers'}: {d}" for s, d in depths.items())
        lbw = f" (or {LBW_LENGTHS} block weights for kohya SD files)" if kohya else ""
        raise InputError(f"--layer-weights: expected one weight per layer ({have}){lbw}, got {len(values)} values; "
                         "use stack:layer=weight entries for stacks of different depths")
    return {n: values[p.layer] if p.layer is not None else 1.0 for n, p in positions.items()}, \
        f"one weight per layer ({len(values)})"


def _layers(text):
    if re.fullmatch(r"\d+", text):
        return range(int(text), int(text) + 1)
    m = re.fullmatch(r"(\d+)-(\d+)", text)
    return range(int(m.group(1)), int(m.group(2)) + 1) if m else None


def _norm(stack):
    return stack.lower().replace(" ", "_").replace("-", "_")


def _matches(key, name, p, sdxl):
    """Specificity (higher wins) with which ``key`` matches the module, or None."""
    if key == "*":
        return 0
    if ":" in key:
        stack, _, layers = key.partition(":")
        rng = _layers(layers.strip())
        if rng is None:
            raise InputError(f"--layer-weights: expected stack:layer or stack:first-last, got {key!r}")
        return 4 if _norm(stack) == _norm(p.stack) and p.layer in rng else None
    rng = _layers(key)
    if rng is not None:
        return 3 if p.layer in rng else None
    if key.upper() in _BLOCKS:
        i = lbw_block_index(name, sdxl=sdxl)
        return 3 if i >= 0 and _BLOCKS[i] == key.upper() else None
    if key in _ROLE_GROUPS or key in {r for g in _ROLE_GROUPS.values() for r in g} | {"embedding", "other"}:
        return 2 if p.role in _ROLE_GROUPS.get(key, (key,)) else None
    return 1 if _norm(key) == _norm(p.stack) else None


def _from_map(entries, positions, sdxl):
    known = {_norm(p.stack) for p in positions.values()}
    for key, _ in entries:
        k = key.split(":")[0]
        if key != "*" and ":" in key and _norm(k) not in known:
            raise InputError(f"--layer-weights: no stack {k!r} in this adapter (stacks: "
                             f"{', '.join(sorted(s or repr('') for s in known))})")
    out = {}
    for n, p in positions.items():
        best, w = -1, 1.0
        for key, value in entries:
            s = _matches(key, n, p, sdxl)
            if s is not None and s >= best:
                best, w = s, value
        out[n] = w
    for key, _ in entries:
        if not any(_matches(key, n, p, sdxl) is not None for n, p in positions.items()):
            raise InputError(f"--layer-weights: the key {key!r} matches no module of this adapter")
    return out, f"{len(entries)} key=weight entries"


def _from_preset(name, positions):
    depths = _depths(positions)
    out = {}
    for n, p in positions.items():
        L, l = depths.get(p.stack), p.layer
        if name in ("first-half", "second-half", "ramp-up", "ramp-down") and l is None:
            w = 1.0
        elif name == "first-half":
            w = 1.0 if l < L / 2 else 0.0
        elif name == "second-half":
            w = 1.0 if l >= L / 2 else 0.0
        elif name == "ramp-up":
            w = (l + 1) / L
        elif name == "ramp-down":
            w = (L - l) / L
        elif name in ("attention-only", "mlp-only"):
            group = _ROLE_GROUPS["attention"] + _ROLE_GROUPS["cross"] if name == "attention-only" else \
                _ROLE_GROUPS["mlp"]
            w = 1.0 if p.role in group else 0.0
        else:
            te = p.stack.startswith("text_encoder")
            w = 1.0 if te == (name == "text-encoder-only") else 0.0
        out[n] = w
    return out, f"preset {name}"


def layer_weights(spec: str | Sequence[float] | Mapping[str, float],
                  names: Iterable[str]) -> tuple[dict[str, float], str]:
    """The weight of every module under a layer-weight spec.

    Parameters
    ----------
    spec : str, sequence of float or Mapping[str, float]
        See the module docstring.
    names : iterable of str
        The adapter's module names.

    Returns
    -------
    (dict[str, float], str)
        Module -> weight, and the spec in words.

    Raises
    ------
    ValueError
        A spec that cannot be read, a list of the wrong length, a key or stack that matches nothing.
    """
    positions = {n: module_role(n) for n in names}
    kind, value = _parse(spec)
    kohya = bool(positions) and all(_KOHYA_SD.match(n) for n in positions)
    sdxl = any("input_blocks_" in n or "output_blocks_" in n or "middle_block_" in n for n in positions)
    if kind == "list":
        return _from_list(value, positions, kohya)
    if kind == "map":
        return _from_map(value, positions, sdxl)
    return _from_preset(value, positions)
