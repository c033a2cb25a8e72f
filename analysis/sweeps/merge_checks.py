"""What can be merged, and what is carried beside the factors (no merge mathematics here).

Before any work, :func:`check_mergeable` refuses adapters of different models (no module in common, or one
module name with two ΔW shapes) and updates a LoRA file cannot carry (DoRA, ``lora_bias``, embeddings, a conv
kernel differing between adapters); a different ``base_model_name_or_path`` or task type is a
:class:`MergeWarning`. A module present in only some adapters is merged over those that have it (a missing
module is a zero update there: Σ wᵢ ΔWᵢ over all adapters), and said in the notes.

What PEFT saves beside the factors (``modules_to_save`` heads, trainable tokens, ``bias="all"`` /
``"lora_only"`` biases, embedding layers) goes through :func:`merge_saved_modules`: identical in every
adapter, it is carried over; otherwise the merge is refused unless ``heads`` says how: ``"first"`` (the first
adapter's tensors and config fields, as if its heads were kept) or ``"mean"`` (Σ wᵢ Tᵢ / Σ wᵢ, the merge weights
normalised to sum 1: a plain mean with the default weights; needs wᵢ ≥ 0). The config written
(:func:`merged_config`) names exactly what the file holds, so ``PeftModel.from_pretrained`` loads the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.core.adapter import natural_key
from analysis.errors import AdapterError, InputError
from analysis.io.peft import non_lora_tensors
from analysis.io.peft_writer import saved_fields

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from analysis.core.adapter import Adapter

__all__ = ["HEADS", "MergeCheck", "MergeWarning", "SavedModules", "check_mergeable", "read_saved_tensors",
           "merge_saved_modules", "merged_config"]

#: How ``merge_saved_modules`` combines differing tensors saved beside the factors (``modules_to_save`` heads …).
HEADS = ("first", "mean")


class MergeWarning(UserWarning):
    """Adapters that can be merged but name different base models or task types (one line each)."""


@dataclass(frozen=True)
class MergeCheck:
    """What :func:`check_mergeable` found in adapters that can be merged.

    Attributes
    ----------
    shapes : dict of str to tuple of int
        Every module (union over the adapters, natural order) -> ΔW shape ``(d_out, d_in)``.
    partial : dict of str to tuple of str
        Modules present in only some adapters -> the labels of those having them.
    warnings : tuple of str
        One line per field the adapters disagree on without stopping the merge (base model name, task type).
    notes : tuple of str
        What the merge will do that a user may not expect (partial modules).
    """

    shapes: dict
    partial: dict
    warnings: tuple = ()
    notes: tuple = ()


def _example(names):
    return sorted(names, key=natural_key)[0] if names else "none"


def _check_connected(mods, labels):
    """Refuse adapters that share no module with the others (directly or through a chain of adapters)."""
    parent = list(range(len(mods)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner = {}
    for i, m in enumerate(mods):
        for n in m:
            parent[find(i)] = find(owner.setdefault(n, i))
    for i in range(1, len(mods)):
        if find(i) != find(0):
            raise AdapterError(f"expected modules of the same model as {labels[0]}, got no module in common with it "
                               f"({len(mods[i])} modules here, e.g. '{_example(mods[i])}'; {len(mods[0])} there, e.g. "
                               f"'{_example(mods[0])}'): adapters of different models cannot be merged", path=labels[i])


def _check_module(lr, label, name):
    """Refuse one update a merged LoRA file cannot carry; make sure its scale is known."""
    if lr.kind not in ("linear", "merged", "conv"):
        raise AdapterError(f"merging {lr.kind} modules is not supported (linear and conv layers only)", path=label,
                           key=name)
    if lr.meta.get("dora"):
        raise AdapterError("merging DoRA modules is not supported: the merged LoRA factors would drop the magnitude "
                           "vector (lora_magnitude_vector)", path=label, key=name)
    if lr.meta.get("lora_B_bias") is not None:
        raise AdapterError("merging lora_bias modules is not supported: the merged LoRA factors would drop "
                           "lora_B.bias", path=label, key=name)
    if lr.scale is None:
        lr.norm()  # raises MissingAlphaError naming file and key


def _disagreement(configs, labels, key, what):
    """One warning line when the adapters' configs name different values of ``key`` (unset values ignored)."""
    seen = {}
    for c, lab in zip(configs, labels):
        v = (c or {}).get(key)
        if v not in (None, ""):
            seen.setdefault(str(v), lab)
    if len(seen) < 2:
        return []
    listed = "; ".join(f"{lab}: {v!r}" for v, lab in seen.items())
    return [f"the adapters name different {what} ({listed}); their modules and shapes agree, so the merge goes on "
            f"and the config written keeps the first's"]


