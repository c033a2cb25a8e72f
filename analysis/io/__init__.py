"""Readers: every checkpoint format becomes an :class:`~analysis.core.adapter.Adapter`.

The format is sniffed from the path: a PEFT folder (``adapter_config.json``),
a PEFT adapter in a named subfolder, or a single file whose keys tell the
format (PEFT ``…lora_A.weight``, loralib ``…lora_A``, kohya ``…lora_down.weight``,
LyCORIS ``…hada_w1_a`` / ``…lokr_w1``, diffusers ``unet.…lora.down.weight``); a
Hugging Face repo id is looked up in the local cache (:mod:`analysis.io.hub`).
Every format quirk is settled here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import AdapterError
from analysis.io import kohya, loralib, peft
from analysis.io.diffusers import is_diffusers_keys, load_diffusers
from analysis.io.hub import is_repo_id, resolve_repo
from analysis.io.tensors import TENSOR_SUFFIXES, read_tensors

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from analysis.core.adapter import Adapter

__all__ = ["load_adapter", "sniff_format"]

_LYCORIS_MARKERS = ("hada_w1_a", "hada_w2_a", "lokr_w1", "lokr_w2", ".oft_", "oft_blocks", "lokr_t")


def sniff_format(keys: Iterable[str], path: str | os.PathLike[str] | None = None) -> str:
    """Name the checkpoint format from its tensor keys.

    Parameters
    ----------
    keys : iterable of str
    path : str or os.PathLike, optional
        The file, when keys alone are ambiguous (diffusers ``transformer.…lora_A.weight``).

    Returns
    -------
    {"peft", "loralib", "kohya", "lycoris", "diffusers", "unknown"}
    """
    keys = list(keys)
    if any(any(m in k for m in _LYCORIS_MARKERS) for k in keys):
        return "lycoris"

    if is_diffusers_keys(keys, path):
        return "diffusers"
    if any(".lora_down." in k or k.endswith(".lora_down.weight") for k in keys):
        return "kohya"
    if any(k.endswith((".lora_A.weight", ".lora_B.weight")) or ".lora_A." in k or "lora_embedding_A" in k
           or "lora_magnitude_vector" in k or k.endswith(".lora_E") for k in keys):  # lora_E: AdaLoRA
        return "peft"
    if any(k.endswith(("lora_A", "lora_B")) for k in keys):
        return "loralib"
    return "unknown"


def _pick_file(folder: Path) -> Path:
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in TENSOR_SUFFIXES)
    if not files:
        entries = list(folder.iterdir())
        what = "the folder is empty" if not entries else (
            "no adapter_config.json and no checkpoint file (" + ", ".join(TENSOR_SUFFIXES) + ") in it")
        raise AdapterError(f"not a LoRA checkpoint: {what}", path=folder)
    if len(files) > 1:
        raise AdapterError(
            "several checkpoint files and no adapter_config.json; pass one file: "
            + ", ".join(f.name for f in files[:5]), path=folder)
    return files[0]


def load_adapter(path: str | os.PathLike[str], *, alpha: float | None = None, lazy: bool = False,
                 **options: Any) -> Adapter:
    """Read a LoRA checkpoint of any supported format.

    Parameters
    ----------
    path : str or os.PathLike
        A PEFT folder (or its ``adapter_model.safetensors`` / ``.bin``;
        LoRA, AdaLoRA, DoRA, LoHa, LoKr, VeRA), a folder holding one PEFT
        adapter in a named subfolder, a loralib ``.pt`` / ``.bin`` state dict,
        a kohya sd-scripts / LyCORIS ``.safetensors`` (LoRA, LoCon, LoHa,
        LoKr), a diffusers ``pytorch_lora_weights.safetensors``, or a Hugging
        Face repo id ``org/name`` found in the local cache (offline).
    alpha : float, optional
        Scale numerator α where the format does not store it (loralib, a
        bare PEFT weights file). Ignored with a note where the file stores α.
    lazy : bool
        PEFT safetensors adapters only (other formats are read eagerly):
        validate keys, shapes and ranks from the file header now, and read a
        module's two factors (checking them for NaN / Inf) only when it is
        accessed; returns a :class:`~analysis.io.lazy.LazyAdapter`, whose
        memory stays bounded by the modules in use. For large adapters.
    **options
        Format options: ``enable_lora`` (loralib MergedLinear, e.g.
        ``[True, False, True]``), ``adapter_name`` (PEFT subfolder);
        ``revision`` (repo ids) and ``subfolder`` as in PEFT's
        ``from_pretrained``.

    Returns
    -------
    Adapter
        Mapping of module name (``name + ".weight"`` is the base tensor) to
        :class:`~analysis.core.LowRank`.

    Raises
    ------
    AdapterError
        With a one-line message naming the file, the key and what was expected.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise AdapterError(f"expected a path (str or os.PathLike) to a checkpoint, got {type(path).__name__} "
                           f"{str(path)[:60]!r}")
    try:
        return _load(path, alpha=alpha, lazy=lazy, **options)
    except AdapterError:
        raise
    except (RecursionError, ValueError, KeyError, IndexError, UnicodeError, OverflowError, OSError) as e:
        # what a malformed file makes a reader raise (a missing key, a bad number, a short array, an unreadable
        # file); TypeError, AttributeError and the like are the toolkit's bugs and keep their traceback
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise AdapterError(f"cannot read as a LoRA checkpoint: {type(e).__name__}: {msg}", path=path) from None


