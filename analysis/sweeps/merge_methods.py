"""How each merge method builds one module's update, and DARE's random draws in PEFT's order.

Three families, each the update PEFT's ``add_weighted_adapter`` builds for the combination type of that name:

exact from the factors (no dense ΔW)
    ``cat`` (Σ wᵢ ΔWᵢ, factors stacked) and ``svd`` (its best rank-K approximation, from the exact SVD of the
    stacked factors).
factor-wise (no dense ΔW: PEFT's rules act on the factors)
    ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``: the rule
    (:func:`analysis.metrics.task_arithmetic.combine`) applied to the stacked ``lora_A`` (r, d_in) with weights
    ``sign · √|wᵢ sᵢ|`` and, separately, to the stacked ``lora_B`` (d_out, r) with ``√|wᵢ sᵢ|``; the merged
    update is ``B′ A′`` (scale 1). Equal ranks needed, as PEFT.
dense, one module at a time
    ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd``: the rule acts on the entries of
    each ΔWᵢ = sᵢ Bᵢ Aᵢ (pruning and sign election are entry-wise, so the dense (d_out, d_in) matrices are formed,
    n of them for one module at a time), then the best rank-K approximation of the result (LAPACK SVD in float64;
    PEFT's is float32).

The element-wise stage runs in float32 torch, op for op as PEFT (same bits in, same entries selected).

Randomness (the ``dare_*`` types) reproduces PEFT's draws after ``torch.manual_seed(seed)`` just before
``add_weighted_adapter``: PEFT first creates the new adapter in every module, in the model's module order
(``nn.Linear`` initialisation of lora_A (K, d_in) and lora_B (d_out, K), then its own init of lora_A, per the
first adapter's ``init_lora_weights``), consuming random numbers, and then draws each module's Bernoulli masks
(factor-wise: every adapter's lora_A, then every adapter's lora_B; dense: every adapter's ΔW in the layer's
stored orientation). :class:`DareStream` replays exactly that on a private ``torch.Generator`` (the global one is
left alone); the masks are drawn in the caller's thread in that order, so the result does not depend on the
number of jobs. The model's module order is not in an adapter file: :func:`forward_order` sorts by stack, layer
and the role's place in a block (q, k, v, o, cross-attention, gate, up, down), which is the definition order of
Llama, Mistral, Qwen, Gemma, GPT-2, BERT and T5 blocks — with ``k_proj``, ``v_proj``, ``q_proj`` first where the
layers are not Llama's ``model.layers`` (BART, Whisper, Marian, OPT, CLIP, GPT-J define them so); pass the model's
own order (``[n for n, _ in model.named_modules()]``) for anything else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.core.adapter import natural_key
from analysis.core.lowrank import LowRank
from analysis.core.truncate import from_svd
from analysis.errors import AdapterError
from analysis.io.roles import module_role
from analysis.metrics.task_arithmetic import RANDOM_RULES, combine, draw_masks

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import torch

__all__ = ["MERGE_METHODS", "EXACT_METHODS", "FACTOR_METHODS", "DENSE_METHODS", "PRUNING_METHODS", "MergeSpec",
           "rule_of", "forward_order", "DareStream", "factor_merge", "dense_merge", "draw_shapes", "init_shapes"]

EXACT_METHODS = ("cat", "svd")
FACTOR_METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
DENSE_METHODS = ("ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
MERGE_METHODS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                 "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
#: Methods that take ``density``.
PRUNING_METHODS = tuple(m for m in MERGE_METHODS if m not in ("linear", "cat", "svd"))

# a role's place in a transformer block, in definition order (Llama, GPT-2, BERT, T5 …)
_ROLE_RANK = {r: i for i, r in enumerate(("q", "k", "v", "qkv", "o", "cross_q", "cross_k", "cross_v", "cross_o",
                                          "gate", "up", "gate_up", "down", "embedding", "other"))}
# BART / Whisper / Marian / OPT / CLIP / GPT-J / GPT-Neo attention defines k_proj, v_proj, q_proj, out_proj
_KVQ = {"k": 0, "v": 1, "q": 2, "cross_k": 5, "cross_v": 6, "cross_q": 7}
_LLAMA_LIKE = re.compile(r"(^|\.)model\.layers\.\d")
_KVQ_NAMES = re.compile(r"(^|[._])(q_proj|k_proj|v_proj)$")
_STACK_RANK = {s: i for i, s in enumerate(("text_encoder", "text_encoder_2", "text_encoder_3", "vision_encoder",
                                           "encoder", "decoder", "unet down", "unet mid", "unet up",
                                           "transformer_blocks", "single_transformer_blocks"))}


def rule_of(method: str) -> str:
    """The element-wise rule of a method (``"ties_svd"`` -> ``"ties"``; ``svd`` -> ``linear``)."""
    if method == "svd":
        return "linear"
    return method[:-4] if method.endswith("_svd") else method


def forward_order(names: Iterable[str], order: Sequence[str] | None = None) -> list[str]:
    """The modules in the order PEFT visits them (its DARE draws follow it).

    Parameters
    ----------
    names : iterable of str
    order : sequence of str, optional
        The model's own module order (``named_modules()`` names, with or without PEFT's ``base_model.model.``
        prefix); names it lacks go last, in the default order.

    Returns
    -------
    list of str
    """
    def key(n):
        p = module_role(n)
        layer = -1 if p.layer is None else p.layer
        role = _ROLE_RANK.get(p.role, 99)
        if p.role in _KVQ and _KVQ_NAMES.search(n) and not _LLAMA_LIKE.search(n):
            role = _KVQ[p.role]
        return (_STACK_RANK.get(p.stack, len(_STACK_RANK)), p.stack, layer, role, natural_key(n))

    names = sorted(names, key=key)
    if order is None:
        return names
    pos: dict[str, int] = {}
    for i, n in enumerate(order):
        pos.setdefault(str(n).removeprefix("base_model.model."), i)
    default = {n: i for i, n in enumerate(names)}
    return sorted(names, key=lambda n: (0, pos[n]) if n in pos else (1, default[n]))


def init_shapes(shape: tuple[int, int], rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes PEFT initialises for a new adapter of rank K on a layer with ΔW (d_out, d_in): lora_A, lora_B."""
    d_out, d_in = shape
    return (rank, d_in), (d_out, rank)