def check_mergeable(adapters: Sequence[Adapter], *, labels: Sequence[str] | None = None) -> MergeCheck:
    """Check, before any work, that adapters can be merged into one LoRA adapter.

    Parameters
    ----------
    adapters : sequence of Adapter
        Two or more adapters.
    labels : sequence of str, optional
        Their names in messages (default their paths).

    Returns
    -------
    MergeCheck

    Raises
    ------
    AdapterError
        Adapters of different models: one shares no module with the others, or one module name has two ΔW
        shapes ``(d_out, d_in)`` (the message names both adapters, the first such module in natural order and
        both shapes). Also a module a merged LoRA cannot carry (embedding, DoRA, ``lora_bias``; a conv
        whose kernel differs between adapters) or whose scale is unknown (MissingAlphaError).

    Notes
    -----
    A different ``base_model_name_or_path`` or ``task_type`` with identical modules and shapes is only a
    warning (e.g. the same model under two paths).
    """
    ads = list(adapters)
    labels = tuple(str(a.path) for a in ads) if labels is None else tuple(str(x) for x in labels)
    mods = [a.expanded() for a in ads]
    _check_connected(mods, labels)
    shapes, owner, kernel = {}, {}, {}
    for n in sorted(set().union(*mods), key=natural_key):
        for i, m in enumerate(mods):
            if n not in m:
                continue
            shape = tuple(m[n].shape)
            # ignored: weight_shape is not None by the condition, which mypy does not narrow through m[n]
            ws = tuple(m[n].weight_shape) if m[n].kind == "conv" and m[n].weight_shape is not None else None  # type: ignore[arg-type]
            if n not in shapes:
                shapes[n], owner[n], kernel[n] = shape, i, ws
                continue
            if shape != shapes[n]:
                raise AdapterError(f"expected ΔW of shape (d_out, d_in) = {shapes[n]} as in {labels[owner[n]]}, got "
                                   f"{shape}: adapters of different models cannot be merged", path=labels[i], key=n)
            if ws is not None and kernel[n] is not None and ws != kernel[n]:
                raise AdapterError(f"expected the layer's weight shape {kernel[n]} as in {labels[owner[n]]}, got {ws} "
                                   "(a convolution's kernel differs): adapters of different models cannot be merged",
                                   path=labels[i], key=n)
            kernel[n] = kernel[n] or ws  # a LoHa / LoKr stored flattened says nothing about the kernel
    for n in shapes:
        for i, m in enumerate(mods):
            if n in m:
                _check_module(m[n], labels[i], n)
    partial = {n: tuple(labels[i] for i, m in enumerate(mods) if n in m) for n in shapes
               if any(n not in m for m in mods)}
    notes = []
    if partial:
        notes.append(f"{len(partial)} of {len(shapes)} modules are in only some adapters (e.g. '{_example(partial)}' "
                     f"in {len(partial[_example(partial)])} of {len(ads)}): each is merged over the adapters that "
                     "have it, a missing module counting as a zero update")
    configs = [a.config for a in ads]
    warns = (_disagreement(configs, labels, "base_model_name_or_path", "base models")
             + _disagreement(configs, labels, "task_type", "task types"))
    return MergeCheck(shapes, partial, tuple(warns), tuple(notes))