def _load(path, *, alpha, lazy, **options):
    if alpha is not None:
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise AdapterError(f"alpha must be a number, got {alpha!r}", path=path) from None
    revision, subfolder = options.pop("revision", None), options.pop("subfolder", None)
    p = Path(path)
    if not p.exists() and is_repo_id(path):  # org/name: the local Hugging Face cache, offline
        p = resolve_repo(os.fspath(path), revision=revision, subfolder=subfolder)
    elif revision is not None:
        raise AdapterError("revision= applies to a Hugging Face repo id (org/name), not to a local path", path=p)
    elif subfolder:
        p = p / subfolder
    if not p.exists():
        raise AdapterError("no such file or folder", path=p)
    if p.is_dir():
        name = options.pop("adapter_name", None)
        if name is not None:
            sub = p / name
            if not peft.is_peft_dir(sub):
                raise AdapterError(f"no PEFT adapter named '{name}' (expected {sub}/adapter_config.json)",
                                   path=p)
            return peft.load_peft(sub, alpha=alpha, lazy=lazy, **options)
        if peft.is_peft_dir(p):
            return peft.load_peft(p, alpha=alpha, lazy=lazy, **options)
        subs = sorted(d for d in p.iterdir() if d.is_dir() and peft.is_peft_dir(d))
        if len(subs) == 1:
            return peft.load_peft(subs[0], alpha=alpha, lazy=lazy, **options)
        if len(subs) > 1:
            raise AdapterError(
                "several PEFT adapters in named subfolders; pass one folder or adapter_name=: "
                + ", ".join(d.name for d in subs), path=p)
        p = _pick_file(p)
    if peft.is_peft_file(p):
        return peft.load_peft(p, alpha=alpha, lazy=lazy, **options)
    tensors = read_tensors(p)
    fmt = sniff_format(tensors, p)
    if fmt == "peft":
        return peft.load_peft(p, alpha=alpha, tensors=tensors, **options)
    if fmt == "loralib":
        return loralib.load_loralib(p, tensors, alpha=alpha, **options)
    if fmt == "kohya":
        return kohya.load_kohya(p, tensors, alpha=alpha, **options)
    if fmt == "diffusers":
        return load_diffusers(p, tensors, alpha=alpha, **options)
    if fmt == "lycoris":
        if any(k.startswith("base_model.") for k in tensors):  # a PEFT LoHa / LoKr weights file
            return peft.load_peft(p, alpha=alpha, tensors=tensors, **options)
        return kohya.load_kohya(p, tensors, alpha=alpha, **options)
    sample = ", ".join(list(tensors)[:3]) or "none"
    raise AdapterError(
        "no LoRA tensors found: expected keys ending in lora_A/lora_B (PEFT, loralib) or "
        f"lora_down/lora_up (kohya); first keys: {sample}", path=p)
