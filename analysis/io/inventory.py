"""What an adapter is on disk: its files and their sizes, how its format was recognised, the dtypes and
keys of its tensors, the metadata its files carry, the base model they name and what they save beside the
update (heads, ``modules_to_save``, trainable tokens).

Only headers and small text files are read for the facts about the tensors (a safetensors header; a
pickle, which has no header, is loaded once more with ``weights_only=True``): the values are the readers'
business (:func:`analysis.io.load_adapter`).

>>> from analysis.io.inventory import factor_key
>>> factor_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), factor_key("classifier.weight")
(True, False)
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import AdapterError
from analysis.io.kohya import read_metadata
from analysis.io.safetensors_file import SafetensorsFile
from analysis.io.tensors import read_pickle  # the one safe loader (torch version, zip bomb, weights_only)

if TYPE_CHECKING:
    from typing import Any

    from analysis.core.adapter import Adapter

__all__ = ["AdapterFiles", "adapter_files", "factor_key", "named_base", "DTYPE_NAMES"]

#: safetensors dtype names -> the names torch and numpy use.
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
               "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
               "U8": "uint8", "BOOL": "bool"}

#: A key holding a factor of the update (or its scale), in any format the readers know: PEFT ``lora_A`` …,
#: AdaLoRA ``lora_E``, DoRA ``lora_magnitude_vector`` / ``dora_scale``, kohya ``lora_down`` / ``lora_up`` /
#: ``lora_mid`` / ``.alpha``, diffusers ``lora.down`` / ``lora_linear_layer`` / ``processor.to_q_lora``,
#: LoHa ``hada_*``, LoKr ``lokr_*``, VeRA ``vera_*``, loralib ``…lora_A`` without ``.weight``.
_FACTOR = re.compile(
    r"(?:^|[._])(?:lora_(?:A|B|E|embedding_A|embedding_B|magnitude_vector|down|up|mid|linear_layer)|lora"
    r"|hada_(?:w[12]_[ab]|t[12])|lokr_(?:w[12](?:_[ab])?|t[12])|vera_(?:lambda_[bd]|A|B)|dora_scale"
    r"|(?:to_q|to_k|to_v|to_out|add_q_proj|add_k_proj|add_v_proj)_lora)(?:[._]|$)|\.alpha$")

_PEFT_PREFIX = "base_model.model."


def factor_key(key: object) -> bool:
    """True when ``key`` holds a factor (or the α) of a low-rank update, in any format the readers know."""
    return _FACTOR.search(str(key)) is not None


@dataclass(frozen=True)
class AdapterFiles:
    """The facts about an adapter's files.

    Attributes
    ----------
    weights : str
        The file the update was read from.
    config : str or None
        Its ``adapter_config.json`` (PEFT), if any.
    given : str
        The path (or Hugging Face id) as the user gave it.
    recognised : str
        How the format was told, in words.
    files : tuple of (str, int)
        ``(file name, bytes)`` of every file the adapter is read from (weights and config).
    tensors : dict[str, (tuple of int, str)]
        Every tensor key -> (shape, stored dtype name).
    metadata : dict[str, str]
        The safetensors header's ``__metadata__`` (kohya's ``ss_*`` training settings …); ``{}`` otherwise.
    readme : dict[str, str]
        The model card's front matter fields (``base_model``, ``library_name`` …) of a PEFT folder.
    """

    weights: str
    config: str | None
    given: str
    recognised: str
    files: tuple
    tensors: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    readme: dict = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """Bytes on disk of the files the adapter is read from."""
        return sum(n for _, n in self.files)

    @property
    def dtypes(self) -> dict:
        """``{stored dtype name: number of tensors}``, the most common first."""
        return dict(Counter(d for _, d in self.tensors.values()).most_common())

    def saved_tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The tensors saved beside the update (heads, ``modules_to_save``, trainable tokens, base weights).

        Returns
        -------
        dict[str, (tuple of int, str)]
            Key (PEFT's ``base_model.model.`` prefix dropped) -> (shape, dtype), in file order.
        """
        return {k.removeprefix(_PEFT_PREFIX): v for k, v in self.tensors.items() if not factor_key(k)}


def _header(weights):
    """``({key: (shape, dtype)}, metadata)`` of a safetensors file, from its header alone."""
    f = SafetensorsFile(weights)
    tensors = {k: (f.shapes[k], DTYPE_NAMES.get(f.dtypes[k], f.dtypes[k].lower())) for k in f.keys()}
    return tensors, read_metadata(weights)


def _pickle_tensors(weights):
    """``{key: (shape, dtype)}`` of a torch pickle, loaded with ``weights_only=True`` (as the readers load it)."""
    return {k: (tuple(int(s) for s in t.shape), str(t.dtype).removeprefix("torch.")) for k, t in
            read_pickle(weights).items()}


def _readme(folder):
    """Front matter ``key: value`` lines of a model card (``README.md``), the top-level scalar ones."""
    p = Path(folder) / "README.md"
    if not p.is_file():
        return {}
    try:
        with open(p, encoding="utf-8", errors="replace") as fh:
            text = fh.read(16384)
    except OSError:
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if m is None:
        return {}
    out = {}
    for line in m.group(1).splitlines():
        kv = re.match(r"^([A-Za-z_][\w-]*):\s*(\S.*?)\s*$", line)
        if kv and not kv.group(2).startswith(("|", ">")):
            out[kv.group(1)] = kv.group(2).strip("'\"")
    return out