def read_saved_tensors(adapter: Adapter) -> dict[str, np.ndarray]:
    """The tensors an adapter saves beside its update's factors (PEFT ``modules_to_save`` heads …).

    Parameters
    ----------
    adapter : Adapter

    Returns
    -------
    dict[str, ndarray]
        As stored (keys ``base_model.model.classifier.weight`` …; see
        :func:`analysis.io.peft.non_lora_tensors`); empty for formats other than PEFT.

    Raises
    ------
    AdapterError
        A PEFT adapter that is not on disk (read from a live model) whose config makes PEFT save such
        tensors: they cannot be read from it.
    """
    if adapter.format != "peft":
        return {}
    if Path(adapter.path).exists():
        return non_lora_tensors(adapter.path)
    fields = saved_fields(adapter.config)
    if fields:
        what = ", ".join(f"{k} = {v!r}" for k, v in fields.items())
        raise AdapterError(f"the tensors saved beside the factors ({what}) cannot be read from an adapter that is not "
                           "on disk; save it with save_pretrained and merge the folder", path=adapter.path)
    return {}


@dataclass(frozen=True)
class SavedModules:
    """The tensors written beside the merged factors, from :func:`merge_saved_modules`.

    Attributes
    ----------
    tensors : dict of str to ndarray
        Key as PEFT saves it -> tensor.
    how : str
        ``"none"`` (no adapter saves any), ``"identical"`` (the same in every adapter, carried over),
        ``"first"`` or ``"mean"``.
    averaged : tuple of str
        Keys averaged (``"mean"``; identical ones are copied exactly).
    notes : tuple of str
    """

    tensors: dict
    how: str
    averaged: tuple = ()
    notes: tuple = ()


def _heads_hint():
    return "say how with --heads first|mean (heads= in merge_adapters)"


def _same(a, b):
    return a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b)


def _compare(saved, labels, key):
    """Refuse a saved tensor missing from an adapter or of another shape; returns whether all values agree."""
    ref = next(i for i, s in enumerate(saved) if key in s)
    for i, s in enumerate(saved):
        if key not in s:
            raise AdapterError(f"expected the tensor saved beside the factors as in {labels[ref]} "
                               f"{tuple(saved[ref][key].shape)}, got none (the adapters' modules_to_save, bias or "
                               "trainable tokens differ); keep the first adapter's with --heads first (heads= in "
                               "merge_adapters)", path=labels[i], key=key)
        if s[key].shape != saved[ref][key].shape:
            raise AdapterError(f"expected the tensor saved beside the factors of shape {tuple(saved[ref][key].shape)} "
                               f"as in {labels[ref]}, got {tuple(s[key].shape)}; keep the first adapter's with "
                               "--heads first (heads= in merge_adapters)", path=labels[i], key=key)
    return all(_same(s[key], saved[0][key]) for s in saved[1:])


def _mean_weights(weights):
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not w.sum() > 0:
        raise InputError(f"heads='mean' (--heads mean) averages the saved tensors with the merge weights normalised "
                         f"to sum 1, which needs weights >= 0, not all 0; got {list(weights)}: use heads='first'")
    return w / w.sum()


