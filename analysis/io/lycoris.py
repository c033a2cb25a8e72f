"""LoHa and LoKr updates (LyCORIS, PEFT) as exact factored :class:`~analysis.core.LowRank`.

Both libraries store the same tensors (PEFT copied LyCORIS's layout); only the scale
rule and the key style differ, and those are settled by the readers (``kohya``,
``peft_methods``). Here a module's tensors, by part name, become ``(lora_A, lora_B)``
with ``scale · lora_B @ lora_A`` equal to the library's ΔW flattened to (d_out, d_in · ∏k):

LoHa (``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in), ``hada_w2_a``, ``hada_w2_b``)::

    ΔW = s · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)            rank ≤ r²  (face-splitting product)

  With Tucker cores (``hada_t1``, ``hada_t2`` (r, r, kh, kw); ``hada_w*_a`` (r, out),
  ``hada_w*_b`` (r, in)) each half is ``einsum("ijkl,ip,jq->pqkl", t, w_a, w_b)``,
  itself an exact rank-r factorisation of the flattened kernel.

LoKr (``lokr_w1`` (a, b) or ``lokr_w1_a`` (a, r) @ ``lokr_w1_b`` (r, b); ``lokr_w2``
(c, d[, kh, kw]) or ``lokr_w2_a`` (c, r) @ ``lokr_w2_b`` (r, d · kh · kw), or a Tucker
``lokr_t2`` (r, r, kh, kw) with ``lokr_w2_a`` (r, c), ``lokr_w2_b`` (r, d))::

    ΔW = s · kron(W1, W2)                              rank = rank(W1) · rank(W2)

  (the kernel of a convolution is ``kron(W1, W2.reshape(c, d · kh · kw))`` once flattened).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.core.lowrank import LowRank
from analysis.errors import AdapterError, UnsupportedAdapterError
from analysis.core.products import face_splitting, full_factors, kronecker, tucker_factors

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

__all__ = ["LOHA_PARTS", "LOKR_PARTS", "LYCORIS_REFUSED", "lycoris_kind", "loha_lowrank", "lokr_lowrank",
           "lycoris_rank"]

LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2")

#: Parts of LyCORIS algorithms whose update is not read, with the reason.
LYCORIS_REFUSED = {
    "oft_blocks": "LyCORIS OFT / BOFT (oft_blocks) rotates W: ΔW = (R − I) W needs the base weight and is not "
                  "low rank",
    "oft_diag": "LyCORIS diag-OFT (oft_diag) rotates W: ΔW = (R − I) W needs the base weight and is not low rank",
    "a1.weight": "LyCORIS GLoRA (a1, a2, b1, b2) adds W·A terms: ΔW needs the base weight",
    "diff": "LyCORIS full fine-tune (diff) stores a dense ΔW, not a low-rank update",
    "w_norm": "LyCORIS norm-layer update (w_norm) is a vector, not a matrix update",
    "on_input": "LyCORIS (IA)³ scales W's rows or columns: ΔW = W · diag(ℓ − 1) needs the base weight",
}


def lycoris_kind(parts: Iterable[str]) -> str | None:
    """``"loha"``, ``"lokr"`` or None from a module's part names."""
    if any(p in parts for p in LOHA_PARTS):
        return "loha"
    if any(p in parts for p in LOKR_PARTS):
        return "lokr"
    return None


def _get(parts, name, path, module, ndims):
    """``(key, array)`` of a required part, with its number of dimensions checked."""
    if name not in parts:
        have = ", ".join(sorted(parts))
        raise AdapterError(f"expected a '{name}' tensor for module '{module}', got only {have}", path=path,
                           key=next(iter(parts.values()))[0])
    key, x = parts[name]
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise AdapterError(f"expected a {want} {name}, got shape {tuple(x.shape)}", path=path, key=key)
    # float64: a product of two float32 numbers is exact in float64, so the face-splitting and Kronecker
    # factors carry no rounding of their own
    return key, np.asarray(x, dtype=np.float64)


def _check(ok, message, path, key):
    if not ok:
        raise AdapterError(message, path=path, key=key)


