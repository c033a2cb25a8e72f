"""Rank reduction of every module of an adapter: which k to keep, and what the truncation keeps.

The truncation itself (Eckart–Young from the factored SVD, written as balanced LoRA factors) is
:func:`analysis.core.truncate.truncate`; here the ranks are chosen (one rank, an energy, or a PEFT
``rank_pattern``) and the kept energy and relative error reported per module.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from analysis.core.adapter import natural_key, split_name
from analysis.core.threads import map_ordered
from analysis.core.truncate import truncate
from analysis.errors import AdapterError
from analysis.metrics.pair import TIE_RTOL, near_tied_cuts
from analysis.metrics.spectrum import energy_retained, rank_for_energy, relative_error
from analysis.sweeps.common import progress as progress_bar
from analysis.sweeps.common import require_adapter

__all__ = ["resize_adapter", "ResizeResult", "read_rank_pattern", "rank_from_pattern"]


def read_rank_pattern(spec):
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
    if "rank_pattern" in spec or "r" in spec:
        r, pattern = spec.get("r"), spec.get("rank_pattern") or {}
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


def rank_from_pattern(name, r, pattern, *, source=None):
    """The rank PEFT would give module ``name`` (None when nothing applies)."""
    from analysis.io.peft_config import get_pattern_key  # PEFT's own matching rule

    key = get_pattern_key(pattern, name, source, "rank_pattern")
    return pattern.get(key, r)


@dataclass(frozen=True)
class ResizeResult:
    """Truncated updates and what they keep.

    Attributes
    ----------
    modules : dict[str, LowRank]
        The rank-k updates, ready for :func:`~analysis.io.peft_writer.write_peft_adapter`.
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, r, rank, k, r_written,
        energy, rel_error, fro, fro_kept, sigma_k, sigma_next, cut_tied``.
    alpha : float
        ``lora_alpha`` of the result (each module's scale is α / r_written).
    source : Adapter
    notes : tuple of str
    """

    modules: dict
    frame: object
    alpha: float
    source: object = None
    notes: tuple = field(default_factory=tuple)

    def to_frame(self):
        """The per-module table."""
        return self.frame.copy()

    def write(self, out, *, overwrite=False, base=None):
        """Save in the source's format, whole or not at all; returns the config written.

        A kohya / LyCORIS source is written as a kohya ``.safetensors`` file (same key style, one
        ``alpha`` per module; LoHa / LoKr modules become rank-k LoRA modules) that sd-scripts and
        lycoris-lora load. Otherwise a PEFT adapter folder: everything of a PEFT source that is not a LoRA
        factor is carried over unchanged: the config's other fields (task type, ``modules_to_save``, base
        model) and the tensors of ``modules_to_save``, so that ``PeftModel.from_pretrained`` loads the result
        for every task type.

        ``base`` (a path or an open base) is needed for a kohya source with LyCORIS LoHa / LoKr modules
        stored flattened (their files do not say whether the layer is a convolution): their layer shapes
        are read from it, so that a conv is written with its kernel.
        """
        from analysis.io.peft import non_lora_tensors
        from analysis.io.peft_writer import write_peft_adapter

        src = self.source
        dora = [n for n, lr in (src.items() if src is not None else ()) if lr.meta.get("dora")]
        if dora:  # the table is about the directional part; a LoRA written from it would drop the magnitudes
            raise AdapterError(f"{len(dora)} DoRA module(s): resize truncates the directional part s·B·A only and "
                               "cannot write an adapter that applies W' = m ⊙ (W + ΔW) / ‖W + ΔW‖ as the source does",
                               path=src.path, key=dora[0])
        if getattr(src, "format", None) == "kohya":
            from analysis.io.kohya_writer import write_kohya_file

            return write_kohya_file(out, self.modules, metadata=src.config, overwrite=overwrite,
                                    shapes=_kohya_shapes(src, base))
        peft_source = getattr(src, "format", None) == "peft"
        return write_peft_adapter(out, self.modules, lora_alpha=self.alpha, overwrite=overwrite,
                                  config=getattr(src, "config", None) if peft_source else None,
                                  extra_tensors=non_lora_tensors(src.path) if peft_source else None)


def _kohya_shapes(src, base):
    """Layer weight shapes, from ``base``, of the LyCORIS modules of ``src`` stored flattened."""
    flat = [n for n, lr in src.items() if lr.meta.get("algo") in ("loha", "lokr") and lr.weight_shape is None]
    if not flat:
        return {}
    if base is None:
        raise AdapterError(f"{len(flat)} LyCORIS LoHa / LoKr module(s) store their factors flattened, so the file "
                           "does not say whether the layer is a convolution; pass the base model (--base) to "
                           "write them with their layer's shape", path=src.path, key=flat[0])
    from analysis.io.base import open_base

    if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
        with open_base(base) as bw:
            return {name: tuple(W.shape) for name, W in bw.weights(flat)}
    return {name: tuple(W.shape) for name, W in base.weights(flat)}


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


def resize_adapter(adapter, *, rank=None, energy=None, pattern=None, alpha=None, tie_rtol=TIE_RTOL,
                   progress=False, jobs=None):
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
    alpha : float, optional
        ``lora_alpha`` written; default the source's ``lora_alpha`` (PEFT) or
        else the most common new rank.
    tie_rtol : float
        ``cut_tied`` flags cuts where σ_k − σ_{k+1} ≤ tie_rtol · σ₁ (the
        truncation is then not unique).
    progress : bool
        Progress bar on standard error.
    jobs : int, optional
        Modules worked on at once (threads, BLAS pinned to one thread in each; see
        :mod:`analysis.core.threads`); default: the cores available to the process. The result does not
        depend on it. When ``lora_alpha`` is known before the ranks (``alpha`` given, or the source's
        config has one) each module is read, truncated and its SVD dropped in one go (at most ``jobs``
        SVDs in memory); otherwise (the default α depends on every module's new rank) the SVDs are kept
        from the first pass over the modules (the ranks) to the second (the truncations).

    Returns
    -------
    ResizeResult
    """
    import pandas as pd

    if sum(x is not None for x in (rank, energy, pattern)) != 1:
        raise ValueError("give exactly one of rank=, energy= or pattern=")
    # a kohya source is written back as kohya (its own names); every other format as PEFT (base names)
    require_adapter(adapter, base_names=None if getattr(adapter, "format", None) == "kohya"
                    else "resize (a PEFT adapter names the base model's modules)")
    if rank is not None and (int(rank) != rank or rank < 1):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    if pattern is not None and not isinstance(pattern, tuple):
        pattern = read_rank_pattern(pattern)
    names = sorted(adapter, key=natural_key)

    def target(name):
        lr = adapter[name]
        S = lr.singular_values()  # (n,); raises MissingAlphaError if α is unknown
        if rank is not None:
            t = int(rank)
        elif energy is not None:
            t = rank_for_energy(S, energy)
        else:
            t = rank_from_pattern(name, pattern[0], pattern[1], source=adapter.path)
            t = lr.r if t is None else t
        return name, S, min(t, S.size)

    def cut(item, alpha):
        name, S, k = item
        lr = adapter[name]
        out = truncate(lr, k, alpha=alpha)
        lr.clear_cache()
        tot = float(np.sum(S * S))
        e = float(energy_retained(S)[k - 1]) if k and tot > 0 else float(tot == 0)  # a zero update keeps all
        layer, module = split_name(name)
        return out, {"name": name, "layer": layer, "module": module, "r": lr.r, "rank": int(S.size), "k": k,
                     "r_written": out.r, "energy": e, "rel_error": float(relative_error(e)),
                     "fro": float(np.sqrt(tot)), "fro_kept": float(np.sqrt(np.sum(S[:k] ** 2))),
                     "sigma_k": float(S[k - 1]) if k else 0.0,
                     "sigma_next": float(S[k]) if k < S.size else 0.0,
                     "cut_tied": k in near_tied_cuts(S, rtol=tie_rtol)}

    alpha = float(alpha) if alpha is not None else _source_alpha(adapter)
    if alpha is not None:  # one pass: each module's SVD dropped as soon as it is truncated
        done = map_ordered(lambda name: cut(target(name), alpha), names, jobs=jobs)
    else:  # the default α needs every new rank first: the SVDs stay cached from the first pass to the second
        ranked = list(progress_bar(map_ordered(target, names, jobs=jobs), enabled=progress, total=len(names),
                                   desc="ranks"))
        alpha = _default_alpha(adapter, [k for _, _, k in ranked])
        done = map_ordered(lambda item: cut(item, alpha), ranked, jobs=jobs)
    modules, rows = {}, []
    for out, row in progress_bar(done, enabled=progress, total=len(names)):
        modules[row["name"]] = out
        rows.append(row)
    notes = []
    if any(lr.kind == "merged" for lr in adapter.values()):
        notes.append("merged (loralib MergedLinear) modules are truncated as one update of the whole weight")
    if any("lora_B_bias" in lr.meta for lr in adapter.values()):
        notes.append("lora_bias terms (s·lora_B.bias) are not part of ΔW and are not written")
    if adapter.config.get("modules_to_save"):
        notes.append(f"modules_to_save {adapter.config['modules_to_save']!r} are not low-rank: copied unchanged")
    return ResizeResult(modules=modules, frame=pd.DataFrame(rows), alpha=alpha, source=adapter, notes=tuple(notes))
