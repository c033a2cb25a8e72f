"""Task-arithmetic rules on stacked tensors: magnitude pruning, DARE, TIES sign election and disjoint merge.

The rules of PEFT's ``peft.utils.merge_utils`` (the combination types of ``add_weighted_adapter``), written
op for op in float32 torch so that the same inputs give the same bits, and the same random draws the same
masks: the element-wise selections (top-k by magnitude, the sign of a sum near zero) are discrete, so a
float64 re-computation could pick other entries where two magnitudes tie to float32 rounding.

For n task tensors Tᵢ of one shape and weights wᵢ:

``magnitude_prune``
    Σ wᵢ · top_k(Tᵢ), top_k keeping the ``int(density · numel)`` entries of largest magnitude.
``ties``
    Tᵢ′ = top_k(Tᵢ); per entry the elected sign ``sign(Σ Tᵢ′)`` (``"total"``; unweighted, as PEFT) or
    ``sign(Σ sign Tᵢ′)`` (``"frequency"``), ties going to +; then Σ wᵢ Tᵢ′ over the tensors agreeing with it,
    divided by their number (at least 1).
``dare_linear``
    Σ wᵢ · Mᵢ ⊙ Tᵢ / density, Mᵢ Bernoulli(density) masks.
``dare_ties``
    ties with the DARE masks in place of top_k.

With ``density >= 1`` nothing is pruned and no mask is drawn (as PEFT, which also warns). No file formats
here; :mod:`analysis.sweeps.merge_methods` applies the rules to LoRA factors or to one module's dense ΔW.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

__all__ = ["RULES", "SIGN_METHODS", "RANDOM_RULES", "check_density", "magnitude_mask", "draw_masks",
           "combine"]

#: Element-wise combination rules (PEFT's names without the ``_svd`` suffix).
RULES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
#: Rules that draw random masks.
RANDOM_RULES = ("dare_linear", "dare_ties")
#: How TIES elects the sign of each entry.
SIGN_METHODS = ("total", "frequency")


def check_density(rule: str, density: float | None) -> float | None:
    """Validate ``density`` for ``rule``.

    Parameters
    ----------
    rule : str
        The combination rule (``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``).
    density : float or None
        Share of entries kept, in (0, 1], for the pruning rules; None for ``linear``.

    Returns
    -------
    float or None
        ``density`` as a float (None for ``linear``).

    Raises
    ------
    ValueError
        A pruning rule without a density in (0, 1], or ``linear`` with one.
    """
    if rule == "linear":
        if density is not None:
            raise InputError(f"density applies to the pruning methods only, got density={density!r} for linear")
        return None
    if density is None or not isinstance(density, (int, float)) or isinstance(density, bool) \
            or not math.isfinite(density) or not 0 < density <= 1:
        raise InputError(f"method {rule!r} needs a density in (0, 1] (the share of entries kept), got {density!r}")
    return float(density)


def magnitude_mask(t: torch.Tensor, density: float) -> torch.Tensor:
    """PEFT's magnitude pruning mask: 1 at the ``int(density · numel)`` entries of largest ``|t|``.

    Parameters
    ----------
    t : torch.Tensor
        Any shape, float32.
    density : float

    Returns
    -------
    torch.Tensor
        Same shape and dtype, entries 0 or 1 (``torch.topk``'s choice among exact ties, as PEFT).
    """
    import torch

    mask = torch.zeros_like(t).reshape(-1)
    k = int(density * t.numel())
    top = torch.topk(t.abs().reshape(-1), k=k, largest=True)
    mask[top[1]] = 1
    return mask.reshape(t.shape)


def draw_masks(shapes: Sequence[tuple[int, ...]], density: float,
               generator: torch.Generator) -> list[torch.Tensor] | None:
    """DARE's Bernoulli(density) masks, drawn in order from ``generator`` as PEFT draws them.

    Parameters
    ----------
    shapes : sequence of tuple of int
        One shape per task tensor, in PEFT's order.
    density : float
        In (0, 1]; at 1 nothing is drawn (PEFT returns before drawing) and None is returned.
    generator : torch.Generator

    Returns
    -------
    list of torch.Tensor or None
        Float32 0/1 masks, ``torch.bernoulli(torch.full(shape, density))`` each.
    """
    import torch

    if density >= 1:
        return None
    return [torch.bernoulli(torch.full(tuple(s), density, dtype=torch.float32), generator=generator)
            for s in shapes]


def _prune(tensors, rule, density, masks):
    if density is None or density >= 1:
        return list(tensors)
    if rule in ("ties", "magnitude_prune"):
        return [t * magnitude_mask(t, density) for t in tensors]
    if masks is None or len(masks) != len(tensors):
        raise InputError(f"rule {rule!r} needs one drawn mask per tensor ({len(tensors)}), got "
                         f"{None if masks is None else len(masks)}")
    return [(t * m) / density for t, m in zip(tensors, masks)]


def _weighted(stacked, weights):
    w = weights.view(weights.shape + (1,) * (stacked.dim() - weights.dim()))  # (n, 1, …)
    return stacked * w


def _elect(stacked, method):
    """Entries agreeing with the elected sign: (n, …) bool."""
    import torch

    sign = stacked.sign()
    if method == "total":
        magnitude = stacked.sum(dim=0)
    elif method == "frequency":
        magnitude = sign.sum(dim=0)
    else:
        raise InputError(f"majority_sign_method must be one of {SIGN_METHODS}, got {method!r}")
    majority = torch.where(magnitude >= 0, 1, -1)
    return sign == majority


def combine(tensors: Sequence[torch.Tensor], weights: Sequence[float], *, rule: str, density: float | None = None,
            majority_sign_method: str = "total", masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """One merged tensor from n task tensors by a task-arithmetic rule (PEFT's arithmetic, float32).

    Parameters
    ----------
    tensors : sequence of torch.Tensor
        n tensors of one shape, float32 (factors of LoRA or dense ΔWᵢ).
    weights : sequence of float
        wᵢ, made a float32 tensor as PEFT does.
    rule : {"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"}
    density : float, optional
        Share of entries kept, in (0, 1]; needed by every rule but ``linear``.
    majority_sign_method : {"total", "frequency"}
        TIES's sign election (``ties``, ``dare_ties``).
    masks : sequence of torch.Tensor, optional
        The DARE masks (:func:`draw_masks`), needed by the ``dare_*`` rules when density < 1.

    Returns
    -------
    torch.Tensor
        The merged tensor, float32, the shape of one input.
    """
    import torch

    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES}, got {rule!r}")
    if majority_sign_method not in SIGN_METHODS:
        raise InputError(f"majority_sign_method must be one of {SIGN_METHODS}, got {majority_sign_method!r}")
    density = check_density(rule, density)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    if len(tensors) != w.numel():
        raise InputError(f"expected one weight per tensor ({len(tensors)}), got {w.numel()}")
    stacked = torch.stack(_prune(tensors, rule, density, masks), dim=0)  # (n, …)
    if rule in ("ties", "dare_ties"):
        agree = _elect(stacked, majority_sign_method)  # elected on the unweighted tensors, as PEFT
        mixed = (_weighted(stacked, w) * agree).sum(dim=0)
        return mixed / torch.clamp(agree.sum(dim=0), min=1.0)
    return _weighted(stacked, w).sum(dim=0)