def _loha_half(parts, i, path, module):
    """``(A, B, kernel)`` of one Hadamard factor ``w{i}_a @ w{i}_b`` (Tucker-rebuilt when ``hada_t{i}``)."""
    t_name = f"hada_t{i}"
    if t_name in parts:
        tk, t = _get(parts, t_name, path, module, (3, 4, 5))
        ak, wa = _get(parts, f"hada_w{i}_a", path, module, (2,))
        bk, wb = _get(parts, f"hada_w{i}_b", path, module, (2,))
        _check(wa.shape[0] == t.shape[0] and wb.shape[0] == t.shape[1],
               f"expected hada_w{i}_a (r, out) and hada_w{i}_b (r, in) with r = {t.shape[0]} from {t_name} "
               f"{tuple(t.shape)}, got {tuple(wa.shape)} and {tuple(wb.shape)}", path, ak)
        A, B = tucker_factors(t, wa, wb)  # (r, in·∏k), (out, r)
        return A, B, tuple(t.shape[2:]), (wa.shape[1], wb.shape[1])
    ak, wa = _get(parts, f"hada_w{i}_a", path, module, (2, 4))
    bk, wb = _get(parts, f"hada_w{i}_b", path, module, (2, 3, 4, 5))
    wa = wa.reshape(wa.shape[0], -1)  # (out, r)
    wb = wb.reshape(wb.shape[0], -1)  # (r, in·∏k)
    _check(wa.shape[1] == wb.shape[0], f"expected hada_w{i}_b of shape (r, in) with r = {wa.shape[1]} "
           f"= columns of hada_w{i}_a {tuple(wa.shape)}, got {tuple(wb.shape)}", path, bk)
    return wb, wa, None, None


def loha_lowrank(name: str, parts: Mapping[str, tuple[str, np.ndarray]], scale: float | None, *, path: str,
                 meta: dict[str, Any]) -> LowRank:
    """The LowRank of a LoHa module.

    Parameters
    ----------
    name : str
        Module name (the adapter's key for it).
    parts : dict[str, tuple[str, ndarray]]
        ``{"hada_w1_a": (key, (out, r)), "hada_w1_b": (key, (r, in)), …}``; Tucker convs also
        ``hada_t1``, ``hada_t2`` (r, r, kh, kw) with ``hada_w*_a`` (r, out), ``hada_w*_b`` (r, in).
    scale : float
        ``s`` in ``ΔW = s · (w1_a w1_b) ⊙ (w2_a w2_b)``.
    path : str
        File named in errors.
    meta : dict
        Format details, completed with ``algo``, ``r``, ``factor_ranks`` and ``keys``.

    Returns
    -------
    LowRank
        ``lora_A`` (r², d_in · ∏k), ``lora_B`` (d_out, r²): the face-splitting factors.
    """
    if ("hada_t1" in parts) != ("hada_t2" in parts):
        have = "hada_t1" if "hada_t1" in parts else "hada_t2"
        raise AdapterError(f"expected both Tucker cores hada_t1 and hada_t2 for module '{name}', got only "
                           f"{have}", path=path, key=parts[have][0])
    A1, B1, k1, io1 = _loha_half(parts, 1, path, name)
    A2, B2, k2, io2 = _loha_half(parts, 2, path, name)
    key = parts["hada_w2_b"][0]
    _check(A1.shape[1] == A2.shape[1] and B1.shape[0] == B2.shape[0] and k1 == k2,
           f"expected the two Hadamard factors of module '{name}' to have one shape, got "
           f"({B1.shape[0]}, {A1.shape[1]}) and ({B2.shape[0]}, {A2.shape[1]})", path, key)
    A, B = face_splitting(A1, B1, A2, B2)  # (r1·r2, d_in), (d_out, r1·r2)
    weight_shape = None if k1 is None else (*io1, *k1)
    meta = {**meta, "algo": "loha", "r": int(A1.shape[0]), "factor_ranks": (int(A1.shape[0]), int(A2.shape[0])),
            "tucker": k1 is not None, "keys": tuple(k for k, _ in parts.values())}
    return LowRank(A, B, scale, name=name, source=str(path), kind="linear" if k1 is None else "conv",
                   weight_shape=weight_shape, meta=meta)


def _lokr_w1(parts, path, module):
    if "lokr_w1" in parts:
        _, w1 = _get(parts, "lokr_w1", path, module, (2,))
        A1, B1 = full_factors(w1)
        return A1, B1, w1.shape
    ak, wa = _get(parts, "lokr_w1_a", path, module, (2,))
    bk, wb = _get(parts, "lokr_w1_b", path, module, (2,))
    _check(wa.shape[1] == wb.shape[0], f"expected lokr_w1_b of shape (r, b) with r = {wa.shape[1]} = columns "
           f"of lokr_w1_a {tuple(wa.shape)}, got {tuple(wb.shape)}", path, bk)
    return wb, wa, (wa.shape[0], wb.shape[1])