def draw_shapes(method: str, lrs: Sequence[LowRank]) -> list[tuple[int, ...]]:
    """Shapes of the masks PEFT draws for one module, in its order (see the module docstring)."""
    if method in DENSE_METHODS:
        return [tuple(reversed(lr.shape)) if lr.meta.get("fan_in_fan_out") else tuple(lr.shape) for lr in lrs]
    return [tuple(lr.lora_A.shape) for lr in lrs] + [tuple(lr.lora_B.shape) for lr in lrs]


class DareStream:
    """PEFT's random stream for one ``add_weighted_adapter`` call, replayed on a private generator.

    Parameters
    ----------
    seed : int
        The ``torch.manual_seed`` before PEFT's call.
    inits : sequence of tuple
        For every module the new adapter is created in, in the model's order: ``(shape, rank)``.
    init_lora_weights : bool or str
        The first adapter's ``init_lora_weights`` (True, False or ``"gaussian"``; others are refused: their
        initialisations read the base weights).
    """

    def __init__(self, seed: int, inits: Iterable[tuple[tuple[int, int], int]], *,
                 init_lora_weights: bool | str = True) -> None:
        import torch
        from torch import nn

        if isinstance(init_lora_weights, str) and init_lora_weights.lower() != "gaussian":
            raise AdapterError(f"expected init_lora_weights True, False or 'gaussian' to replay PEFT's random draws, "
                               f"got {init_lora_weights!r} (an initialisation that reads the base weights)",
                               key="init_lora_weights")
        self.generator = torch.Generator().manual_seed(int(seed))
        g = self.generator
        for shape, rank in inits:  # inject_adapter: nn.Linear(d_in, K), nn.Linear(K, d_out), then PEFT's init
            a_shape, b_shape = init_shapes(shape, rank)
            nn.init.kaiming_uniform_(torch.empty(a_shape), a=math.sqrt(5), generator=g)
            nn.init.kaiming_uniform_(torch.empty(b_shape), a=math.sqrt(5), generator=g)
            if init_lora_weights is True:
                nn.init.kaiming_uniform_(torch.empty(a_shape), a=math.sqrt(5), generator=g)
            elif isinstance(init_lora_weights, str):
                nn.init.normal_(torch.empty(a_shape), std=1 / rank, generator=g)

    def masks(self, method: str, lrs: Sequence[LowRank], density: float) -> list[torch.Tensor] | None:
        """The masks of the next module (in PEFT's order), or None for a method without draws."""
        if rule_of(method) not in RANDOM_RULES:
            return None
        return draw_masks(draw_shapes(method, lrs), density, self.generator)


