"""How many directions each module keeps: kohya's dynamic criteria and a file-size budget.

kohya sd-scripts' ``networks/resize_lora.py`` (``--dynamic_method sv_ratio | sv_fro | sv_cumulative``,
``--dynamic_param P``, ``--new_rank`` as the cap) decides per module from the singular values S of the module's
dense ``lora_up @ lora_down`` (scale not applied; ``torch.linalg.svd``, so ``min(d_out, d_in)`` values, those
past the LoRA's rank at round-off level). With ``n = len(S)``:

``sv_ratio``
    ``i = #{S > S[0] / P}``
``sv_cumulative``
    ``i = searchsorted(cumsum(S) / ΣS, P) + 1``
``sv_fro``
    ``i = searchsorted(cumsum(S²) / ΣS², P²) + 1``

then ``i`` is clamped to [1, n − 1] and the new rank is ``i + 1`` (one more than the criterion's own count),
1 when ``S[0] ≤ 1e-6`` (a zero update), at most the cap; the module's alpha is ``scale · new_rank`` (its scale
α / r kept). Here S comes exactly from the factors (the round-off tail is zero), padded with zeros to
``min(d_out, d_in)``, so the ranks are kohya's except where a cumulative share lies within float32 round-off
of P. A rank past the update's numerical rank (kohya's + 1 can ask for it) is written with zero directions,
as kohya writes round-off ones.

``size``: the whole adapter fits a byte budget — every module keeps at least one direction and then, globally,
the direction with the largest σ² per byte it costs ((d_out + d_in) · 4 bytes in float32) is added next, until
the next one would not fit (a module whose next direction does not fit takes no more): the greedy that
minimises Σ ‖ΔW − ΔW_k‖² over modules for the bytes spent.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["KOHYA_METHODS", "MIN_SV", "kohya_rank", "size_ranks", "safetensors_overhead"]

#: kohya's dynamic methods.
KOHYA_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
#: kohya's threshold below which the largest singular value means a zero update (rank 1 written).
MIN_SV = 1e-6


def _check_param(method, param):
    if method not in KOHYA_METHODS:
        raise InputError(f"method must be one of {KOHYA_METHODS}, got {method!r}")
    if not isinstance(param, (int, float)) or isinstance(param, bool) or not math.isfinite(param) or param <= 0:
        raise InputError(f"{method} needs a positive number (kohya's --dynamic_param), got {param!r}")


def kohya_rank(S: np.ndarray, n: int, method: str, param: float, *, max_rank: int) -> int:
    """The rank kohya's ``resize_lora.py`` gives one module.

    Parameters
    ----------
    S : (q,) ndarray
        Singular values of ``lora_up @ lora_down`` (without the scale), descending, q ≤ n.
    n : int
        ``min(d_out, d_in)``: the length of kohya's (dense) spectrum; S is padded with zeros to it.
    method : {"sv_ratio", "sv_fro", "sv_cumulative"}
    param : float
        ``--dynamic_param``.
    max_rank : int
        The cap (kohya's ``--new_rank``).

    Returns
    -------
    int
    """
    _check_param(method, param)
    S = np.zeros(max(int(n), 1)) if S.size == 0 else np.concatenate([np.asarray(S, dtype=np.float64),
                                                                      np.zeros(max(int(n) - S.size, 0))])
    if method == "sv_ratio":
        index = int(np.sum(S > S[0] / param))
    elif method == "sv_cumulative":
        total = float(np.sum(S))
        cum = np.cumsum(S) / total if total > 0 else np.ones_like(S)
        index = int(np.searchsorted(cum, param, side="left")) + 1
    else:
        total = float(np.sum(S * S))
        cum = np.cumsum(S * S) / total if total > 0 else np.ones_like(S)
        index = int(np.searchsorted(cum, param * param, side="left")) + 1
    index = max(1, min(index, S.size - 1))
    rank = index + 1
    if S[0] <= MIN_SV:
        return 1
    return min(rank, int(max_rank))


def safetensors_overhead(keys: Iterable[str], metadata: Mapping[str, str] | None = None) -> int:
    """An upper bound on a safetensors file's bytes besides the tensor data: 8 + its JSON header.

    Parameters
    ----------
    keys : iterable of str
        Tensor names.
    metadata : Mapping[str, str], optional

    Returns
    -------
    int
    """
    import json

    per = len('"":{"dtype":"F32","shape":[123456789,123456789,12345,12345],"data_offsets":[123456789012,'
              '123456789012]},')
    meta = len(json.dumps({"__metadata__": dict(metadata or {})}, ensure_ascii=False).encode("utf-8"))
    return 8 + 2 + meta + sum(len(k.encode("utf-8")) + per for k in keys) + 8  # + padding to 8 bytes


def size_ranks(spectra: Mapping[str, np.ndarray], costs: Mapping[str, float], budget: float, *, min_rank: int = 1,
               max_ranks: Mapping[str, int] | None = None) -> dict[str, int]:
    """Per-module ranks that fit ``budget`` bytes, by the global greedy on σ² per byte.

    Parameters
    ----------
    spectra : Mapping[str, ndarray]
        Module -> singular values (with the scale), descending.
    costs : Mapping[str, float]
        Module -> bytes of one more direction ((d_out + d_in) · bytes per value).
    budget : float
        Bytes available to the directions (the file's size minus everything else).
    min_rank : int
        Directions every module keeps (≥ 1: a LoRA module cannot hold rank 0).
    max_ranks : Mapping[str, int], optional
        Per-module caps (default: the number of singular values).

    Returns
    -------
    dict[str, int]

    Raises
    ------
    ValueError
        When even ``min_rank`` directions everywhere do not fit (the message gives the bytes needed).
    """
    import heapq

    caps = {n: min(len(S), (max_ranks or {}).get(n, len(S))) for n, S in spectra.items()}
    ks = {n: min(min_rank, max(caps[n], 1)) for n in spectra}
    used = sum(ks[n] * costs[n] for n in spectra)
    if used > budget:
        raise InputError(f"even {min_rank} direction(s) per module need {used:,.0f} bytes of factors, more than the "
                         f"{max(budget, 0):,.0f} the size leaves for them; give a larger size")
    heap = [(-float(S[ks[n]]) ** 2 / costs[n], n) for n, S in spectra.items() if ks[n] < caps[n]]
    heapq.heapify(heap)
    while heap:
        _, n = heapq.heappop(heap)
        if used + costs[n] > budget:
            continue  # this module's next direction does not fit: it takes no more
        used += costs[n]
        ks[n] += 1
        if ks[n] < caps[n]:
            S = spectra[n]
            heapq.heappush(heap, (-float(S[ks[n]]) ** 2 / costs[n], n))
    return ks
