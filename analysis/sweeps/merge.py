"""Merges of LoRA adapters, with the interference report: PEFT's combination types, module by module.

Methods, each the same update PEFT's ``add_weighted_adapter`` builds (combination types of the same name;
like PEFT, the merged adapter has ``lora_alpha = r`` so its scale is 1, written with a ``rank_pattern`` where
module ranks differ; :mod:`analysis.sweeps.merge_methods` has the details):

``cat``
    exact Σ wᵢ ΔWᵢ: ``lora_A = [w₁ s₁ A₁; …]``, ``lora_B = [B₁, …]``, rank Σ rᵢ.
``svd``
    the best rank-K approximation of Σ wᵢ ΔWᵢ (Eckart–Young), from the exact SVD of the stacked factors:
    QR of the (d, Σ rᵢ) stacks and an SVD of a Σ rᵢ × Σ rᵢ core. PEFT forms each dense ΔWᵢ and takes a
    full d_out × d_in SVD. K defaults to the largest rank, as in PEFT.
``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` (factor-wise, no dense ΔW)
    PEFT's rule applied to the stacked ``lora_A`` with weights ``±√|wᵢsᵢ|`` and to the stacked ``lora_B`` with
    ``√|wᵢsᵢ|`` separately (equal ranks needed). Their product has cross terms Bᵢ Aⱼ, so it is **not**
    Σ wᵢ ΔWᵢ; the report gives its exact relative error against that sum.
``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd`` (dense, one module at a time)
    the rule on the entries of every ΔWᵢ, then the best rank-K approximation.

``density`` (share of entries kept) for the pruning methods, ``majority_sign_method`` for TIES, ``seed`` for
DARE: the masks are PEFT's after ``torch.manual_seed(seed)`` just before ``add_weighted_adapter``, drawn in
PEFT's module order (:class:`~analysis.sweeps.merge_methods.DareStream`), so ``jobs`` does not change them.

The interference report per module: pairwise Frobenius cosines, ‖Σ wᵢ ΔWᵢ‖² against Σ ‖wᵢ ΔWᵢ‖²
(reinforcing, cancelling or orthogonal, judged against random directions of the same norms:
:func:`analysis.metrics.cosine.interference`), the energy a rank-K truncation keeps, the exact relative
error of the merged update against Σ wᵢ ΔWᵢ. A module whose merged update vanishes (‖merged‖ ≤ 1e-6 ·
√Σ‖wᵢΔWᵢ‖², e.g. ``A`` and ``A`` with weights −1 and 1) reports energy 0 and is left out of the written
adapter; when every module vanishes, :meth:`MergeResult.write` refuses to write.

Checks before any work and the tensors saved beside the factors: :mod:`analysis.sweeps.merge_checks`.
Output in the sources' format: PEFT (and every format with the base model's names) -> a PEFT folder; kohya /
LyCORIS files -> a kohya ``.safetensors`` file (:func:`analysis.io.kohya_writer.write_kohya_file`).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.core.adapter import split_name
from analysis.core.lowrank import LowRank
from analysis.core.truncate import from_svd
from analysis.errors import AdapterError, InputError
from analysis.io.kohya_writer import flattened_shapes, source_header, write_kohya_file
from analysis.io.peft_writer import write_peft_adapter
from analysis.metrics.cosine import cosine_from_gram, cosine_null_std, frobenius_inner, gram_blocks, interference
from analysis.metrics.task_arithmetic import SIGN_METHODS, check_density
from analysis.sweeps.common import require_adapter
from analysis.sweeps.driver import sweep_modules
from analysis.sweeps.merge_advice import advise_merge
from analysis.sweeps.merge_checks import (HEADS, MergeCheck, MergeWarning, SavedModules, check_mergeable,
                                          merge_saved_modules, merged_config, read_saved_tensors)
from analysis.sweeps.merge_methods import (DENSE_METHODS, FACTOR_METHODS, MERGE_METHODS, PRUNING_METHODS,
                                           DareStream, MergeSpec, dense_merge, factor_merge, forward_order,
                                           rule_of)

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import pandas as pd

    from analysis.core.adapter import Adapter
    from analysis.io.base import BaseWeights
    from analysis.sweeps.merge_advice import MergeAdvice
    from analysis.sweeps.progress import Progress

__all__ = ["MERGE_METHODS", "HEADS", "SIGN_METHODS", "CANCEL_RTOL", "MergeResult", "MergeCheck", "MergeWarning",
           "SavedModules", "merge_adapters", "stacked_update", "check_mergeable", "read_saved_tensors",
           "merge_saved_modules", "merged_config"]

#: A merged module whose ‖update‖_F is at most this share of √Σ‖wᵢΔWᵢ‖² vanishes (float32 inputs resolve ~6e-8).
CANCEL_RTOL = 1e-6


def stacked_update(lrs: Sequence[LowRank], weights: Sequence[float], *, name: str = "") -> LowRank:
    """Σ wᵢ ΔWᵢ as one LowRank with stacked factors (exact; scale 1).

    Parameters
    ----------
    lrs : sequence of LowRank
        Updates of one shape, scales known.
    weights : sequence of float

    Returns
    -------
    LowRank
        ``lora_A`` (Σ r, d_in) = [w₁ s₁ A₁; …], ``lora_B`` (d_out, Σ r) = [B₁, …].
    """
    # ignored: LowRank.scale is Optional; the scales are known here (check_mergeable)
    A = np.vstack([float(w) * lr.scale * lr.lora_A.astype(np.float64)  # type: ignore[operator]
                   for lr, w in zip(lrs, weights)])
    B = np.hstack([lr.lora_B.astype(np.float64) for lr in lrs])
    return LowRank(A, B, 1.0, name=name, kind=lrs[0].kind, weight_shape=lrs[0].weight_shape)


@dataclass(frozen=True, eq=False)
class MergeResult:
    """A merged adapter and its interference report.

    Attributes
    ----------
    modules : dict of str to LowRank
        The merged update per module, ``scale = lora_alpha / r`` (ready for the writers); modules whose
        merged update vanishes are left out (listed in :attr:`cancelled`).
    lora_alpha : float
    method : str
    rank : int or None
        K for ``svd`` and the ``*_svd`` methods.
    weights : tuple of float
    labels : tuple of str
        The adapters merged.
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, n`` (adapters having it), ``r`` (merged rank),
        ``norm2_sum`` (‖Σ wᵢΔWᵢ‖²), ``sum_norm2`` (Σ ‖wᵢΔWᵢ‖²), ``ratio``, ``null_std``, ``z``, ``verdict``,
        ``norm2_merged`` (‖merged‖², exact), ``norm2_combined`` (‖·‖² of what the rank-K truncation
        approximates: Σ wᵢΔWᵢ for cat / svd, the pruned combination for ``*_svd``; NaN for the factor-wise
        methods), ``energy_kept`` (``norm2_merged / norm2_combined``: 1 for cat, the truncation's share for svd
        and ``*_svd``, NaN for the factor-wise methods, 0 for a vanishing module), ``rel_error``
        (‖merged − Σ wᵢΔWᵢ‖ / ‖Σ wᵢΔWᵢ‖, exact), ``cancelled`` (the merged update vanishes).
    cosines : pandas.DataFrame
        One row per module and pair: ``name, a, b, cosine`` (NaN for a zero update), ``inner``
        (⟨ΔWa, ΔWb⟩_F, unweighted) and ``null_sd`` (its sd for random directions of the same norms).
    config : dict
        The config fields carried over by :meth:`write` (:func:`merged_config`) — for a kohya output the first
        adapter's header.
    saved : SavedModules
        The tensors written beside the factors (``modules_to_save`` heads …) and how they were combined.
    warnings, notes : tuple of str
    density, majority_sign_method, seed
        The pruning settings (None where the method has none).
    format : {"peft", "kohya"}
        What :meth:`write` writes.
    cancelled : tuple of str
        Modules whose merged update vanishes (not written).
    flattened : dict of str to LowRank
        kohya sources' LyCORIS LoHa / LoKr modules stored flattened (one per name): :meth:`write` needs the base.
    projections : pandas.DataFrame
        One row per module and adapter having it: ``name, adapter, weight, norm2`` (‖ΔWᵢ‖², unweighted),
        ``inner_sum`` (⟨Σⱼ wⱼΔWⱼ, ΔWᵢ⟩) and ``inner_merged`` (⟨merged, ΔWᵢ⟩), exact from the factors: what
        :func:`~analysis.sweeps.merge_advice.advise_merge` reads.
    """

    modules: dict
    lora_alpha: float
    method: str
    rank: int | None
    weights: tuple
    labels: tuple
    frame: pd.DataFrame
    cosines: pd.DataFrame
    config: dict
    saved: SavedModules = field(default_factory=lambda: SavedModules({}, "none"))
    warnings: tuple = ()
    notes: tuple = ()
    density: float | None = None
    majority_sign_method: str | None = None
    seed: int | None = None
    format: str = "peft"
    cancelled: tuple = ()
    projections: pd.DataFrame | None = None
    flattened: dict = field(default_factory=dict)

    def advice(self) -> MergeAdvice:
        """What the interference statistics say about this merge (:func:`analysis.sweeps.merge_advice.advise_merge`)."""
        return advise_merge(self)

    def write(self, out: str | os.PathLike[str], *, force: bool = False,
              base: str | os.PathLike[str] | BaseWeights | None = None) -> dict[str, Any]:
        """Write the merged adapter in the sources' format (whole or not at all); returns what was written.

        A PEFT folder holds the merged factors and the saved tensors (:attr:`saved`), and its config the fields
        describing them, so ``PeftModel.from_pretrained`` loads it on the base model. kohya sources give a kohya
        ``.safetensors`` file (``out`` names it) with the first source's ``ss_*`` header, ``ss_network_dim`` /
        ``ss_network_alpha`` describing the result. ``base`` (a path or an open base) is needed when a kohya source
        has LyCORIS LoHa / LoKr modules stored flattened (to write a conv with its kernel).

        Raises
        ------
        AdapterError
            Every module's merged update vanishes (the weighted adapters cancel): nothing to write.
        """
        if not self.modules:
            raise AdapterError(f"the merged update vanishes in every module ({len(self.cancelled)}; ‖merged‖ ≤ "
                               f"{CANCEL_RTOL:g} · √Σ‖wᵢΔWᵢ‖²: the weighted adapters cancel), so there is no "
                               "adapter to write; nothing was written", path=out)
        if self.format == "kohya":
            comment = (f"merged ({self.method}) from {len(self.labels)} adapters with weights "
                       f"{', '.join(f'{w:g}' for w in self.weights)}")
            shapes = flattened_shapes(self.flattened, base, path=self.labels[0]) if self.flattened else {}
            return write_kohya_file(out, self.modules, metadata=self.config, force=force, comment=comment,
                                    shapes=shapes)

        cfg = dict(self.config or {})
        return write_peft_adapter(out, self.modules, lora_alpha=self.lora_alpha, config=cfg,
                                  base_model_name_or_path=cfg.get("base_model_name_or_path"),
                                  task_type=cfg.get("task_type"), force=force,
                                  extra_tensors=dict(self.saved.tensors))

    def summary(self) -> dict[str, Any]:
        """Counts of verdicts and the overall numbers (pooled over modules)."""
        fr = self.frame
        tot = float(fr["norm2_sum"].sum())
        sep = float(fr["sum_norm2"].sum())
        merged = float(fr["norm2_merged"].sum())
        combined = float(fr["norm2_combined"].sum())
        if self.method in FACTOR_METHODS:
            kept = float("nan")
        else:  # cat 1; svd / *_svd: what the rank-K truncations keep of what they approximate; 0 if nothing is left
            kept = min(merged / combined, 1.0) if combined > 0 and merged > 0 else 0.0
        return {"verdicts": {k: int(v) for k, v in Counter(fr["verdict"]).items()},
                "ratio_pooled": tot / sep if sep > 0 else float("nan"),
                "norm2_sum_pooled": tot, "norm2_merged_pooled": merged,
                "energy_kept_pooled": kept, "cancelled": len(self.cancelled),
                "median_cosine": _finite_median(self.cosines["cosine"])}


def _finite_median(values):
    """Median of the finite values (NaN when there are none: zero updates have no cosine), without a warning."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def _rescale(lr, alpha, fan_in_fan_out):
    """The same update with ``scale = alpha / r`` (the factor ``scale_old / scale_new`` absorbed by lora_A)."""
    s = alpha / lr.r
    A = lr.lora_A if lr.scale == s else lr.lora_A * (lr.scale / s)
    return LowRank(A, lr.lora_B, s, name=lr.name, kind=lr.kind, weight_shape=lr.weight_shape,
                   meta={"format": "peft", "r": lr.r, "alpha": alpha, "fan_in_fan_out": bool(fan_in_fan_out)})