def _f32(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


@dataclass(frozen=True)
class MergeSpec:
    """One merge's settings, for the per-module functions."""

    method: str
    rank: int | None = None
    density: float | None = None
    majority_sign_method: str = "total"


def factor_merge(lrs: Sequence[LowRank], weights: Sequence[float], spec: MergeSpec,
                 masks: Sequence[torch.Tensor] | None = None, *, name: str = "") -> LowRank:
    """A factor-wise method on one module: the rule on the lora_A and lora_B stacks separately.

    Parameters
    ----------
    lrs : sequence of LowRank
        The module in each adapter having it, one rank r, plain LoRA factors.
    weights : sequence of float
    spec : MergeSpec
    masks : list of torch.Tensor, optional
        DARE masks: one per lora_A, then one per lora_B.

    Returns
    -------
    LowRank
        ``lora_A`` (r, d_in), ``lora_B`` (d_out, r) as PEFT computes them (float32 values), scale 1.
    """
    rule = rule_of(spec.method)
    # PEFT: weight * scaling (Python floats); ignored: LowRank.scale is Optional, but every scale is known here
    ws = [float(w) * lr.scale for lr, w in zip(lrs, weights)]  # type: ignore[operator]
    wa = [math.sqrt(abs(x)) * (1 if x >= 0 else -1) for x in ws]  # the sign on A only
    wb = [math.sqrt(abs(x)) for x in ws]
    n = len(lrs)
    ma, mb = (None, None) if masks is None else (masks[:n], masks[n:])
    kw: dict[str, Any] = dict(rule=rule, density=spec.density, majority_sign_method=spec.majority_sign_method)
    A = combine([_f32(lr.lora_A) for lr in lrs], wa, masks=ma, **kw)  # (r, d_in)
    B = combine([_f32(lr.lora_B) for lr in lrs], wb, masks=mb, **kw)  # (d_out, r)
    return LowRank(A.numpy().astype(np.float64), B.numpy().astype(np.float64), 1.0, name=name,
                   kind=lrs[0].kind, weight_shape=lrs[0].weight_shape)


def _dense_f32(lr):
    """PEFT's ``get_delta_weight`` in float32: (B @ A) · s, in the layer's stored orientation."""
    D = (_f32(lr.lora_B) @ _f32(lr.lora_A)) * lr.scale  # (d_out, d_in)
    return D.T if lr.meta.get("fan_in_fan_out") else D


def dense_merge(lrs: Sequence[LowRank], weights: Sequence[float], spec: MergeSpec,
                masks: Sequence[torch.Tensor] | None = None, *, name: str = "") -> tuple[LowRank, float]:
    """A dense method on one module: the rule on the entries of every ΔWᵢ, then the best rank-K approximation.

    Memory: the n dense (d_out, d_in) float32 matrices of this module (and their masks) at once.

    Parameters
    ----------
    lrs : sequence of LowRank
    weights : sequence of float
    spec : MergeSpec
        ``rank`` is K.
    masks : list of torch.Tensor, optional
        DARE masks, one per ΔWᵢ (stored orientation).

    Returns
    -------
    (LowRank, float)
        The rank-K update (balanced factors, scale 1) and ‖·‖_F² of the combined matrix it approximates.
    """
    rule = rule_of(spec.method)
    merged = combine([_dense_f32(lr) for lr in lrs], weights, rule=rule, density=spec.density,
                     majority_sign_method=spec.majority_sign_method, masks=masks)
    M = merged.numpy().astype(np.float64)
    if lrs[0].meta.get("fan_in_fan_out"):
        M = M.T  # (d_out, d_in)
    del merged
    U, S, Vt = np.linalg.svd(M, full_matrices=False)  # (d_out, q), (q,), (q, d_in)
    k = min(int(spec.rank), S.size)  # type: ignore[arg-type]  # a dense method always has a rank (K) by now
    out = from_svd(U[:, :k], S[:k], Vt[:k].T, alpha=float(max(k, 1)), name=name, kind=lrs[0].kind,
                   weight_shape=lrs[0].weight_shape)
    return out, float(np.sum(S * S))
