"""PEFT LoRA and AdaLoRA adapters.

A PEFT adapter is a folder with ``adapter_config.json`` and
``adapter_model.safetensors`` (or the legacy pickle ``adapter_model.bin``); a
second adapter saved from the same model sits in a subfolder named after it.
Saved keys drop the adapter name::

    base_model.model.<module>.lora_A.weight         (r, d_in)       nn.Linear / Conv1D
    base_model.model.<module>.lora_B.weight         (d_out, r)
    base_model.model.<module>.lora_A.weight         (r, c_in, *k)   ConvNd
    base_model.model.<module>.lora_B.weight         (c_out, r, 1…)
    base_model.model.<module>.lora_embedding_A      (r, num_embeddings)
    base_model.model.<module>.lora_embedding_B      (embedding_dim, r)
    base_model.model.<module>.lora_{A,E,B}          AdaLoRA: (r, d_in), (r, 1), (d_out, r)

Every module becomes a :class:`~analysis.core.LowRank` whose ``delta()`` equals
PEFT's ``get_delta_weight`` in the nn.Linear orientation:

- Linear: ``lora_A``, ``lora_B`` as stored, scale ``α / r`` (``α / √r`` with
  ``use_rslora``; r and α per module from ``rank_pattern`` / ``alpha_pattern``).
  With ``fan_in_fan_out`` (GPT-2 Conv1D) PEFT transposes the product to the
  stored (d_in, d_out) weight; here ΔW stays (d_out, d_in) and
  ``weight_shape`` records the stored (d_in, d_out). (PEFT forces the flag per
  layer type, True for Conv1D and False for nn.Linear, and saves the last value
  it set: for a model mixing both, ``weight_shape`` follows the saved flag;
  ΔW is right either way.)
- Embedding: PEFT's ΔW is ``(B A)ᵀ · s`` with the table's shape
  (num_embeddings, embedding_dim), so ``lora_A = Bᵀ`` (r, embedding_dim) and
  ``lora_B = Aᵀ`` (num_embeddings, r).
- ConvNd (groups = 1): ΔW flattened to (c_out, c_in · ∏k) =
  ``B.reshape(c_out, r) @ A.reshape(r, -1)``; ``weight_shape`` is the kernel's.
- AdaLoRA: ΔW = B (A ⊙ E) · scaling / (ranknum + 1e-5) with, as PEFT sets them
  after loading, ranknum = init_r and scaling = lora_alpha (or the module's
  rank when lora_alpha ≤ 0); ``lora_A`` holds ``A ⊙ E``. AdaLoRA on a Conv2d
  stores A already flattened, so its ΔW and ``weight_shape`` are the 2-D
  (c_out, c_in · kh · kw) form.

DoRA modules (``lora_magnitude_vector``) are read as their directional part
``s · B A`` with ``meta["dora"]`` and the magnitude ``meta["magnitude"]`` (d_out,);
the effective update ``W' − W`` needs the base (:mod:`analysis.io.dora`).
LoHa, LoKr and VeRA are read by :mod:`analysis.io.peft_methods`.
PiSSA / OLoRA / CorDA / LoRA-GA / LoftQ adapters that moved the base weight,
other LoRA variants and the other PEFT methods are refused with
:class:`~analysis.errors.UnsupportedAdapterError` (see ``peft_config``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.core.adapter import Adapter
from analysis.core import LowRank
from analysis.errors import AdapterError, UnsupportedAdapterError
from analysis.io.lazy import LazyAdapter, placeholder
from analysis.io.lycoris import LOHA_PARTS, LOKR_PARTS
from analysis.io.peft_config import CONFIG_NAME, adalora_rank, parse_settings, read_config
from analysis.io.peft_methods import PEFT_METHODS, add_part, check_one_adapter, key_module, load_peft_method
from analysis.io.safetensors_file import SafetensorsFile
from analysis.io.tensors import read_tensors

if TYPE_CHECKING:
    import os
    from typing import Any

    import numpy as np

__all__ = ["is_peft_dir", "is_peft_file", "load_peft", "non_lora_tensors", "WEIGHT_NAMES"]

WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_PARTS = ("lora_A", "lora_B", "lora_E", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
_KEY_RE = re.compile(
    rf"^(?P<module>.+)\.(?P<part>{'|'.join(_PARTS)})"
    r"(?:\.(?!(?:weight|bias)$)(?P<adapter>[^.]+))?(?:\.(?P<param>weight|bias))?$")
#: A factor of LoHa / LoKr / VeRA (module parts, or VeRA's shared projections): not a saved module's tensor.
_METHOD_KEY_RE = re.compile(
    rf"(?:^|\.)(?:{'|'.join(LOHA_PARTS + LOKR_PARTS + ('vera_lambda_b', 'vera_lambda_d'))})(?:\.|$)"
    r"|^(?:base_model\.)?vera_[AB](?:\.[^.]+)?$")


def is_peft_dir(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding ``adapter_config.json`` or ``adapter_model.{safetensors,bin}``."""
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in (CONFIG_NAME, *WEIGHT_NAMES))


