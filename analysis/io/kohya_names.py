"""kohya / LyCORIS module names resolved against the base model's own tensor names.

kohya writes a module as ``<prefix>_<dotted name with '.' replaced by '_'>`` (``lora_unet_``,
``lora_te_``, ``lora_te1_``, ``lora_te2_``, ``lora_te3_``; LyCORIS's own wrapper ``lycoris_``). The
underscore form cannot be inverted alone (``down_blocks_0`` and ``to_out_0`` hold underscores of their
own), but against a base it can. Resolution, in order:

1. **Exact**: a base name whose ``'.'`` → ``'_'`` form is the name without its prefix — as it stands, or
   after the component's folder when the base holds a whole pipeline (``unet.``, ``text_encoder.``,
   ``text_encoder_2.``, ``transformer.``).
2. **Unique suffix**, only when nothing matches exactly: the base's tensor names may carry a different prefix
   than the model kohya named (transformers 5 saves a ``CLIPTextModel`` as ``encoder.layers.0.…`` where
   kohya writes ``lora_te_text_model_encoder_layers_0_…``; an original single-file checkpoint keeps it under
   ``cond_stage_model.transformer.text_model.…``). A base name matches when its underscore form (or, in a
   pipeline-wide base, the form after this component's folder) ends the name without its prefix at an
   ``'_'``, or when the name without its prefix ends the base name's underscore form at a ``'.'`` of the base
   name. A base tensor under *another* component's folder (``text_encoder_2.`` for ``lora_te1_``) is not a
   candidate.

No match, or more than one at the first step that has any, is one clear error naming them. The index is
built once per base (:func:`underscore_index`); the suffix tables only when a name first needs them, so a
lookup costs one dictionary probe per ``'_'`` of the name.

>>> resolve_kohya_name("lora_unet_down_blocks_0_attn1_to_q", ["down_blocks.0.attn1.to_q", "mid.conv"])
'down_blocks.0.attn1.to_q'
>>> resolve_kohya_name("lora_te_text_model_encoder_layers_0_mlp_fc1", ["encoder.layers.0.mlp.fc1"])
'encoder.layers.0.mlp.fc1'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from analysis.core.adapter import Adapter
from analysis.errors import AdapterError

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping

    import numpy as np

    from analysis.core.lowrank import LowRank
    from analysis.io.base import BaseWeights

__all__ = ["KOHYA_NAME_PREFIXES", "KohyaIndex", "kohya_prefix", "kohya_key", "resolve_adapter_names",
           "resolve_kohya_name", "underscore_index"]

#: kohya prefix -> the folders a pipeline-wide base may keep that component under
KOHYA_NAME_PREFIXES = {
    "lora_unet_": ("unet", "transformer"),
    "lora_te1_": ("text_encoder",),
    "lora_te2_": ("text_encoder_2",),
    "lora_te3_": ("text_encoder_3",),
    "lora_te_": ("text_encoder",),
    "lycoris_": (),
}
_FOLDERS = tuple(sorted({f for folders in KOHYA_NAME_PREFIXES.values() for f in folders}))
_LISTED = 8  # candidates named in an ambiguity error


def kohya_prefix(name: str) -> str | None:
    """The kohya / LyCORIS prefix of a module name, or None."""
    for prefix in KOHYA_NAME_PREFIXES:
        if name.startswith(prefix):
            return prefix
    return None


def kohya_key(prefix: str, base_name: str) -> str:
    """The kohya module name of a base module: ``prefix + base_name.replace('.', '_')``.

    >>> kohya_key("lora_te_", "text_model.encoder.layers.0.self_attn.q_proj")
    'lora_te_text_model_encoder_layers_0_self_attn_q_proj'
    """
    return prefix + base_name.replace(".", "_")


class KohyaIndex(dict):
    """A base's names by their kohya underscore form: ``{name with '.' → '_': [base names]}``.

    The suffix tables (:meth:`heads`, :meth:`tails`) are built on first use, once per base.

    Parameters
    ----------
    base_names : iterable of str
        The base's module names.
    """

    def __init__(self, base_names: Iterable[str]) -> None:
        super().__init__()
        self.base_names = tuple(base_names)
        for n in self.base_names:
            self.setdefault(n.replace(".", "_"), []).append(n)
        self._heads: dict[str, list[tuple[str, str | None]]] | None = None
        self._tails: dict[str, list[str]] | None = None

    def heads(self) -> dict[str, list[tuple[str, str | None]]]:
        """``{underscore form: [(base name, folder or None)]}``, each name also without a pipeline folder."""
        if self._heads is None:
            heads: dict[str, list[tuple[str, str | None]]] = {}
            for n in self.base_names:
                heads.setdefault(n.replace(".", "_"), []).append((n, None))
                for folder in _FOLDERS:
                    if n.startswith(folder + "."):
                        heads.setdefault(n[len(folder) + 1:].replace(".", "_"), []).append((n, folder))
            self._heads = heads
        return self._heads

    def tails(self) -> dict[str, list[str]]:
        """``{underscore form of a proper tail at a '.': [base names]}`` (``b.c`` and ``c`` of ``a.b.c``)."""
        if self._tails is None:
            tails: dict[str, list[str]] = {}
            for n in self.base_names:
                start = n.find(".")
                while start >= 0:
                    tails.setdefault(n[start + 1:].replace(".", "_"), []).append(n)
                    start = n.find(".", start + 1)
            self._tails = tails
        return self._tails


def underscore_index(base_names: Iterable[str]) -> KohyaIndex:
    """The :class:`KohyaIndex` of a base's names (build it once per base).

    Parameters
    ----------
    base_names : iterable of str

    Returns
    -------
    KohyaIndex
        A dict ``{name with '.' → '_': [base names]}`` that also finds suffix matches.
    """
    return KohyaIndex(base_names)


def _exact(rest, prefix, index):
    """Base names matching ``rest`` exactly (as it stands, else under this component's folder)."""
    found = list(index.get(rest, ()))
    if not found:
        for folder in KOHYA_NAME_PREFIXES[prefix]:
            found += [n for n in index.get(f"{folder}_{rest}", ()) if n.startswith(folder + ".")]
    return found


def _foreign(base_name, prefix):
    """Whether a base name lies under another component's folder than ``prefix``'s (pipeline-wide bases)."""
    own = KOHYA_NAME_PREFIXES[prefix]
    if not own:
        return False
    return any(base_name.startswith(f + ".") for f in _FOLDERS if f not in own)


def _by_suffix(rest, prefix, index):
    """Base names matching ``rest`` by suffix at a component boundary, in first-seen order."""
    own = KOHYA_NAME_PREFIXES[prefix]
    heads = index.heads()
    found = {}
    at = rest.find("_")
    while at >= 0:  # a base name (or its form after this component's folder) ends `rest`
        for n, folder in heads.get(rest[at + 1:], ()):
            if folder is None or folder in own:
                found[n] = None
        at = rest.find("_", at + 1)
    for n in index.tails().get(rest, ()):  # `rest` ends a base name at one of its dots
        found[n] = None
    return [n for n in found if not _foreign(n, prefix)]


def _ambiguous(name, rest, found, how, path):
    listed = ", ".join(sorted(found)[:_LISTED]) + (f" and {len(found) - _LISTED} more" if len(found) > _LISTED
                                                   else "")
    return AdapterError(f"kohya module '{name}' is ambiguous: base tensors {listed} all {how} '{rest}' with '.' "
                        "replaced by '_'", path=path, key=name)


def resolve_kohya_name(name: str, base_names: Collection[str], *, index: KohyaIndex | None = None,
                       path: str | None = None) -> str:
    """The base tensor name (without ``.weight``) a kohya module name refers to.

    Parameters
    ----------
    name : str
        A kohya / LyCORIS module name (``lora_unet_…``); any other name is returned unchanged when the base
        has it.
    base_names : collection of str
        The base's module names (``names()`` of a :class:`~analysis.io.base.BaseWeights`).
    index : KohyaIndex, optional
        :func:`underscore_index` of ``base_names``, when the caller keeps it (built here otherwise).
    path : str, optional
        The base, named in errors.

    Returns
    -------
    str

    Raises
    ------
    AdapterError
        No base tensor matches, or several do (naming them).
    """
    if name in base_names:
        return name
    prefix = kohya_prefix(name)
    if prefix is None:
        raise AdapterError(f"expected a tensor for module '{name}', got no such key", path=path, key=name + ".weight")
    if not isinstance(index, KohyaIndex):
        index = underscore_index(base_names)
    rest = name[len(prefix):]
    found = _exact(rest, prefix, index)
    if len(found) > 1:
        raise _ambiguous(name, rest, found, "read", path)
    if not found:
        found = _by_suffix(rest, prefix, index)
        if len(found) > 1:
            raise _ambiguous(name, rest, found, "match by suffix (no exact match) of", path)
    if len(found) == 1:
        return found[0]
    raise AdapterError(f"expected a base tensor whose name with '.' replaced by '_' is '{rest}' (kohya module "
                       f"'{name}' without its prefix {prefix}), got none: is this the adapter's base model (or "
                       "the right component of it)?", path=path, key=name)


def resolve_adapter_names(adapter: Adapter, base: BaseWeights | Mapping[str, np.ndarray]) -> Adapter:
    """A kohya / LyCORIS adapter keyed by the base's own module names.

    Parameters
    ----------
    adapter : Adapter
        As read from a kohya / LyCORIS file (``format="kohya"``).
    base : BaseWeights or Mapping[str, ndarray]
        The base model (:func:`~analysis.io.base.open_base`) or a mapping ``name -> weight``.

    Returns
    -------
    Adapter
        ``format="kohya-resolved"``: the same updates under the base's dotted names (``meta["kohya_name"]``
        keeps each module's kohya name), so that every function that needs base names (``intruder_sweep``,
        merging, writing a PEFT adapter) accepts it.

    Raises
    ------
    AdapterError
        A name matching no base tensor or several, or two kohya names resolving to one base tensor.
    """
    from dataclasses import replace

    names = list(base.names()) if hasattr(base, "names") else list(base)
    known = set(names)
    index = underscore_index(names)
    path = getattr(base, "path", None)
    out: dict[str, LowRank] = {}
    for name, lr in adapter.items():
        real = resolve_kohya_name(name, known, index=index, path=path)
        if real in out:
            raise AdapterError(f"kohya modules '{out[real].meta.get('kohya_name')}' and '{name}' both resolve to "
                               f"base tensor '{real}'", path=adapter.path, key=name)
        out[real] = replace(lr, name=real, meta={**lr.meta, "kohya_name": name})
    notes = [*adapter.notes, f"kohya names resolved against the base {path or '(mapping)'}: {len(out)} modules"]
    return Adapter(out, path=adapter.path, format="kohya-resolved", config=adapter.config, notes=notes)