def _check_args(ads: Sequence[Adapter], weights: Sequence[float] | None, method: str, rank: int | None,
                density: float | None, majority_sign_method: str, labels: Sequence[str] | None,
                heads: str | None) -> tuple[list[float], tuple[str, ...], float | None]:
    """Every argument check before any work; returns (weights, labels, density)."""
    if len(ads) < 2:
        raise InputError(f"expected at least two adapters to merge, got {len(ads)}")
    if method not in MERGE_METHODS:
        raise InputError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    w = [1.0] * len(ads) if weights is None else [float(x) for x in weights]
    if len(w) != len(ads):
        raise InputError(f"expected one weight per adapter ({len(ads)}), got {len(w)}")
    if not all(math.isfinite(x) for x in w):
        raise InputError(f"weights must be finite numbers, got {w}")
    if rank is not None and (int(rank) != rank or rank < 1):
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    if method != "svd" and method not in DENSE_METHODS and rank is not None:
        raise InputError(f"--rank applies to svd and the *_svd methods only, got method {method!r}")
    if method in PRUNING_METHODS:
        density = check_density(rule_of(method), density)
    elif density is not None:
        raise InputError(f"density applies to the pruning methods {PRUNING_METHODS} only, got method {method!r}")
    if majority_sign_method not in SIGN_METHODS:
        raise InputError(f"majority_sign_method must be one of {SIGN_METHODS}, got {majority_sign_method!r}")
    if heads is not None and heads not in HEADS:
        raise InputError(f"heads must be None or one of {HEADS}, got {heads!r}")
    labels = tuple(str(a.path) for a in ads) if labels is None else tuple(str(x) for x in labels)
    if len(labels) != len(ads):
        raise InputError(f"expected one label per adapter ({len(ads)}), got {len(labels)}")
    seen: Counter[str] = Counter()
    unique = []
    for lab in labels:  # the same adapter twice: tell the two apart in the report
        seen[lab] += 1
        unique.append(lab if seen[lab] == 1 else f"{lab} (#{seen[lab]})")
    return w, tuple(unique), density