def is_peft_file(path: str | os.PathLike[str]) -> bool:
    """True for a file named ``adapter_model.safetensors`` or ``adapter_model.bin``."""
    p = Path(path)
    return p.is_file() and p.name in WEIGHT_NAMES


def _resolve(path):
    """``(weights file, config file or None)`` for a folder or a weights file."""
    p = Path(path)
    if p.is_dir():
        for n in WEIGHT_NAMES:
            if (p / n).is_file():
                cfg = p / CONFIG_NAME
                return p / n, (cfg if cfg.is_file() else None)
        found = sorted(f.name for f in p.iterdir())[:5]
        raise AdapterError(f"expected {' or '.join(WEIGHT_NAMES)} beside {CONFIG_NAME}, got "
                           f"{', '.join(found) or 'an empty folder'}", path=p)
    if not p.is_file():
        raise AdapterError("no such file or folder", path=p)
    cfg = p.parent / CONFIG_NAME
    return p, (cfg if cfg.is_file() else None)


def non_lora_tensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors a PEFT adapter saves beside its update's factors, as stored.

    What PEFT 0.21 saves there (adapter name dropped), all loaded back by ``PeftModel.from_pretrained``::

        base_model.model.<module>.<param>                        modules_to_save (e.g. classifier.weight)
        base_model.model.<emb>.token_adapter.trainable_tokens_delta   trainable_token_indices
        base_model.model.<module>[.base_layer].bias              bias="all" / "lora_only"
        base_model.model.<emb>[.base_layer].weight               save_embedding_layers

    The factors of every method read here are left out: LoRA / AdaLoRA / DoRA (``lora_*``), LoHa
    (``hada_*``), LoKr (``lokr_*``), VeRA (``vera_lambda_*`` and the shared ``vera_A`` / ``vera_B``).

    Parameters
    ----------
    path : str or os.PathLike
        The adapter folder or its weights file.

    Returns
    -------
    dict[str, ndarray]
    """
    weights, _ = _resolve(path)
    tensors = read_tensors(weights)
    return {k: v for k, v in tensors.items() if _KEY_RE.match(k) is None and _METHOD_KEY_RE.search(k) is None}


def _group(tensors, source, adapter_name):
    """Group tensor keys by module: ``{module: {part: (key, array)}}``, plus ignored keys and biases."""
    groups, ignored, biases, names = {}, [], {}, set()
    for key, arr in tensors.items():
        m = _KEY_RE.match(key)
        if m is None:
            ignored.append(key)
            continue
        module = key_module(m, names, adapter_name)
        if module is None:
            continue
        if m["param"] == "bias":  # lora_bias=True trains lora_B.bias (d_out,): not part of ΔW
            if m["part"] == "lora_B":
                biases[module] = arr
            else:
                ignored.append(key)
            continue
        add_part(groups, module, m["part"], key, arr, source=source)
    check_one_adapter(names, adapter_name, source=source)
    return groups, ignored, biases


def _check_2d(key, x, what, source):
    if x.ndim != 2:
        raise AdapterError(f"expected a 2-D {what} matrix, got shape {tuple(x.shape)}", path=source, key=key)


def _check_inner(a_key, A, b_key, B, source):
    if B.shape[1] != A.shape[0]:
        raise AdapterError(f"expected lora_B of shape (d_out, r) with r = {A.shape[0]} = rows of "
                           f"'{a_key}' {tuple(A.shape)}, got {tuple(B.shape)}", path=source, key=b_key)


def _linear_factors(parts, source):
    """``(A, B, kind, weight_shape, keys)`` of a linear or convolution LoRA module."""
    (a_key, A), (b_key, B) = parts["lora_A"], parts["lora_B"]
    if A.ndim not in (2, 3, 4, 5):
        raise AdapterError("expected lora_A of shape (r, d_in), or (r, c_in, *kernel) for a convolution, "
                           f"got shape {tuple(A.shape)}", path=source, key=a_key)
    if B.ndim != A.ndim:
        raise AdapterError(f"expected a {A.ndim}-D lora_B like '{a_key}' {tuple(A.shape)}, got shape "
                           f"{tuple(B.shape)}", path=source, key=b_key)
    r = A.shape[0]
    if A.ndim == 2:
        _check_inner(a_key, A, b_key, B, source)
        return A, B, "linear", None, (a_key, b_key)
    if any(d != 1 for d in B.shape[2:]):
        raise AdapterError(f"expected the lora_B of a convolution to have a 1×…×1 kernel, got shape "
                           f"{tuple(B.shape)}", path=source, key=b_key)
    if B.shape[1] != r and B.shape[1] > 0 and r % B.shape[1] == 0:
        raise UnsupportedAdapterError(
            f"LoRA on a grouped convolution (groups = {r // B.shape[1]}): lora_B {tuple(B.shape)} is "
            "block-diagonal and PEFT cannot merge it either", path=source, key=b_key)
    _check_inner(a_key, A, b_key, B, source)
    # (c_out, r) @ (r, c_in·∏k): ΔW[o, i, *k] = Σ_r B[o, r] A[r, i, *k]
    return (A.reshape(r, -1), B.reshape(B.shape[0], r), "conv", (B.shape[0], *A.shape[1:]),
            (a_key, b_key))


def _embedding_factors(parts, source):
    """``(lora_A, lora_B)`` = ``(Bᵀ, Aᵀ)`` of a PEFT embedding LoRA."""
    (a_key, A), (b_key, B) = parts["lora_embedding_A"], parts["lora_embedding_B"]
    _check_2d(a_key, A, "(r, num_embeddings)", source)
    _check_2d(b_key, B, "(embedding_dim, r)", source)
    _check_inner(a_key, A, b_key, B, source)
    # ΔW = (B A)ᵀ = Aᵀ Bᵀ: (num_embeddings, r) @ (r, embedding_dim)
    return B.T, A.T, "embedding", (A.shape[1], B.shape[0]), (a_key, b_key)


def _missing(module, parts, source):
    """The AdapterError for a module whose factors do not pair up."""
    pairs = (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B"))
    for x, y in pairs + tuple((b, a) for a, b in pairs):
        if x in parts and y not in parts:
            return AdapterError(f"expected a matching '{module}.{y}' tensor, got none", path=source,
                                key=parts[x][0])
    key = next(iter(parts.values()))[0]
    return AdapterError("expected lora_A with lora_B (or lora_embedding_A with lora_embedding_B), got "
                        f"{sorted(parts)}", path=source, key=key)


def _lora_module(name, parts, settings, source, alpha_arg):
    if "lora_A" in parts and "lora_B" in parts:
        A, B, kind, shape, keys = _linear_factors(parts, source)
    elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
        A, B, kind, shape, keys = _embedding_factors(parts, source)
    else:
        raise _missing(name, parts, source)
    stored_r = A.shape[0]
    a_shape = tuple(dict(parts.values())[keys[0]].shape)
    meta = {"format": "peft", "peft_type": "LORA", "keys": keys}
    fan = bool(settings and settings.fan_in_fan_out and kind == "linear")
    if kind == "linear":
        shape = (A.shape[1], B.shape[0]) if fan else (B.shape[0], A.shape[1])
    meta["fan_in_fan_out"] = fan
    if "lora_magnitude_vector" in parts:
        m_key, m = parts["lora_magnitude_vector"]
        d_out = B.shape[0]
        if kind == "embedding" or m.size != d_out:
            raise AdapterError(f"expected a DoRA magnitude of shape ({d_out},) (one per output row of a linear or "
                               f"conv layer), got {tuple(m.shape)}", path=source, key=m_key)
        # ΔW here is DoRA's directional part s·B·A; W' − W needs W (analysis.io.dora)
        meta.update(dora=True, magnitude=m.reshape(-1), update="directional part s·B·A (DoRA)")
    if settings is None:
        scale = None if alpha_arg is None else alpha_arg / stored_r
        meta.update(r=stored_r, alpha=alpha_arg, use_rslora=None)
    else:
        r, alpha, r_key, a_key = settings.rank_alpha(name)
        if r != stored_r:
            where = "r" if r_key is None else f"rank_pattern[{r_key!r}]"
            raise AdapterError(f"expected rank {r} ({CONFIG_NAME} {where}), got shape {a_shape} "
                               f"(rank {stored_r})", path=source, key=keys[0])
        scale = settings.scale(r, alpha)
        meta.update(r=r, alpha=alpha, use_rslora=settings.use_rslora, rank_pattern_key=r_key,
                    alpha_pattern_key=a_key)
    return LowRank(A, B, scale, name=name, source=source, kind=kind, weight_shape=shape, meta=meta)


def _adalora_module(name, parts, settings, source):
    for p in ("lora_A", "lora_E", "lora_B"):
        if p not in parts:
            key = next(iter(parts.values()))[0]
            raise AdapterError(f"expected AdaLoRA tensors lora_A, lora_E and lora_B for '{name}', "
                               f"got no {p}", path=source, key=key)
    (a_key, A), (e_key, E), (b_key, B) = parts["lora_A"], parts["lora_E"], parts["lora_B"]
    _check_2d(a_key, A, "(r, d_in)", source)
    _check_2d(b_key, B, "(d_out, r)", source)
    _check_inner(a_key, A, b_key, B, source)
    r = A.shape[0]
    if E.shape not in ((r, 1), (r,)):
        raise AdapterError(f"expected lora_E of shape ({r}, 1), got {tuple(E.shape)}", path=source, key=e_key)
    expected, pat_key = adalora_rank(settings, name)
    if expected != r:
        where = "init_r" if pat_key is None else f"rank_pattern[{pat_key!r}] (sum of the mask)"
        raise AdapterError(f"expected rank {expected} ({CONFIG_NAME} {where}), got shape {tuple(A.shape)} "
                           f"(rank {r})", path=source, key=a_key)
    # PEFT after loading: ranknum is copied from the layer built with init_r (0 if pruned to
    # rank 0); scaling = lora_alpha, or the module's current rank when lora_alpha <= 0.
    ranknum = float(settings.r) if r > 0 else 0.0
    scaling = settings.alpha if settings.alpha > 0 else float(r)
    A_eff = A * E.reshape(r, 1)  # (r, d_in) ⊙ (r, 1)
    fan = settings.fan_in_fan_out
    meta = {"format": "peft", "peft_type": "ADALORA", "keys": (a_key, b_key, e_key), "r": r,
            "alpha": settings.alpha, "init_r": settings.r, "ranknum": ranknum, "scaling": scaling,
            "fan_in_fan_out": fan, "rank_pattern_key": pat_key}
    shape = (A.shape[1], B.shape[0]) if fan else (B.shape[0], A.shape[1])
    return LowRank(A_eff, B, scaling / (ranknum + 1e-5), name=name, source=source, kind="linear",
                   weight_shape=shape, meta=meta)


def load_peft(path: str | os.PathLike[str], *, alpha: float | None = None,
              tensors: dict[str, np.ndarray] | None = None, adapter_name: str | None = None, lazy: bool = False,
              config: dict[str, Any] | None = None, **options: Any) -> Adapter:
    """Read a PEFT LoRA or AdaLoRA adapter.

    Parameters
    ----------
    path : str or os.PathLike
        The adapter folder, or its weights file (``adapter_model.safetensors``,
        legacy ``adapter_model.bin``, or any file with PEFT keys).
        ``adapter_config.json`` is read from the same folder when present.
    alpha : float, optional
        Scale numerator for a weights file without ``adapter_config.json``:
        scale = alpha / r. Ignored (with a note) when the config stores α.
    tensors : dict[str, ndarray], optional
        The tensors of ``path`` if the caller already read them.
    adapter_name : str, optional
        Select one adapter when the keys still carry adapter names
        (``…lora_A.<name>.weight``, as in a raw model state dict).
    config : dict, optional
        The parsed ``adapter_config.json``, with ``tensors``, for an adapter
        that is not on disk (``path`` is then only its label in messages).
    lazy : bool
        For a safetensors LoRA adapter: check keys, shapes and ranks from the
        header now and read each module's factors (validating their values)
        only when it is accessed, returning a
        :class:`~analysis.io.lazy.LazyAdapter`. Other files (pickles, AdaLoRA,
        non-float tensors, ``lora_bias``) are read eagerly as usual.

    Returns
    -------
    Adapter
        ``format="peft"``; module names as in the base model
        (``model.layers.0.self_attn.q_proj``), so ``name + ".weight"`` is the
        base tensor. Without a config the scale is None unless ``alpha`` is
        given (results that need it raise MissingAlphaError).

    Raises
    ------
    AdapterError
        Malformed config or tensors: missing or unpaired factors, wrong ndim,
        A/B inner-dimension or config-rank mismatch, NaN / Inf, unsafe pickle.
    UnsupportedAdapterError
        Non-LoRA methods (IA3, OFT, prompt tuning, …; LoHa, LoKr and VeRA are read),
        unconverted PiSSA / OLoRA / CorDA / LoRA-GA / LoftQ and other variants
        whose update is not ``s · B A``.
    """
    if alpha is not None and not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {alpha!r}")
    if options:
        raise TypeError(f"load_peft() got unexpected options {sorted(options)}; a PEFT adapter takes "
                        "alpha= and adapter_name=")
    if config is not None and tensors is not None:  # in memory (analysis.io.peft_live)
        weights, cfg_path, cfg, lazy = Path(str(path)), Path(f"{path} [{CONFIG_NAME}]"), dict(config), False
    else:
        weights, cfg_path = _resolve(path)
        cfg = read_config(cfg_path) if cfg_path is not None else None  # type: ignore[assignment]
    if cfg is not None and str(cfg.get("peft_type")).upper() in PEFT_METHODS:  # LoHa, LoKr, VeRA
        return load_peft_method(path, weights, cfg, cfg_path, read_tensors(weights) if tensors is None else tensors,
                                adapter_name=adapter_name)
    settings = parse_settings(cfg, cfg_path) if cfg is not None else None
    notes = list(settings.notes) if settings else []
    reader = None
    if lazy and tensors is None and weights.suffix == ".safetensors" and (
            settings is None or settings.peft_type == "LORA"):
        reader = SafetensorsFile(weights)
        # shape-only stand-ins: every structural check below runs on the header alone
        tensors = {k: placeholder(s) for k, s in reader.shapes.items()} if reader.all_float else None
        reader = reader if reader.all_float else None
    if tensors is None:
        tensors = read_tensors(weights)
    source = str(weights)
    if settings is None:
        lyco = next((k for k in tensors if any(f".{p}" in k for p in ("hada_w1_a", "lokr_w1", "vera_lambda_b"))), None)
        if lyco is not None:
            raise UnsupportedAdapterError(
                f"PEFT LoHa / LoKr / VeRA tensors without {CONFIG_NAME}: their scale α / r (and VeRA's layout) "
                "is stored only in the config; keep the adapter folder together", path=source, key=lyco)
    groups, ignored, biases = _group(tensors, source, adapter_name)
    if reader is not None and biases:  # lora_bias values are kept in meta: read the file eagerly
        reader, tensors = None, read_tensors(weights)
        groups, ignored, biases = _group(tensors, source, adapter_name)
    if not groups:
        sample = ", ".join(list(tensors)[:3]) or "none"
        raise AdapterError("expected PEFT LoRA tensors (keys ending in lora_A.weight / lora_B.weight or "
                           f"lora_embedding_A / lora_embedding_B), got none; first keys: {sample}", path=source)
    variant = sorted({c for k in ignored for c in k.split(".") if c.startswith("lora_") and c not in _PARTS})
    if variant and settings is None:
        raise UnsupportedAdapterError(
            f"tensors of an unknown LoRA variant ({', '.join(variant)}) and no {CONFIG_NAME} to say which: "
            "the update may not be s·B·A", path=source, key=next(k for k in ignored if variant[0] in k))
    dora = sorted(n for n, parts in groups.items() if "lora_magnitude_vector" in parts)
    if dora and settings is None:
        notes.append("DoRA (lora_magnitude_vector) without adapter_config.json: modules read as their "
                     "directional part s·B·A")
    ada_keys = [p["lora_E"][0] for p in groups.values() if "lora_E" in p]
    is_ada = settings is not None and settings.peft_type == "ADALORA"
    if ada_keys and not is_ada:
        if settings is None:
            raise UnsupportedAdapterError(
                f"AdaLoRA tensors without {CONFIG_NAME}: ΔW = B·(A ⊙ E)·lora_alpha / init_r needs "
                "lora_alpha and init_r from the config", path=source, key=ada_keys[0])
        raise AdapterError(f"expected no lora_E in a peft_type {settings.peft_type!r} adapter, got one "
                           f"({cfg_path} says it is not AdaLoRA)", path=source, key=ada_keys[0])
    modules = {}
    for name in sorted(groups):
        parts = groups[name]
        if is_ada:
            modules[name] = _adalora_module(name, parts, settings, source)
        else:
            modules[name] = _lora_module(name, parts, settings, source, alpha)
    _add_notes(notes, settings, cfg_path, weights, alpha, ignored, biases, modules)
    if reader is not None and not is_ada:
        return _lazy(reader, groups, modules, settings, source, alpha, path, cfg, notes)
    return Adapter(modules, path=str(path), format="peft", config=cfg, notes=notes)


def _lazy(reader, groups, modules, settings, source, alpha, path, cfg, notes):
    """A LazyAdapter whose loaders re-run ``_lora_module`` on the factors read from ``reader``."""
    def loader(name):
        parts = groups[name]

        def load():
            real = {p: (key, reader.read(key)) for p, (key, _) in parts.items()}  # (r, d_in), (d_out, r)
            return _lora_module(name, real, settings, source, alpha)
        return load

    return LazyAdapter({n: loader(n) for n in modules}, {n: m.r for n, m in modules.items()},
                       path=str(path), format="peft", config=cfg, notes=notes,
                       shapes={n: m.shape for n, m in modules.items()})


def _add_notes(notes, settings, cfg_path, weights, alpha, ignored, biases, modules):
    if settings is None:
        if alpha is None:
            notes.append(f"no {CONFIG_NAME} beside {weights.name}: lora_alpha, use_rslora and the "
                         "rank / alpha patterns are unknown; the scale is unset (pass alpha= for alpha / r)")
        else:
            notes.append(f"no {CONFIG_NAME} beside {weights.name}: scale = alpha / r from alpha={alpha:g} "
                         "(use_rslora and alpha_pattern cannot be known)")
    else:
        if alpha is not None:
            notes.append(f"alpha={alpha:g} ignored: {cfg_path.name} stores lora_alpha = {settings.alpha:g}")
        if settings.peft_type == "ADALORA":
            notes.append(f"AdaLoRA: ΔW = B·(A ⊙ E)·scaling / (ranknum + 1e-5) as PEFT computes it after "
                         f"loading (ranknum = init_r = {settings.r}, scaling = lora_alpha); lora_A holds A ⊙ E")
            pruned = [m for m in modules.values() if m.r not in (0, settings.r)]
            if settings.alpha <= 0 and pruned:
                notes.append(f"AdaLoRA with lora_alpha <= 0: PEFT scales by the module's rank, which is init_r "
                             f"= {settings.r} in training but the pruned rank after loading; ΔW here is PEFT's "
                             f"after loading, the trained ΔW of {len(pruned)} pruned modules is init_r / rank "
                             "times larger")
        if settings.fan_in_fan_out:
            notes.append("fan_in_fan_out: ΔW is given as (d_out, d_in); the stored (Conv1D) weight is its "
                         "transpose (weight_shape)")
    if biases:
        for name, b in biases.items():
            if name in modules:
                modules[name].meta["lora_B_bias"] = b
        notes.append(f"lora_bias: {len(biases)} modules train a bias s·lora_B.bias that shifts the output, "
                     "not W; kept in meta['lora_B_bias'] and not part of ΔW")
    if ignored:
        notes.append(f"ignored {len(ignored)} tensors that are not LoRA factors (e.g. "
                     f"{', '.join(ignored[:3])}): base-layer copies, modules_to_save, biases")
    if any(m.kind == "embedding" for m in modules.values()):
        notes.append("embedding LoRA: lora_A = lora_embedding_Bᵀ, lora_B = lora_embedding_Aᵀ, so ΔW has "
                     "the table's (num_embeddings, embedding_dim) shape")