def _lokr_w2(parts, path, module):
    """``(A2, B2, (c, d), kernel)`` with ``B2 @ A2`` = W2 flattened to (c, d · ∏kernel)."""
    if "lokr_w2" in parts:
        _, w2 = _get(parts, "lokr_w2", path, module, (2, 3, 4, 5))
        A2, B2 = full_factors(w2.reshape(w2.shape[0], -1))
        return A2, B2, w2.shape[:2], tuple(w2.shape[2:])
    if "lokr_t2" in parts:
        tk, t = _get(parts, "lokr_t2", path, module, (3, 4, 5))
        ak, wa = _get(parts, "lokr_w2_a", path, module, (2,))
        bk, wb = _get(parts, "lokr_w2_b", path, module, (2,))
        _check(wa.shape[0] == t.shape[0] and wb.shape[0] == t.shape[1],
               f"expected lokr_w2_a (r, c) and lokr_w2_b (r, d) with r = {t.shape[0]} from lokr_t2 "
               f"{tuple(t.shape)}, got {tuple(wa.shape)} and {tuple(wb.shape)}", path, ak)
        A2, B2 = tucker_factors(t, wa, wb)
        return A2, B2, (wa.shape[1], wb.shape[1]), tuple(t.shape[2:])
    ak, wa = _get(parts, "lokr_w2_a", path, module, (2,))
    bk, wb = _get(parts, "lokr_w2_b", path, module, (2, 3, 4, 5))
    _check(wa.shape[1] == wb.shape[0], f"expected lokr_w2_b of shape (r, d…) with r = {wa.shape[1]} = "
           f"columns of lokr_w2_a {tuple(wa.shape)}, got {tuple(wb.shape)}", path, bk)
    kernel = tuple(wb.shape[2:])
    return wb.reshape(wb.shape[0], -1), wa, (wa.shape[0], wb.shape[1]), (kernel or None)


def lycoris_rank(parts: Mapping[str, tuple[str, np.ndarray]]) -> int | None:
    """The ``r`` LyCORIS divides α by for a LoKr or LoHa module (None when both LoKr halves are full).

    LoHa: rows of ``hada_w1_b``. LoKr: columns of ``lokr_w1_a``, else of ``lokr_w2_a`` (rows for a
    Tucker ``lokr_t2``); LyCORIS uses scale 1 when both ``lokr_w1`` and ``lokr_w2`` are full.
    """
    if "hada_w1_b" in parts:
        return int(parts["hada_w1_b"][1].shape[0])
    if "lokr_w1_a" in parts:
        return int(parts["lokr_w1_a"][1].shape[1])
    if "lokr_w2_a" in parts:
        wa = parts["lokr_w2_a"][1]
        return int(wa.shape[0] if "lokr_t2" in parts else wa.shape[1])
    return None


def lokr_lowrank(name: str, parts: Mapping[str, tuple[str, np.ndarray]], scale: float | None, *, path: str,
                 meta: dict[str, Any]) -> LowRank:
    """The LowRank of a LoKr module.

    Parameters
    ----------
    name : str
    parts : dict[str, tuple[str, ndarray]]
        ``lokr_w1`` (a, b) or ``lokr_w1_a`` (a, r), ``lokr_w1_b`` (r, b); ``lokr_w2`` (c, d[, *k]) or
        ``lokr_w2_a`` (c, r), ``lokr_w2_b`` (r, d · ∏k), or ``lokr_t2`` (r, r, *k) with ``lokr_w2_a``
        (r, c), ``lokr_w2_b`` (r, d).
    scale : float
        ``s`` in ``ΔW = s · kron(W1, W2)``.
    path : str
    meta : dict

    Returns
    -------
    LowRank
        ``lora_A = kron(A1, A2)``, ``lora_B = kron(B1, B2)`` with ``W1 = B1 A1``, ``W2 = B2 A2`` (a full
        half is factored by the identity on its smaller side): ΔW (a · c, b · d · ∏k).
    """
    if "lokr_t1" in parts:
        raise UnsupportedAdapterError("LoKr with a Tucker core on W1 (lokr_t1) is written by no known trainer "
                                      "and is not read", path=path, key=parts["lokr_t1"][0])
    A1, B1, shape1 = _lokr_w1(parts, path, name)
    A2, B2, shape2, kernel = _lokr_w2(parts, path, name)
    A, B = kronecker(A1, B1, A2, B2)  # (k1·k2, b·d·∏k), (a·c, k1·k2)
    weight_shape = None if not kernel else (shape1[0] * shape2[0], shape1[1] * shape2[1], *kernel)
    meta = {**meta, "algo": "lokr", "w1_shape": tuple(int(x) for x in shape1),
            "w2_shape": tuple(int(x) for x in shape2), "keys": tuple(k for k, _ in parts.values())}
    return LowRank(A, B, scale, name=name, source=str(path), kind="conv" if kernel else "linear",
                   weight_shape=weight_shape, meta=meta)
