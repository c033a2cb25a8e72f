"""DoRA's effective update ``W' − W``, which needs the base weight.

PEFT's DoRA merges (``LoraLayer.merge`` with ``use_dora``; ``DoraLinearLayer.get_weight_norm``)::

    V  = W + s · B A                   (d_out, d_in), nn.Linear orientation (a conv kernel flattened)
    W' = (m / ‖V‖_row)[:, None] · V    ‖V‖_row: the 2-norm of each output row, (d_out,)

so ``W' − W`` is not W plus a low-rank matrix. LyCORIS's DoRA (``dora_scale``) is the same (LyCORIS adds the
merge dtype's eps to the norm, a rounding-level term left out here) and, with ``wd_on_output=False``, the norm is
per input channel (``meta["dora_norm"]``). The reader keeps the directional part ``s · B A`` as the
module's :class:`~analysis.core.LowRank` (exact, ``meta["dora"]``, magnitude ``meta["magnitude"]``);
:func:`dora_effective` computes ``W' − W`` from the base, one module at a time, and returns its top
singular triplets by the seeded randomized SVD the full-fine-tune path uses, marked
``meta["update"] = "effective W' − W (DoRA)"`` with the share of ``‖W' − W‖_F²`` they hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter
from analysis.core.randomized import randomized_svd
from analysis.core.truncate import from_svd
from analysis.errors import AdapterError
from analysis.io.base import base_matrix, base_tensor_name, read_base

if TYPE_CHECKING:
    from collections.abc import Mapping

    from numpy.typing import ArrayLike

    from analysis.core.lowrank import LowRank
    from analysis.io.base import BaseWeights

__all__ = ["dora_weight", "dora_delta", "dora_effective"]


def _check(lr: LowRank, W: ArrayLike) -> np.ndarray:
    if not lr.meta.get("dora"):
        raise AdapterError("expected a DoRA module (meta['dora']), got a plain update", path=lr.source,
                           key=lr.name or None)
    W = np.asarray(W, dtype=np.float64)
    if W.shape != lr.shape:
        raise AdapterError(f"expected the base weight in ΔW's (d_out, d_in) orientation {lr.shape}, got {W.shape}",
                           path=lr.source, key=lr.name or None)
    return W


def dora_weight(lr: LowRank, W: ArrayLike) -> np.ndarray:
    """PEFT's merged DoRA weight ``W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖_row``.

    Parameters
    ----------
    lr : LowRank
        A DoRA module as read (``meta["dora"]``, ``meta["magnitude"]`` (d_out,)).
    W : (d_out, d_in) array_like
        Its base weight in ΔW's orientation (see :func:`analysis.io.base.base_matrix`).

    Returns
    -------
    (d_out, d_in) ndarray of float64
    """
    W = _check(lr, W)
    V = W + lr.delta()  # (d_out, d_in)
    m = np.asarray(lr.meta["magnitude"], dtype=np.float64)  # (d_out,) or (c_in,)
    eps = float(lr.meta.get("dora_eps", 0.0))  # an eps added to the norm (0 for PEFT and, as read, LyCORIS)
    if lr.meta.get("dora_norm", "row") == "row":
        norm = np.linalg.norm(V, axis=1)  # (d_out,): the norm of each output row
        return V * (m / (norm + eps))[:, None]
    # LyCORIS wd_on_output=False: the norm of each input channel, over outputs and kernel positions
    c_in = m.size
    V3 = V.reshape(V.shape[0], c_in, -1)  # (d_out, c_in, ∏k)
    norm = np.sqrt(np.sum(V3 * V3, axis=(0, 2)))  # (c_in,)
    return (V3 * (m / (norm + eps))[None, :, None]).reshape(V.shape)


def dora_delta(lr: LowRank, W: ArrayLike) -> np.ndarray:
    """The dense effective update ``W' − W`` of one DoRA module, (d_out, d_in) float64."""
    return dora_weight(lr, W) - _check(lr, W)


def dora_effective(adapter: Adapter, base: BaseWeights | Mapping[str, np.ndarray], *, rank: int | None = None,
                   seed: int = 0) -> Adapter:
    """Replace every DoRA module of an adapter by the top of its effective update ``W' − W``.

    Parameters
    ----------
    adapter : Adapter
        As read by :func:`~analysis.io.load_adapter`; modules without ``meta["dora"]`` are kept as they are.
    base : BaseWeights or Mapping[str, ndarray]
        The base model (:func:`~analysis.io.base.open_base`) or a mapping ``name -> weight``.
    rank : int, optional
        Singular triplets kept per module (default: the module's r, capped at min(d_out, d_in)).
    seed : int
        Seed of the randomized SVD.

    Returns
    -------
    Adapter
        Same names; each DoRA module is a LowRank of ``U diag(S) Vᵀ`` (scale α / k with α = k) with
        ``meta["update"] = "effective W' − W (DoRA)"``, ``meta["energy"]`` = the share of ``‖W' − W‖_F²``
        it holds and ``meta["directional"]`` = the directional LowRank it came from.
    """
    names = [n for n, lr in adapter.items() if lr.meta.get("dora")]
    if not names:
        raise AdapterError("expected DoRA modules (lora_magnitude_vector), got none", path=adapter.path)
    out = dict(adapter.items())
    path = getattr(base, "path", None)
    for name, W_raw in read_base(base, [base_tensor_name(n, adapter[n]) for n in names]):
        lr = next(adapter[n] for n in names if base_tensor_name(n, adapter[n]) == name)
        D = dora_delta(lr, base_matrix(W_raw, lr, name=lr.name, path=path))  # (d_out, d_in)
        k = min(lr.r if rank is None else int(rank), min(D.shape))
        U, S, V = randomized_svd(D, k, seed=seed)
        total = float(np.sum(D * D))
        meta = {**lr.meta, "update": "effective W' − W (DoRA)", "directional": lr,
                "energy": float(np.sum(S * S) / total) if total > 0 else 1.0, "rank_kept": k}
        out[lr.name] = from_svd(U, S, V, alpha=float(k), name=lr.name, kind=lr.kind, weight_shape=lr.weight_shape,
                                meta=meta, source=lr.source)
    notes = [*adapter.notes, f"DoRA: {len(names)} module(s) replaced by the top singular triplets of their "
             "effective update W' − W (randomized SVD, seed {seed}); meta['energy'] is the share of ‖W' − W‖² kept"
             .replace("{seed}", str(seed))]
    return Adapter(out, path=adapter.path, format=adapter.format, config=adapter.config, notes=notes)