def _check_names(ads, labels):
    """All kohya (kohya file out) or none (PEFT out): returns the output format."""
    kohya = [a.format == "kohya" for a in ads]
    if any(kohya) and not all(kohya):
        i = kohya.index(not kohya[0])
        raise AdapterError(f"expected {'kohya' if kohya[0] else 'base-model'} module names as in {labels[0]}, got "
                           f"{'kohya' if kohya[i] else 'base-model'} names: resolve the kohya file against the base "
                           "(analysis.io.kohya_names.resolve_adapter_names) or merge files of one format",
                           path=labels[i])
    return "kohya" if kohya[0] else "peft"


def _flattened(mods, merged):
    """Merged modules whose kohya source stores LoHa / LoKr factors flattened (their kernel is unknown)."""
    out = {}
    for m in mods:
        for n, lr in m.items():
            if n in merged and lr.meta.get("algo") in ("loha", "lokr") and lr.weight_shape is None:
                out.setdefault(n, lr)
    return out


def _check_factors(method, mods, labels):
    """Factor-wise methods: one rank everywhere (as PEFT) and plain LoRA factors."""
    if method not in FACTOR_METHODS:
        return
    ranks = {(lab, m[n].r) for lab, m in zip(labels, mods) for n in m}
    rs = sorted({r for _, r in ranks})
    if len(rs) > 1:
        alt = "cat or svd" if method == "linear" else f"cat, svd or {method}_svd"
        raise AdapterError(f"method {method} needs one rank in every module of every adapter (as PEFT: it acts on "
                           f"the factors), got ranks {rs}; use {alt}",
                           path=next(lab for lab, r in ranks if r != rs[0]))
    for lab, m in zip(labels, mods):
        for n, lr in m.items():
            if lr.meta.get("algo") in ("loha", "lokr"):
                raise AdapterError(f"method {method} acts on LoRA factors, got a LyCORIS {lr.meta['algo']} module; "
                                   f"use {method}_svd (dense, one module at a time), svd or cat", path=lab, key=n)


