"""Rank reduction of every module of an adapter: which k to keep, and what the truncation keeps.

The truncation itself (Eckart–Young from the factored SVD, written as balanced LoRA factors) is
:func:`analysis.core.truncate.truncate`; here the ranks are chosen and the kept energy and relative error
reported per module. Criteria (one of them, or none to keep every module's rank):

- one rank (``rank``), an energy share per module (``energy``), a PEFT ``rank_pattern`` (``pattern``);
- kohya's dynamic criteria ``sv_ratio``, ``sv_fro``, ``sv_cumulative`` with ``max_rank`` as kohya's
  ``--new_rank`` cap (:mod:`analysis.sweeps.resize_criteria`: the same ranks as sd-scripts' ``resize_lora.py``);
- a file size (``size``, MB of the written weights file): per-module ranks by a global greedy on energy per byte.

``layer_weights`` multiplies each module's update by a weight first (:mod:`analysis.sweeps.layer_weights`;
weight 0 leaves the module out). A DoRA adapter with ``base`` becomes a plain LoRA: each module's effective
update W′ − W (:func:`analysis.io.dora.dora_delta`, formed densely one module at a time) is replaced by its best
rank-k approximation (LAPACK SVD, float64); without a base its table describes the directional part and it
cannot be written.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.core.adapter import natural_key, split_name
from analysis.core.lowrank import LowRank
from analysis.core.truncate import from_svd, truncate
from analysis.errors import AdapterError, InputError
from analysis.io.base import base_matrix, base_tensor_name, open_base, read_base
from analysis.io.dora import dora_delta
from analysis.io.kohya_writer import flattened_shapes, source_header, write_kohya_file
from analysis.io.peft import non_lora_tensors
from analysis.io.peft_config import get_pattern_key  # PEFT's own matching rule
from analysis.io.peft_writer import peft_factors, write_peft_adapter
from analysis.metrics.pair import TIE_RTOL, near_tied_cuts
from analysis.metrics.spectrum import energy_retained, rank_for_energy, relative_error
from analysis.sweeps.common import require_adapter
from analysis.sweeps.driver import sweep_modules
from analysis.sweeps.layer_weights import layer_weights as weights_of
from analysis.sweeps.resize_criteria import KOHYA_METHODS, kohya_rank, safetensors_overhead, size_ranks

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    import pandas as pd

    from analysis.core.adapter import Adapter
    from analysis.io.base import BaseWeights
    from analysis.sweeps.progress import Progress

__all__ = ["resize_adapter", "ResizeResult", "read_rank_pattern", "rank_from_pattern", "CRITERIA"]

#: The rank criteria of :func:`resize_adapter` (at most one at a time).
CRITERIA = ("rank", "energy", "pattern", *KOHYA_METHODS, "size")
#: Bytes per stored value in the written files (float32).
_BYTES = 4


def read_rank_pattern(spec: str | os.PathLike[str] | dict[str, Any]) -> tuple[int | None, dict[str, int]]:
    """Read a rank pattern: ``(default_r or None, {pattern: rank})``.

    Parameters
    ----------
    spec : str, os.PathLike or dict
        A JSON file or dict: the ``--json`` output of ``python -m analysis.rank``
        (its ``lora_config``), a PEFT ``adapter_config.json`` / LoraConfig dict
        (``r`` and ``rank_pattern``), or a flat ``{pattern: rank}``.

    Returns
    -------
    tuple
        ``(r, pattern)``; ``r`` is None when the spec gives no default.
    """
    path = None
    if not isinstance(spec, dict):
        path = str(spec)
        try:
            with open(path, encoding="utf-8") as fh:
                spec = json.load(fh)
        except json.JSONDecodeError as e:
            raise AdapterError(f"expected JSON, got invalid JSON ({e.msg} at line {e.lineno})", path=path) from None
        except UnicodeDecodeError as e:
            raise AdapterError(f"expected UTF-8 JSON text, got byte {e.object[e.start]:#04x} at offset {e.start}",
                               path=path) from None
        except RecursionError:
            raise AdapterError("expected a rank pattern, got JSON nested too deeply to read", path=path) from None
    if not isinstance(spec, dict):
        raise AdapterError(f"expected a JSON object, got {type(spec).__name__}", path=path)
    if isinstance(spec.get("lora_config"), dict):
        spec = spec["lora_config"]
    # ignored: spec is a dict here, but mypy widens it back to the parameter's type after spec = spec[...] (Any)
    if "rank_pattern" in spec or "r" in spec:  # type: ignore[operator]
        r, pattern = spec.get("r"), spec.get("rank_pattern") or {}  # type: ignore[union-attr]
    else:
        r, pattern = None, spec
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    if r is not None and not ok(r):
        raise AdapterError(f"expected a non-negative integer rank, got {r!r}", path=path, key="r")
    if not isinstance(pattern, dict) or not all(ok(v) for v in pattern.values()):
        raise AdapterError(f"expected an object mapping module patterns to non-negative integer ranks, got "
                           f"{str(pattern)[:120]}", path=path, key="rank_pattern")
    for key in pattern:
        try:
            re.compile(key)
        except re.error as e:
            raise AdapterError(f"expected a regular expression as module pattern, got {key!r} ({e})", path=path,
                               key="rank_pattern") from None
    return r, dict(pattern)


def rank_from_pattern(name: str, r: int | None, pattern: Mapping[str, int], *,
                      source: str | None = None) -> int | None:
    """The rank PEFT would give module ``name`` (None when nothing applies)."""
    key = get_pattern_key(pattern, name, source, "rank_pattern")
    return pattern.get(key, r)


@dataclass(frozen=True)
class ResizeResult:
    """Truncated updates and what they keep.

    Attributes
    ----------
    modules : dict[str, LowRank]
        The rank-k updates, ready for :func:`~analysis.io.peft_writer.write_peft_adapter` (or the kohya writer).
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, r, rank, k, r_written, energy, rel_error, fro, fro_kept,
        sigma_k, sigma_next, cut_tied``, ``weight`` (the layer weight applied) and ``update``
        (``"lora"``, or ``"dora effective"`` for a DoRA module converted with its base).
    alpha : float
        ``lora_alpha`` of a PEFT result (each module's scale is α / r_written).
    source : Adapter
    notes : tuple of str
    criterion : str
        What chose the ranks (``"rank 8"``, ``"sv_fro 0.9"``, ``"size 2 MB"``, ``"kept"``).
    dropped : tuple of str
        Modules left out (layer weight 0).
    dora_converted : bool
        The DoRA modules were replaced by their effective update's best rank-k approximation (``base`` given).
    """

    modules: dict
    frame: pd.DataFrame
    alpha: float
    source: Adapter | None = None
    notes: tuple = field(default_factory=tuple)
    criterion: str = ""
    dropped: tuple = ()
    dora_converted: bool = False

    def to_frame(self) -> pd.DataFrame:
        """The per-module table."""
        return self.frame.copy()

    def peft_bytes(self) -> int:
        """Bytes of the PEFT weights file :meth:`write` writes (``adapter_model.safetensors``), serialised here."""
        from safetensors.numpy import save

        tensors = {f"base_model.model.{n}.{suffix}": arr for n, lr in self.modules.items()
                   for suffix, arr in peft_factors(lr).items()}
        if getattr(self.source, "format", None) == "peft":  # so source is an Adapter (ignored below: not narrowed)
            tensors.update(non_lora_tensors(self.source.path))  # type: ignore[union-attr]
        return len(save(tensors, metadata={"format": "pt"}))

    def write(self, out: str | os.PathLike[str], *, force: bool = False,
              base: str | os.PathLike[str] | BaseWeights | None = None) -> dict[str, Any]:
        """Save in the source's format, whole or not at all; returns the config written.

        A kohya / LyCORIS source is written as a kohya ``.safetensors`` file (same key style, one
        ``alpha`` per module, the source's whole ``ss_*`` header with ``ss_network_dim`` / ``ss_network_alpha``
        (``"Dynamic"`` for kohya's criteria and whenever modules differ), ``ss_training_comment`` and the
        additional-networks hashes updated; LoHa / LoKr modules become rank-k LoRA modules) that sd-scripts and
        lycoris-lora load. Otherwise a PEFT adapter folder: everything of a PEFT source that is not a LoRA
        factor is carried over unchanged: the config's other fields (task type, ``modules_to_save``, base
        model) and the tensors of ``modules_to_save``, so that ``PeftModel.from_pretrained`` loads the result
        for every task type; a converted DoRA source is written as a plain LoRA (``use_dora`` false).

        ``base`` (a path or an open base) is needed for a kohya source with LyCORIS LoHa / LoKr modules
        stored flattened (their files do not say whether the layer is a convolution): their layer shapes
        are read from it, so that a conv is written with its kernel.
        """
        # ignored: source is None only in a ResizeResult not made by resize_adapter (the checks below allow it)
        src: Adapter = self.source  # type: ignore[assignment]
        dora = [n for n, lr in (src.items() if src is not None else ()) if lr.meta.get("dora")]
        if dora and not self.dora_converted:  # the table is about the directional part
            raise AdapterError(f"{len(dora)} DoRA module(s): without the base model resize truncates the directional "
                               "part s·B·A only and cannot write an adapter that applies W' = m ⊙ (W + ΔW) / ‖W + ΔW‖ "
                               "as the source does; pass the base (--base, base=) to write the best rank-k "
                               "approximation of W' − W as a plain LoRA", path=src.path, key=dora[0])
        if not self.modules:
            raise AdapterError("every module has layer weight 0: there is no adapter to write; nothing was written",
                               path=out)
        if getattr(src, "format", None) == "kohya":
            dynamic = self.criterion.split(" ")[0] in KOHYA_METHODS
            return write_kohya_file(out, self.modules, metadata=source_header(src), force=force,
                                    shapes=flattened_shapes(dict(src.items()), base, path=src.path), comment=f"resized ({self.criterion})",
                                    dynamic=dynamic)
        peft_source = getattr(src, "format", None) == "peft"
        cfg = dict(getattr(src, "config", None) or {}) if peft_source else None
        if cfg is not None and self.dora_converted:
            cfg.pop("use_dora", None)
        return write_peft_adapter(out, self.modules, lora_alpha=self.alpha, force=force, config=cfg,
                                  extra_tensors=non_lora_tensors(src.path) if peft_source else None)


def _source_alpha(adapter):
    """``lora_alpha`` of a PEFT LoRA source's config, or ``None``."""
    a = adapter.config.get("lora_alpha") if adapter.config.get("peft_type", "LORA") == "LORA" else None
    return float(a) if isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 else None


def _default_alpha(adapter, ks):
    a = _source_alpha(adapter)
    if a is not None:
        return a
    counts = Counter(max(k, 1) for k in ks)
    return float(max(counts, key=lambda k: (counts[k], k)))


# ---------------------------------------------------------------------------------------------------------------
# One module: its (weighted) update, spectrum and truncation
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Module:
    """One module's update as resize sees it: LoRA factors (weighted), or a DoRA module's dense W′ − W."""

    name: str
    lr: LowRank  # the source module
    weight: float
    dense: bool  # DoRA converted with its base: the SVD of the dense effective update
    base: object = None

    def update(self):
        """The weighted LoRA update (B scaled by the weight; A and the scale as stored)."""
        lr = self.lr
        if self.weight == 1.0:
            return lr
        B = lr.lora_B.astype(np.float64) * self.weight  # (d_out, r)
        return LowRank(lr.lora_A, B, lr.scale, name=lr.name, source=lr.source, kind=lr.kind,
                       weight_shape=lr.weight_shape, meta=dict(lr.meta))

    def dense_svd(self):
        """(U, S, V) of weight · (W′ − W), float64 (dense LAPACK SVD; one module's matrices in memory)."""
        lr = self.lr
        (_, W_raw), = read_base(self.base, [base_tensor_name(self.name, lr)])
        D = dora_delta(lr, base_matrix(W_raw, lr, name=lr.name, path=getattr(self.base, "path", None)))
        D *= self.weight
        U, S, Vt = np.linalg.svd(D, full_matrices=False)  # (d_out, q), (q,), (q, d_in)
        return U, S, Vt.T

    def spectrum(self):
        """Singular values of the (weighted) update, descending, and the dense SVD when there is one."""
        if self.dense:
            U, S, V = self.dense_svd()
            return S, (U, S, V)
        return self.update().singular_values(), None  # raises MissingAlphaError if α is unknown

    def kohya_values(self, S):
        """kohya's spectrum: of ``lora_up @ lora_down`` (the scale not applied)."""
        s = abs(self.lr.scale) if (not self.dense and self.lr.scale) else 1.0
        return S / s

    def cut(self, k, alpha, svd=None):
        """The best rank-k approximation as LoRA factors for scale alpha / k (zero directions past the rank)."""
        if self.dense:
            U, S, V = svd if svd is not None else self.dense_svd()
            U, S, V = U[:, :k], S[:k], V[:, :k]
            kind = "linear" if self.lr.kind == "merged" else self.lr.kind
            meta = {"format": "peft", "fan_in_fan_out": bool(self.lr.meta.get("fan_in_fan_out")),
                    "source_r": self.lr.r, "update": "dora effective"}
            return from_svd(U, S, V, alpha=alpha, name=self.name, kind=kind, weight_shape=self.lr.weight_shape,
                            meta=meta, source=self.lr.source)
        out = truncate(self.update(), k, alpha=alpha)
        if out.r < k:  # kohya's rule can ask for more directions than ΔW has: zero ones, as it writes round-off ones
            pad = k - out.r
            A = np.vstack([out.lora_A, np.zeros((pad, out.lora_A.shape[1]))])
            B = np.hstack([out.lora_B, np.zeros((out.lora_B.shape[0], pad))])
            out = LowRank(A * (out.scale * k / alpha), B, alpha / k, name=out.name, source=out.source, kind=out.kind,
                          weight_shape=out.weight_shape, meta={**out.meta, "r": k, "alpha": alpha})
        return out

    def keep(self, alpha):
        """The update as it is (weighted), for scale alpha / r."""
        lr = self.update()
        s = alpha / lr.r
        A = lr.lora_A.astype(np.float64) * (lr.scale / s)
        kind = "linear" if lr.kind == "merged" else lr.kind
        meta = {"format": "peft", "fan_in_fan_out": bool(lr.meta.get("fan_in_fan_out")), "source_r": lr.r,
                "r": lr.r, "alpha": alpha}
        return LowRank(A, lr.lora_B.astype(np.float64), s, name=lr.name, source=lr.source, kind=kind,
                       weight_shape=lr.weight_shape, meta=meta)


def _row(m, S, k, out, tie_rtol):
    tot = float(np.sum(S * S))
    kk = min(k, S.size)
    e = float(energy_retained(S)[kk - 1]) if kk and tot > 0 else float(tot == 0)  # a zero update keeps all
    layer, module = split_name(m.name)
    return {"name": m.name, "layer": layer, "module": module, "r": m.lr.r, "rank": int(np.sum(S > 0)), "k": k,
            "r_written": out.r, "energy": e, "rel_error": float(relative_error(e)), "fro": float(np.sqrt(tot)),
            "fro_kept": float(np.sqrt(np.sum(S[:kk] ** 2))), "sigma_k": float(S[kk - 1]) if kk else 0.0,
            "sigma_next": float(S[kk]) if kk < S.size else 0.0, "cut_tied": kk in near_tied_cuts(S, rtol=tie_rtol),
            "weight": m.weight, "update": "dora effective" if m.dense else "lora"}


def _criterion(kw):
    given = {k: v for k, v in kw.items() if v is not None}
    if len(given) > 1:
        raise InputError(f"give at most one of {', '.join(c + '=' for c in CRITERIA)} (got {', '.join(given)})")
    if not given:
        return None, None
    (k, v), = given.items()
    return k, v


def _check_criterion(name, value, max_rank):
    if name == "rank" and (int(value) != value or value < 1):
        raise InputError(f"rank must be a positive integer, got {value!r}")
    if name == "energy" and not 0 < value <= 1:
        raise InputError(f"energy must be in (0, 1], got {value!r}")
    if name in KOHYA_METHODS and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
        raise InputError(f"{name} needs a positive number (kohya's --dynamic_param), got {value!r}")
    if name == "size" and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
        raise InputError(f"size must be a positive number of MB, got {value!r}")
    if max_rank is not None and name not in KOHYA_METHODS + ("size",):
        raise InputError("max_rank (kohya's --new_rank cap) applies to sv_ratio, sv_fro, sv_cumulative and size only")
    if max_rank is not None and (int(max_rank) != max_rank or max_rank < 1):
        raise InputError(f"max_rank must be a positive integer, got {max_rank!r}")


def _size_budget(adapter, mods, size_mb, kohya):
    """Bytes the directions may use: the size minus the header, the alphas and the carried tensors."""
    if kohya:
        keys = [f"{m.name}.{p}" for m in mods for p in ("lora_down.weight", "lora_up.weight", "alpha")]
        meta = {k: v for k, v in source_header(adapter).items() if k.startswith("ss_")}
        meta.update(ss_training_comment="x" * 200, sshs_model_hash="0" * 64, sshs_legacy_hash="0" * 8)
        fixed = safetensors_overhead(keys, meta) + _BYTES * len(mods)
    else:
        extra = non_lora_tensors(adapter.path) if adapter.format == "peft" else {}
        keys = [f"base_model.model.{m.name}.lora_{p}.weight" for m in mods for p in ("A", "B")] + list(extra)
        fixed = safetensors_overhead(keys, {"format": "pt"}) + sum(int(v.nbytes) for v in extra.values())
    return size_mb * 1e6 - fixed


def resize_adapter(adapter: Adapter, *, rank: int | None = None, energy: float | None = None,
                   pattern: (str | os.PathLike[str] | dict[str, Any] | tuple[int | None, Mapping[str, int]]
                             | None) = None,
                   sv_ratio: float | None = None, sv_fro: float | None = None, sv_cumulative: float | None = None,
                   size: float | None = None, max_rank: int | None = None,
                   layer_weights: str | Sequence[float] | Mapping[str, float] | None = None,
                   base: str | os.PathLike[str] | BaseWeights | Mapping[str, np.ndarray] | None = None,
                   alpha: float | None = None, tie_rtol: float = TIE_RTOL, progress: bool | Progress = False,
                   jobs: int | None = None) -> ResizeResult:
    """Truncate every module of an adapter to its best rank-k approximation.

    Parameters
    ----------
    adapter : Adapter
        PEFT, loralib (α known), kohya / LyCORIS (written back as a kohya
        file, see :meth:`ResizeResult.write`) or any format with dotted module names.
    rank : int, optional
        Keep k = min(rank, numerical rank) directions everywhere.
    energy : float in (0, 1], optional
        Per module, the smallest k keeping this fraction of ‖ΔW‖_F².
    pattern : str, os.PathLike, dict or tuple, optional
        Per-module ranks, see :func:`read_rank_pattern` (or its ``(r, pattern)``
        result); modules it does not cover keep their rank.
    sv_ratio, sv_fro, sv_cumulative : float, optional
        kohya's dynamic criteria (``resize_lora.py --dynamic_method … --dynamic_param``): the same ranks as its
        script (:func:`analysis.sweeps.resize_criteria.kohya_rank`), capped at ``max_rank``; a kohya source's
        per-module alpha becomes ``scale · k`` as kohya writes it.
    size : float, optional
        MB (10⁶ bytes) of the written weights file (``adapter_model.safetensors`` or the kohya file): per-module
        ranks by a global greedy on ‖·‖² per byte (at least one direction per module, at most ``max_rank``).
    max_rank : int, optional
        The cap of the kohya criteria (kohya's ``--new_rank``, whose default there is 4) and of ``size``;
        default: each module's stored rank r.
    layer_weights : str, sequence or Mapping, optional
        Multiply each module's update by a weight first (:func:`analysis.sweeps.layer_weights.layer_weights`;
        ``lora_B`` carries it, α and ``lora_A`` unchanged); weight 0 leaves the module out. Without a criterion
        the ranks are kept and the factors written as they are (B scaled).
    base : str, os.PathLike, BaseWeights or Mapping, optional
        The base model of a DoRA adapter: its modules become plain LoRA modules holding the best rank-k
        approximation of the effective update W′ − W (dense, one module at a time; default k: the module's r).
    alpha : float, optional
        ``lora_alpha`` written (PEFT); default the source's ``lora_alpha`` or else the most common new rank.
    tie_rtol : float
        ``cut_tied`` flags cuts where σ_k − σ_{k+1} ≤ tie_rtol · σ₁ (the truncation is then not unique).
    progress : bool
        Progress bar on standard error.
    jobs : int, optional
        Modules worked on at once (threads, BLAS pinned to one thread in each; see
        :mod:`analysis.core.threads`); default: the cores available to the process. The result does not
        depend on it. When the ranks and α are known module by module, each module is read, truncated and its
        SVD dropped in one go (at most ``jobs`` SVDs in memory); ``size`` and an α that depends on every new rank
        need the spectra of all modules first (for DoRA modules the dense SVD is then taken twice).

    Returns
    -------
    ResizeResult
    """
    import pandas as pd

    crit, value = _criterion({"rank": rank, "energy": energy, "pattern": pattern, "sv_ratio": sv_ratio,
                              "sv_fro": sv_fro, "sv_cumulative": sv_cumulative, "size": size})
    kohya = getattr(adapter, "format", None) == "kohya"
    require_adapter(adapter, base_names=None if kohya else "resize (a PEFT adapter names the base model's modules)")
    dora = [n for n, lr in adapter.items() if lr.meta.get("dora")]
    if crit is None and layer_weights is None and not (dora and base is not None):
        raise InputError(f"give one of {', '.join(c + '=' for c in CRITERIA)}, or layer_weights= (or base= for a "
                         "DoRA adapter) to keep the ranks")
    if crit is not None:
        _check_criterion(crit, value, max_rank)
    if crit == "pattern" and not isinstance(value, tuple):
        value = read_rank_pattern(value)
    names = sorted(adapter, key=natural_key)
    ws, wdesc = weights_of(layer_weights, names) if layer_weights is not None else ({n: 1.0 for n in names}, "")
    dropped = tuple(n for n in names if ws[n] == 0)
    opened = None
    if dora and base is not None and (isinstance(base, (str, bytes)) or hasattr(base, "__fspath__")):
        base = opened = open_base(base)
    try:
        mods = [_Module(n, adapter[n], ws[n], bool(adapter[n].meta.get("dora")) and base is not None, base)
                for n in names if ws[n] != 0]
        modules, rows, alpha = _run(adapter, mods, crit, value, max_rank, alpha, kohya, tie_rtol, progress, jobs)
    finally:
        if opened is not None:
            opened.close()
    notes = []
    if any(lr.kind == "merged" for lr in adapter.values()):
        notes.append("merged (loralib MergedLinear) modules are truncated as one update of the whole weight")
    if any("lora_B_bias" in lr.meta for lr in adapter.values()):
        notes.append("lora_bias terms (s·lora_B.bias) are not part of ΔW and are not written")
    if adapter.config.get("modules_to_save"):
        notes.append(f"modules_to_save {adapter.config['modules_to_save']!r} are not low-rank: copied unchanged")
    if layer_weights is not None:
        notes.append(f"layer weights ({wdesc}) multiply each module's update through lora_B (α and lora_A unchanged)"
                     + (f"; {len(dropped)} module(s) of weight 0 left out (e.g. '{dropped[0]}')" if dropped else ""))
    if dora and base is not None:
        notes.append(f"DoRA: {len(dora)} module(s) written as plain LoRA modules holding the best rank-k approximation "
                     "of the effective update W' − W (energy: the share of ‖W' − W‖² kept)")
    desc = "kept" if crit is None else (f"{crit} {value:g}" if crit in ("rank", "energy", "size", *KOHYA_METHODS)
                                        else "pattern")
    if crit == "size":
        desc += " MB"
    return ResizeResult(modules=modules, frame=pd.DataFrame(rows), alpha=alpha, source=adapter, notes=tuple(notes),
                        criterion=desc, dropped=dropped, dora_converted=bool(dora) and base is not None)


def _target(m, S, crit, value, max_rank, path):
    """The rank one module keeps under a per-module criterion."""
    if crit == "rank":
        return min(int(value), S.size)
    if crit == "energy":
        return rank_for_energy(S, value)
    if crit == "pattern":
        t = rank_from_pattern(m.name, value[0], value[1], source=path)
        return min(m.lr.r if t is None else t, S.size)
    if crit in KOHYA_METHODS:
        return kohya_rank(m.kohya_values(S), min(m.lr.shape), crit, value,
                          max_rank=m.lr.r if max_rank is None else max_rank)
    return m.lr.r if not m.dense else min(m.lr.r, S.size)  # no criterion: the module's r


def _module_alpha(m, k, alpha, kohya):
    """α for one module's factors: a kohya file keeps the module's scale (α = scale · k, as kohya's resize)."""
    if kohya:
        s = abs(m.lr.scale) if m.lr.scale else 1.0
        return s * max(k, 1)
    return alpha


def _run(adapter, mods, crit, value, max_rank, alpha, kohya, tie_rtol, progress, jobs):
    """(modules, rows, alpha): one pass when every module's rank and α are known alone, else two."""
    alpha = float(alpha) if alpha is not None else (None if kohya else _source_alpha(adapter))
    keep = crit is None

    def one(m, _lr):
        if keep and not m.dense:  # layer weights only: the factors as they are, B scaled
            a = _module_alpha(m, m.lr.r, alpha, kohya)
            out = m.keep(a)
            S = m.update().singular_values()
            return out, _row(m, S, m.lr.r, out, tie_rtol)
        S, svd = m.spectrum()
        k = _target(m, S, crit, value, max_rank, adapter.path)
        out = m.cut(k, _module_alpha(m, k, alpha, kohya), svd)
        return out, _row(m, S, k, out, tie_rtol)

    if crit != "size" and (alpha is not None or kohya):
        done = list(sweep_modules(one, mods, modules=lambda m: (m.lr,), jobs=jobs, progress=progress))
    else:  # the ranks (size: all spectra at once) or the default α need every module first
        # the SVDs stay cached for the second pass (dropped there)
        spectra = list(sweep_modules(lambda m: m.spectrum()[0], mods, jobs=jobs, progress=progress, desc="spectra"))
        if crit == "size":
            costs = {m.name: _BYTES * sum(m.lr.shape) for m in mods}
            caps = {m.name: m.lr.r if max_rank is None else int(max_rank) for m in mods}
            budget = _size_budget(adapter, mods, value, kohya)
            ks = size_ranks({m.name: S for m, S in zip(mods, spectra)}, costs, budget, max_ranks=caps)
        else:
            ks = {m.name: _target(m, S, crit, value, max_rank, adapter.path) for m, S in zip(mods, spectra)}
        if alpha is None and not kohya:
            alpha = _default_alpha(adapter, list(ks.values()))

        def two(item, _lr):
            m, S = item
            k = ks[m.name]
            a = _module_alpha(m, k, alpha, kohya)
            out = m.keep(a) if keep and not m.dense else m.cut(k, a)
            return out, _row(m, S, k, out, tie_rtol)

        done = list(sweep_modules(two, zip(mods, spectra), modules=lambda item: (item[0].lr,), jobs=jobs,
                                  progress=progress, total=len(mods)))
    if alpha is None:
        alpha = _default_alpha(adapter, [row["k"] for _, row in done])
    return {row["name"]: out for out, row in done}, [row for _, row in done], alpha