def _recognised(adapter, weights, config, given):
    """How the readers told the format, in words."""
    fmt, w = adapter.format, Path(weights)
    where = ""
    if not os.path.exists(given):
        where = f"Hugging Face cache id resolved to {w.parent}; "
    elif Path(given).is_dir() and Path(given).resolve() != w.parent.resolve():
        where = f"the one adapter in {given} ({os.path.relpath(w.parent, given)}); "
    if fmt == "peft":
        if config is not None:
            cfg = adapter.config or {}
            return (f"{where}PEFT: {Path(config).name} (peft_type {cfg.get('peft_type', '?')}) beside {w.name}")
        return f"{where}PEFT keys (…lora_A.weight / …lora_B.weight) in {w.name}, no adapter_config.json beside it"
    if fmt in ("kohya", "kohya-resolved"):
        algos = sorted({str(lr_meta.get("algo", "lora")) for lr_meta in _metas(adapter)})
        lyco = [a for a in algos if a != "lora"]
        if lyco:
            return (f"{where}LyCORIS keys ({', '.join(_LYCORIS_KEYS.get(a, a) for a in lyco)}) under kohya / LyCORIS "
                    f"prefixes in {w.name}")
        return f"{where}kohya sd-scripts keys (…lora_down.weight / …lora_up.weight / …alpha) in {w.name}"
    if fmt == "diffusers":
        comps = sorted({str(m.get("component")) for m in _metas(adapter)})
        return f"{where}diffusers keys (pipeline component prefix {', '.join(c + '.' for c in comps)}) in {w.name}"
    if fmt == "loralib":
        return f"{where}loralib keys (…lora_A / …lora_B without .weight) in {w.name}; loralib stores no alpha"
    return f"{where}{fmt} reader on {w.name}"


_LYCORIS_KEYS = {"loha": "hada_w1_a …: LoHa", "lokr": "lokr_w1 …: LoKr"}


def _metas(adapter):
    """Every module's ``meta`` (kohya and diffusers adapters are in memory: nothing is read)."""
    return [lr.meta for lr in adapter.values()]


def adapter_files(adapter: Adapter, given: str | os.PathLike[str]) -> AdapterFiles:
    """The facts about the files an adapter was read from.

    Parameters
    ----------
    adapter : Adapter
        As :func:`analysis.io.load_adapter` returned it.
    given : str or os.PathLike
        The path (or Hugging Face id) as the user gave it.

    Returns
    -------
    AdapterFiles

    Raises
    ------
    AdapterError
        The weights file cannot be read (truncated header, unsafe pickle).
    """
    if not len(adapter):
        raise AdapterError("expected at least one module, got none", path=given)
    first = adapter[next(iter(adapter))]
    weights = Path(first.source or adapter.path)
    if not weights.is_file():
        raise AdapterError(f"expected the weights file the adapter was read from, got {weights}", path=given)
    config = None
    if adapter.format == "peft" and (weights.parent / "adapter_config.json").is_file():
        config = weights.parent / "adapter_config.json"
    files = [(weights.name, weights.stat().st_size)]
    if config is not None:
        files.append((config.name, config.stat().st_size))
    if weights.suffix == ".safetensors":
        tensors, metadata = _header(weights)
    else:
        tensors, metadata = _pickle_tensors(weights), {}
    readme = _readme(weights.parent) if adapter.format == "peft" else {}
    return AdapterFiles(weights=str(weights), config=None if config is None else str(config), given=os.fspath(given),
                        recognised=_recognised(adapter, weights, config, os.fspath(given)), files=tuple(files),
                        tensors=tensors, metadata=metadata, readme=readme)


def _json_field(text):
    """A metadata value that holds JSON, parsed; None when it does not."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None


def named_base(adapter: Adapter, files: AdapterFiles) -> dict[str, Any]:
    """The base model the adapter's files name, and where they name it.

    Parameters
    ----------
    adapter : Adapter
    files : AdapterFiles

    Returns
    -------
    dict
        ``{"name": str or None, "source": str or None, "architecture": str or None}``: PEFT's
        ``base_model_name_or_path`` (or the model card's ``base_model``), kohya's ``ss_sd_model_name`` (or
        ``modelspec.architecture`` / ``ss_base_model_version``), a diffusers header config's
        ``base_model_name_or_path``; the architecture from PEFT's ``auto_mapping`` or kohya's
        ``ss_base_model_version``.
    """
    cfg, meta = adapter.config or {}, files.metadata
    name = source = arch = None
    if adapter.format == "peft":
        if cfg.get("base_model_name_or_path"):
            name, source = str(cfg["base_model_name_or_path"]), "adapter_config.json base_model_name_or_path"
            if cfg.get("revision"):
                name += f" (revision {cfg['revision']})"
        elif files.readme.get("base_model"):
            name, source = files.readme["base_model"], "README.md base_model"
        mapping = cfg.get("auto_mapping")
        if isinstance(mapping, dict) and mapping.get("base_model_class"):
            arch = str(mapping["base_model_class"])
    elif adapter.format == "diffusers":
        for k, v in sorted(cfg.items()):
            if k.endswith("base_model_name_or_path") and v:
                name, source = str(v), f"header lora_adapter_metadata {k}"
                break
    for key in ("ss_sd_model_name", "modelspec.architecture", "ss_base_model_version"):
        if name is None and meta.get(key):
            name, source = meta[key], f"header metadata {key}"
    if arch is None:
        arch = meta.get("ss_base_model_version") or meta.get("modelspec.architecture") or None
    return {"name": name, "source": source, "architecture": arch}