def _interference(lrs, ws, shape, labels, idx, n):
    """(Interference, cosine rows, exact stacked sum) of one module."""
    exact = stacked_update(lrs, ws, name=n)  # Σ wᵢ ΔWᵢ, exact
    B = np.hstack([lr.lora_B.astype(np.float64) * lr.scale for lr in lrs])
    A = np.vstack([lr.lora_A.astype(np.float64) for lr in lrs])
    off = np.concatenate([[0], np.cumsum([lr.r for lr in lrs])])
    G = gram_blocks(B, A, off, B, A, off)  # (n, n) ⟨ΔWᵢ, ΔWⱼ⟩
    it = interference(G, ws, shape)
    C = cosine_from_gram(G)
    cos = [{"name": n, "a": labels[idx[a]], "b": labels[idx[b]], "cosine": C[a, b], "inner": G[a, b],
            "null_sd": math.sqrt(max(G[a, a] * G[b, b], 0.0)) * cosine_null_std(*shape)}
           for a in range(len(idx)) for b in range(a + 1, len(idx))]
    return it, cos, exact, G


def _merge_module(item, spec, K):
    """One module: (merged LowRank or None when it vanishes, report row, cosine rows, projection rows)."""
    n, idx, lrs, ws, shape, labels, masks = item
    it, cos, exact, G = _interference(lrs, ws, shape, labels, idx, n)
    total = it.norm2_sum  # ‖Σ wᵢ ΔWᵢ‖² = wᵀ G w
    if spec.method == "cat":
        out, combined2 = exact, total  # the stacked factors are the sum itself
    elif spec.method == "svd":
        U, S, V = exact.svd()  # exact thin SVD of Σ wᵢ ΔWᵢ from the stacked factors
        k = min(K, S.size)
        out = from_svd(U[:, :k], S[:k], V[:, :k], alpha=float(max(k, 1)), name=n, kind=lrs[0].kind,
                       weight_shape=lrs[0].weight_shape)
        combined2 = float(np.sum(S * S))
    elif spec.method in FACTOR_METHODS:
        out, combined2 = factor_merge(lrs, ws, spec, masks, name=n), float("nan")
    else:  # the rule on the dense ΔWᵢ, then the best rank-K approximation of the combination
        out, combined2 = dense_merge(lrs, ws, MergeSpec(spec.method, K, spec.density, spec.majority_sign_method),
                                     masks, name=n)
    conv = next((lr for lr in lrs if lr.kind == "conv" and lr.weight_shape is not None), None)
    if conv is not None and out.kind != "conv":  # a flattened LoHa / LoKr beside a LoCon: the conv's kernel
        out = LowRank(out.lora_A, out.lora_B, out.scale, name=n, kind="conv", weight_shape=conv.weight_shape)
    merged2 = out.norm() ** 2
    if spec.method == "cat":
        kept = 1.0
    elif spec.method in FACTOR_METHODS:
        kept = float("nan")
    else:
        kept = min(merged2 / combined2, 1.0) if combined2 > 0 else 0.0
    # ‖merged − exact‖ from the factors: one more stacked update
    diff = LowRank(np.vstack([out.lora_A * out.scale, -exact.lora_A]), np.hstack([out.lora_B, exact.lora_B]), 1.0)
    dn = diff.norm()
    err = dn / math.sqrt(total) if total > 0 else (0.0 if dn == 0 else float("inf"))
    gone = math.sqrt(merged2) <= CANCEL_RTOL * math.sqrt(it.sum_norm2) if it.sum_norm2 > 0 else True
    if gone:
        kept, merged2, combined2 = 0.0, 0.0, (0.0 if spec.method in ("cat", "svd") else combined2)
        if spec.method in ("cat", "svd"):
            err = 0.0  # the exact sum is zero to the inputs' precision, and so is the merge
    layer, module = split_name(n)
    row = {"name": n, "layer": layer, "module": module, "n": len(idx), "r": out.r,
           "norm2_sum": 0.0 if gone and spec.method in ("cat", "svd") else total, "sum_norm2": it.sum_norm2,
           "ratio": it.ratio, "null_std": it.null_std, "z": it.z, "verdict": it.verdict, "norm2_merged": merged2,
           "norm2_combined": combined2, "energy_kept": kept, "rel_error": err, "cancelled": bool(gone)}
    proj = [{"name": n, "adapter": labels[i], "weight": ws[j], "norm2": float(G[j, j]),
             "inner_sum": float(G[j] @ np.asarray(ws, dtype=np.float64)),
             "inner_merged": 0.0 if gone else float(frobenius_inner(out, lrs[j]))} for j, i in enumerate(idx)]
    return (None if gone else out), row, cos, proj


