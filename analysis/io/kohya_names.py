"""kohya / LyCORIS module names resolved against the base model's own tensor names.

kohya writes a module as ``<prefix>_<dotted name with '.' replaced by '_'>`` (``lora_unet_``,
``lora_te_``, ``lora_te1_``, ``lora_te2_``, ``lora_te3_``; LyCORIS's own wrapper ``lycoris_``). The
underscore form cannot be inverted alone (``down_blocks_0`` and ``to_out_0`` hold underscores of their
own), but against a base it can: a base name matches when ``'.'`` → ``'_'`` turns it into the name
without its prefix — exactly, or after the component's folder name when the base holds a whole pipeline
(``unet.``, ``text_encoder.``, ``text_encoder_2.``, ``transformer.``). No match, or more than one, is one
clear error.

>>> resolve_kohya_name("lora_unet_down_blocks_0_attn1_to_q", ["down_blocks.0.attn1.to_q", "mid.conv"])
'down_blocks.0.attn1.to_q'
"""

from __future__ import annotations

from analysis.errors import AdapterError

__all__ = ["KOHYA_NAME_PREFIXES", "kohya_prefix", "kohya_key", "resolve_adapter_names", "resolve_kohya_name",
           "underscore_index"]

#: kohya prefix -> the folders a pipeline-wide base may keep that component under
KOHYA_NAME_PREFIXES = {
    "lora_unet_": ("unet", "transformer"),
    "lora_te1_": ("text_encoder",),
    "lora_te2_": ("text_encoder_2",),
    "lora_te3_": ("text_encoder_3",),
    "lora_te_": ("text_encoder",),
    "lycoris_": (),
}


def kohya_prefix(name):
    """The kohya / LyCORIS prefix of a module name, or None."""
    for prefix in KOHYA_NAME_PREFIXES:
        if name.startswith(prefix):
            return prefix
    return None


def kohya_key(prefix, base_name):
    """The kohya module name of a base module: ``prefix + base_name.replace('.', '_')``.

    >>> kohya_key("lora_te_", "text_model.encoder.layers.0.self_attn.q_proj")
    'lora_te_text_model_encoder_layers_0_self_attn_q_proj'
    """
    return prefix + base_name.replace(".", "_")


def underscore_index(base_names):
    """``{name with '.' → '_': [base names]}`` (built once per base)."""
    index = {}
    for n in base_names:
        index.setdefault(n.replace(".", "_"), []).append(n)
    return index


def resolve_kohya_name(name, base_names, *, index=None, path=None):
    """The base tensor name (without ``.weight``) a kohya module name refers to.

    Parameters
    ----------
    name : str
        A kohya / LyCORIS module name (``lora_unet_…``); any other name is returned unchanged when the base
        has it.
    base_names : collection of str
        The base's module names (``names()`` of a :class:`~analysis.io.base.BaseWeights`).
    index : dict, optional
        :func:`underscore_index` of ``base_names``, when the caller keeps it.
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
    index = underscore_index(base_names) if index is None else index
    rest = name[len(prefix):]
    found = list(index.get(rest, ()))
    if not found:
        for folder in KOHYA_NAME_PREFIXES[prefix]:
            found += [n for n in index.get(f"{folder}_{rest}", ()) if n.startswith(folder + ".")]
    if len(found) == 1:
        return found[0]
    if not found:
        raise AdapterError(f"expected a base tensor whose name with '.' replaced by '_' is '{rest}' (kohya module "
                           f"'{name}' without its prefix {prefix}), got none: is this the adapter's base model (or "
                           "the right component of it)?", path=path, key=name)
    raise AdapterError(f"kohya module '{name}' is ambiguous: base tensors {', '.join(sorted(found))} all read "
                       f"'{rest}' with '.' replaced by '_'", path=path, key=name)


def resolve_adapter_names(adapter, base):
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

    from analysis.core.adapter import Adapter

    names = list(base.names()) if hasattr(base, "names") else list(base)
    index = underscore_index(names)
    path = getattr(base, "path", None)
    out = {}
    for name, lr in adapter.items():
        real = resolve_kohya_name(name, set(names), index=index, path=path)
        if real in out:
            raise AdapterError(f"kohya modules '{out[real].meta.get('kohya_name')}' and '{name}' both resolve to "
                               f"base tensor '{real}'", path=adapter.path, key=name)
        out[real] = replace(lr, name=real, meta={**lr.meta, "kohya_name": name})
    notes = [*adapter.notes, f"kohya names resolved against the base {path or '(mapping)'}: {len(out)} modules"]
    return Adapter(out, path=adapter.path, format="kohya-resolved", config=adapter.config, notes=notes)