def merge_saved_modules(saved: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], *,
                        heads: str | None = None, labels: Sequence[str]) -> SavedModules:
    """Combine the tensors PEFT saves beside the factors (``modules_to_save`` heads, trainable tokens, biases).

    Parameters
    ----------
    saved : sequence of Mapping[str, ndarray]
        One per adapter (:func:`read_saved_tensors`), keys as PEFT saves them.
    weights : sequence of float
        The merge weights wᵢ.
    heads : {None, "first", "mean"}
        How to combine tensors that differ between adapters. None: refuse them (identical ones are carried
        over). ``"first"``: the first adapter's tensors, all of them and only them (as if its heads were
        kept; the others' are ignored). ``"mean"``: Σ wᵢ Tᵢ / Σ wᵢ in float64, stored in the input dtype (a
        plain mean for equal weights); every adapter must hold the tensor, and when some differ the weights
        must be ≥ 0, not all 0.
    labels : sequence of str
        The adapters' names in messages.

    Returns
    -------
    SavedModules

    Raises
    ------
    AdapterError
        A tensor that differs (``heads`` None), is missing from an adapter (unless ``"first"``) or has another
        shape (unless ``"first"``); the message names the key and both adapters.
    ValueError
        ``heads`` not one of :data:`HEADS`, or ``"mean"`` with a negative weight or weights summing to 0.
    """
    if heads is not None and heads not in HEADS:
        raise InputError(f"heads must be None or one of {HEADS}, got {heads!r}")
    saved = [dict(s) for s in saved]
    labels = tuple(labels)
    keys = sorted(set().union(*saved), key=natural_key)
    if not keys:
        return SavedModules({}, "none")
    if heads == "first":
        differ = [k for k in keys if not all(_same(s.get(k), saved[0].get(k)) for s in saved[1:])]
        notes = ([f"saved tensors ({len(saved[0])}) from the first adapter {labels[0]} (heads first); "
                  f"{len(differ)} that differ in or are missing from the others ignored, e.g. '{differ[0]}'"]
                 if differ else [])
        return SavedModules(dict(saved[0]), "first", (), tuple(notes))
    differ = [k for k in keys if not _compare(saved, labels, k)]
    if not differ:
        return SavedModules(dict(saved[0]), "identical", (),
                            (f"{len(keys)} saved tensors (e.g. '{keys[0]}') identical in every adapter: carried over",))
    if heads is None:
        k = differ[0]
        i = next(i for i, s in enumerate(saved) if not np.array_equal(s[k], saved[0][k]))
        gap = float(np.max(np.abs(saved[i][k].astype(np.float64) - saved[0][k].astype(np.float64))))
        raise AdapterError(f"expected the tensor saved beside the factors (modules_to_save head, trainable tokens, "
                           f"bias) to equal {labels[0]}'s, got another (largest difference {gap:.3g}; {len(differ)} "
                           f"of {len(keys)} saved tensors differ); {_heads_hint()}", path=labels[i], key=k)
    w = _mean_weights(weights)
    out = dict(saved[0])
    for k in differ:
        if saved[0][k].dtype.kind != "f":
            raise AdapterError(f"expected floating-point values to average, got dtype {saved[0][k].dtype}; use "
                               "--heads first (heads= in merge_adapters)", path=labels[0], key=k)
        acc = sum(wi * s[k].astype(np.float64) for wi, s in zip(w, saved))  # Σ wᵢ Tᵢ, Σ wᵢ = 1
        out[k] = acc.astype(saved[0][k].dtype)
    note = (f"{len(differ)} of {len(keys)} saved tensors (e.g. '{differ[0]}') averaged with weights "
            f"{', '.join(f'{x:.4g}' for x in w)} (the merge weights normalised to sum 1)"
            + ("; the others identical in every adapter, carried over" if len(differ) < len(keys) else ""))
    return SavedModules(out, "mean", tuple(differ), (note,))


def merged_config(configs: Sequence[Mapping[str, Any]], *, heads: str | None = None,
                  labels: Sequence[str]) -> dict[str, Any]:
    """The ``adapter_config.json`` fields carried into a merged adapter.

    Parameters
    ----------
    configs : sequence of Mapping
        The adapters' configs (empty for formats without one).
    heads : {None, "first", "mean"}
        As for :func:`merge_saved_modules`.
    labels : sequence of str

    Returns
    -------
    dict
        The first adapter's config (the writer replaces the fields describing the factors), with
        ``layers_to_transform`` / ``layers_pattern`` cleared (the written ``target_modules`` lists every merged
        module exactly; the first's layer filter could make PEFT skip the others' modules). Its
        ``task_type``, ``modules_to_save``, ``trainable_token_indices`` and ``bias`` describe the saved tensors of
        the first adapter, which are those written (identical, averaged or the first's).

    Raises
    ------
    AdapterError
        ``trainable_token_indices`` set in two adapters and different (unless ``heads="first"``): the saved
        rows belong to other tokens and cannot be combined.
    """
    configs = [dict(c or {}) for c in configs]
    if heads != "first":
        ref = configs[0].get("trainable_token_indices")
        for c, lab in zip(configs[1:], labels[1:]):
            tti = c.get("trainable_token_indices")
            if None not in (ref, tti) and tti != ref:  # one without: its tensors are missing (merge_saved_modules)
                raise AdapterError(f"expected trainable_token_indices {ref!r} as in {labels[0]}, got "
                                   f"{c.get('trainable_token_indices')!r}: the adapters train the rows of different "
                                   "tokens, which cannot be combined; keep the first adapter's with --heads first "
                                   "(heads= in merge_adapters)", path=lab, key="trainable_token_indices")
    cfg = dict(configs[0])
    for key in ("layers_to_transform", "layers_pattern"):
        if key in cfg:
            cfg[key] = None
    return cfg