def _work(names, mods, w, check, labels, spec, stream):
    """Per-module work items in PEFT's order; DARE masks drawn here, in the caller's thread, in that order."""
    for n in names:
        idx = [i for i, m in enumerate(mods) if n in m]
        lrs = [mods[i][n] for i in idx]
        masks = stream.masks(spec.method, lrs, spec.density) if stream is not None else None
        yield n, idx, lrs, [w[i] for i in idx], check.shapes[n], labels, masks


def _stream(method, names, mods, check, K, seed, ads):
    """PEFT's random stream (DARE only)."""
    if rule_of(method) not in ("dare_linear", "dare_ties"):
        return None
    if method in FACTOR_METHODS:
        K = next(iter(mods[0].values())).r  # one rank everywhere (checked)
    init = (ads[0].config or {}).get("init_lora_weights", True)
    return DareStream(seed, [(check.shapes[n], K) for n in names], init_lora_weights=init)


def merge_adapters(adapters: Sequence[Adapter], *, weights: Sequence[float] | None = None, method: str = "svd",
                   rank: int | None = None, labels: Sequence[str] | None = None, heads: str | None = None,
                   density: float | None = None, majority_sign_method: str = "total", seed: int = 0,
                   jobs: int | None = 1, module_order: Sequence[str] | None = None,
                   progress: bool | Progress = False) -> MergeResult:
    """Merge LoRA adapters into one, with the interference report.

    Parameters
    ----------
    adapters : sequence of Adapter
        Two or more adapters of one base model (modules present in only some are merged over those that
        have them: a missing module is a zero update; said in ``notes``): all with the base model's module
        names (PEFT output) or all kohya files (kohya output).
    weights : sequence of float, optional
        wᵢ (default 1 each; may be negative).
    method : str
        One of :data:`MERGE_METHODS` (see the module docstring).
    rank : int, optional
        K of ``svd`` and the ``*_svd`` methods (default: the largest stored rank, as PEFT).
    labels : sequence of str, optional
        Names of the adapters in the report (default their paths).
    heads : {None, "first", "mean"}, optional
        How to combine the tensors PEFT saves beside the factors when they differ
        (:func:`~analysis.sweeps.merge_checks.merge_saved_modules`).
    density : float, optional
        Share of entries kept, in (0, 1]: required by the pruning methods (``ties``, ``dare_*``,
        ``magnitude_prune`` and their ``_svd`` forms), refused by the others.
    majority_sign_method : {"total", "frequency"}
        TIES's sign election.
    seed : int
        DARE's draws are PEFT's after ``torch.manual_seed(seed)`` (a private generator; the global one is left
        alone).
    jobs : int, optional
        Modules merged at once (threads, BLAS pinned to one thread each; None: the available cores). The result
        does not depend on it.
    module_order : sequence of str, optional
        The model's module order (``[n for n, _ in model.named_modules()]``), which PEFT's DARE draws follow;
        default :func:`~analysis.sweeps.merge_methods.forward_order`'s (Llama-, GPT-2-, BERT-, T5-like blocks).
    progress : bool
        Progress bar on standard error.

    Returns
    -------
    MergeResult

    Raises
    ------
    AdapterError
        Before any work: adapters of different models (:func:`check_mergeable`), kohya names mixed with base
        names, saved tensors that cannot be combined as asked, a factor-wise method with unequal ranks or on
        LyCORIS LoHa / LoKr modules.

    Warns
    -----
    MergeWarning
        The adapters name different base models or task types (modules and shapes agree).

    Notes
    -----
    Memory: the factor-wise and exact methods never form a (d_out, d_in) matrix; the ``*_svd`` methods form
    the n dense ΔWᵢ of one module at a time per job.
    """
    import pandas as pd

    ads = [require_adapter(a) for a in adapters]
    w, labels, density = _check_args(ads, weights, method, rank, density, majority_sign_method, labels, heads)
    fmt = _check_names(ads, labels)
    # every refusal before any work: different models, unsupported modules, ranks, saved tensors
    check = check_mergeable(ads, labels=labels)
    mods = [a.expanded() for a in ads]
    _check_factors(method, mods, labels)
    config = merged_config([a.config for a in ads], heads=heads, labels=labels) if fmt == "peft" else \
        source_header(ads[0])
    saved = merge_saved_modules([read_saved_tensors(a) for a in ads], w, heads=heads, labels=labels)
    for line in check.warnings:
        warnings.warn(line, MergeWarning, stacklevel=2)
    K = int(rank) if rank is not None else max(lr.r for m in mods for lr in m.values())
    spec = MergeSpec(method, K, density, majority_sign_method)
    order = forward_order(check.shapes, module_order)
    stream = _stream(method, order, mods, check, K, seed, ads)
    results = {}
    for out, row, cos, proj in sweep_modules(lambda item: _merge_module(item, spec, K),
                                             _work(order, mods, w, check, labels, spec, stream), jobs=jobs,
                                             progress=progress, total=len(order)):
        results[row["name"]] = (out, row, cos, proj)
    names = list(check.shapes)  # natural order
    rows = [results[n][1] for n in names]
    cos_rows = [c for n in names for c in results[n][2]]
    proj_rows = [p for n in names for p in results[n][3]]
    merged = {n: results[n][0] for n in names if results[n][0] is not None}
    fan = {n: mods[next(i for i, m in enumerate(mods) if n in m)][n].meta.get("fan_in_fan_out", False) for n in names}
    counts = Counter(lr.r for lr in merged.values())
    alpha = float(max(counts, key=lambda r: (counts[r], r))) if counts else float(K)
    merged = {n: _rescale(lr, alpha, fan[n]) for n, lr in merged.items()}
    cancelled = tuple(n for n in names if results[n][0] is None)
    notes = check.notes + saved.notes
    if cancelled and merged:
        notes += (f"{len(cancelled)} of {len(names)} modules vanish in the merge (e.g. '{cancelled[0]}': the weighted "
                  "updates cancel) and are left out of the written adapter",)
    return MergeResult(merged, alpha, method, K if method == "svd" or method in DENSE_METHODS else None, tuple(w),
                       labels, pd.DataFrame(rows),
                       pd.DataFrame(cos_rows, columns=["name", "a", "b", "cosine", "inner", "null_sd"]),
                       config, saved, check.warnings, notes,
                       density=density, majority_sign_method=majority_sign_method if "ties" in method else None,
                       seed=int(seed) if rule_of(method) in ("dare_linear", "dare_ties") else None, format=fmt,
                       cancelled=cancelled, flattened=_flattened(mods, merged) if fmt == "kohya" else {},
                       projections=pd.DataFrame(proj_rows, columns=["name", "adapter", "weight", "norm2", "inner_sum",
                                                                    "inner_merged"]))
