"""Reader for loralib state dicts (the LoRA paper's own library, ``.pt`` / ``.bin``).

loralib saves ``model.state_dict()`` or ``lora.lora_state_dict(model)``,
often nested under ``model_state_dict`` (flattened by
:func:`~analysis.io.tensors.read_tensors`) and prefixed ``module.``
(DataParallel; stripped here). Its keys are ``<module>.lora_A`` /
``<module>.lora_B`` without ``.weight``. α is not stored: the scale is
``alpha / r`` when the caller gives ``alpha``, otherwise ``None``.

How each loralib layer is represented (``delta()`` always (d_out, d_in)):

- ``Linear`` (also ``fan_in_fan_out=True``, GPT-2 Conv1D stored (in, out)):
  ``LowRank(lora_A, lora_B)``; ``meta["fan_in_fan_out"]`` when the base
  weight in the file shows the orientation.
- ``Embedding``: merge adds ``(B A)ᵀ s`` to the (num_embeddings, dim) table;
  stored as ``LowRank(lora_A=Bᵀ, lora_B=Aᵀ, kind="embedding")``. Told apart
  from a fan_in_fan_out Linear (same stored shapes) by the module name, then
  by the absence of a bias.
- ``MergedLinear`` (GPT-2 ``c_attn``): one ``kind="merged"`` module holding
  the exact block factorisation of the whole (out, in) update and one part
  per enabled group (``q``, ``v`` for ``enable_lora=[True, False, True]``).
- ``ConvLoRA`` (``lora.Conv2d``): ``(B A).view(weight.shape)`` is refactored
  exactly into the (out, in/groups·kh·kw) layout, only when the base conv
  weight is in the file. Without it, a ConvLoRA cannot be told from a
  Linear and is read as one: its ``B A`` before loralib's reshape, with a
  scale of alpha/(r·k) instead of alpha/r (a note is added when the name
  says ``conv``).
"""

from __future__ import annotations


from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter, is_embedding_name
from analysis.core.lowrank import LowRank
from analysis.errors import AdapterError, UnsupportedAdapterError

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from typing import Any

__all__ = ["load_loralib"]

_FUSED_QKV = frozenset({"c_attn", "qkv", "qkv_proj", "query_key_value", "wqkv", "to_qkv", "in_proj"})


def _strip_prefix(tensors, path):
    """Drop DataParallel ``module.`` prefixes, refusing collisions."""
    out = {}
    for key, value in tensors.items():
        new = key
        while new.startswith("module."):
            new = new[len("module."):]
        if new in out:
            raise AdapterError("two keys differ only by a 'module.' prefix", path=path, key=key)
        out[new] = value
    return out


def _pairs(tensors, path):
    """``{module name: (lora_A, lora_B)}`` for every ``…lora_A`` / ``…lora_B`` key."""
    names = {}
    for key in tensors:
        for which in ("lora_A", "lora_B"):
            if key == which or key.endswith("." + which):
                names.setdefault(key[: -len(which)].rstrip("."), set()).add(which)
    pairs = {}
    for name, found in sorted(names.items()):
        pre = name + "." if name else ""
        if found != {"lora_A", "lora_B"}:
            have, miss = sorted(found)[0], sorted({"lora_A", "lora_B"} - found)[0]
            raise AdapterError(f"{have} without {miss}: expected both '{pre}lora_A' and '{pre}lora_B'",
                               path=path, key=pre + have)
        A, B = tensors[pre + "lora_A"], tensors[pre + "lora_B"]
        for which, t in (("lora_A", A), ("lora_B", B)):
            if t.ndim != 2:
                raise AdapterError(f"expected a 2-D {which} (loralib stores (r, in) and (out, r)), "
                                   f"got shape {tuple(t.shape)}", path=path, key=pre + which)
        pairs[name] = (A, B)
    return pairs


def _check_enable_lora(enable_lora, path):
    if enable_lora is None:
        return None
    if isinstance(enable_lora, (str, bytes)) or not all(isinstance(e, (bool, np.bool_)) for e in enable_lora):
        raise AdapterError(f"enable_lora must be a list of booleans such as [True, False, True], "
                           f"got {enable_lora!r}", path=path)
    out = [bool(e) for e in enable_lora]
    if not any(out):
        raise AdapterError("enable_lora has no True entry: no group carries a LoRA", path=path)
    return out


def _part_names(n_groups):
    return ["q", "k", "v"] if n_groups == 3 else [f"p{j}" for j in range(n_groups)]


def _infer_groups(name, n, dg, d_in, W, enable_lora, path, key, notes):
    """Return loralib's ``enable_lora`` for a MergedLinear, or raise asking for it."""
    out = None
    if W is not None:  # the base weight is (out, in), or (in, out) with fan_in_fan_out
        out = W.shape[0] if W.shape[1] == d_in else W.shape[1]
    if enable_lora is not None:
        if sum(enable_lora) != n:
            raise AdapterError(f"enable_lora={enable_lora} enables {sum(enable_lora)} groups but lora_A "
                               f"holds {n} groups of rank r", path=path, key=key)
        return enable_lora
    ask = "pass enable_lora=[...] (e.g. [True, False, True] for GPT-2 c_attn) to load_adapter"
    if out is not None:
        if out % dg:
            raise AdapterError(f"MergedLinear: base weight {tuple(W.shape)} has {out} outputs, not a "
                               f"multiple of the {dg} rows per group of lora_B", path=path, key=key)
        n_groups = out // dg
        how = f"from the base weight {tuple(W.shape)}"
    elif name.rsplit(".", 1)[-1].lower() in _FUSED_QKV:
        n_groups = 3
        how = "from the fused q/k/v module name"
    else:
        raise AdapterError(f"MergedLinear with {n} enabled groups, but enable_lora is not stored and the "
                           f"base weight is not in the file: {ask}", path=path, key=key)
    if n_groups == n:
        return [True] * n
    if n == 2 and n_groups == 3:
        notes.append(f"{name}: enable_lora not stored; assumed [True, False, True] (q and v, the "
                     f"GPT-2 convention of the LoRA paper), 3 groups {how}")
        return [True, False, True]
    raise AdapterError(f"MergedLinear with {n} of {n_groups} groups enabled ({how}); which ones cannot "
                       f"be inferred: {ask}", path=path, key=key)


def _merged(name, A, B, W, scale, enable_lora, path, notes, base):
    """Block factorisation of a loralib MergedLinear and its parts.

    ``merge_AB`` is a grouped conv1d: rows ``g·dg:(g+1)·dg`` of ``lora_B``
    pair with rows ``g·r:(g+1)·r`` of ``lora_A``; ``zero_pad`` puts group g
    at the rows of the g-th enabled entry of ``enable_lora``.
    """
    key = name + ".lora_B"
    r = B.shape[1]
    if r == 0 or A.shape[0] % r or B.shape[0] % (A.shape[0] // r):
        raise AdapterError(f"rank mismatch: lora_A {tuple(A.shape)} (r, in) and lora_B {tuple(B.shape)} "
                           f"(out, r) disagree and are not a loralib MergedLinear (lora_A rows = r·n, "
                           f"lora_B rows = n·out/len(enable_lora))", path=path, key=key)
    n = A.shape[0] // r
    dg = B.shape[0] // n
    enable = _infer_groups(name, n, dg, A.shape[1], W, enable_lora, path, key, notes)
    d_out = dg * len(enable)
    if W is not None and tuple(W.shape) not in ((d_out, A.shape[1]), (A.shape[1], d_out)):
        raise AdapterError(f"MergedLinear: base weight is {tuple(W.shape)} but enable_lora={enable} and "
                           f"lora_B give {d_out} outputs", path=path, key=key)
    B_full = np.zeros((d_out, A.shape[0]), dtype=B.dtype)  # (out, n·r)
    parts, rows = {}, {}
    labels = _part_names(len(enable))
    g = 0
    for j, on in enumerate(enable):
        if not on:
            continue
        lo, hi = j * dg, (j + 1) * dg
        B_g = B[g * dg:(g + 1) * dg]  # (dg, r)
        A_g = A[g * r:(g + 1) * r]  # (r, in)
        B_full[lo:hi, g * r:(g + 1) * r] = B_g
        rows[labels[j]] = (lo, hi)
        parts[labels[j]] = LowRank(A_g, B_g, scale, name=f"{name}:{labels[j]}", source=str(path),
                                   meta=dict(base, r=r, rows=(lo, hi), group=j, parent=name))
        g += 1
    fifo = None
    if W is not None and W.shape[0] != W.shape[1]:
        fifo = bool(W.shape[1] == d_out)
    meta = dict(base, r=r, enable_lora=list(enable), part_rows=rows, fan_in_fan_out=fifo)
    # ΔW (out, in) = scale · B_full (out, n·r) @ lora_A (n·r, in)
    return LowRank(A, B_full, scale, name=name, source=str(path), kind="merged",
                   weight_shape=None if W is None else tuple(W.shape), parts=parts, meta=meta)


def _conv(name, A, B, W, alpha, path, base):
    """Exact factors of ``(B A).view(weight.shape)`` flattened to (out, in/groups·kh·kw)."""
    key = name + ".lora_A"
    out, L = W.shape[0], int(np.prod(W.shape[1:]))
    P, Q = B.shape[0], A.shape[1]  # B A is (P, Q)
    k = W.shape[-1]
    if P * Q != out * L or A.shape[0] % k:
        raise AdapterError(f"ConvLoRA: lora_B {tuple(B.shape)} @ lora_A {tuple(A.shape)} cannot be viewed "
                           f"as the base weight {tuple(W.shape)}", path=path, key=key)
    R = A.shape[0]
    if L % Q == 0:  # each output row is m consecutive rows of B A
        m = L // Q
        Bf = B.reshape(out, m * R)  # (out, m·R)
        Af = np.kron(np.eye(m, dtype=A.dtype), A)  # (m·R, m·Q): block diagonal
    elif Q % L == 0:  # each row of B A splits into c output rows
        c = Q // L
        Bf = np.zeros((out, c * R), dtype=B.dtype)  # (out, c·R)
        for u in range(c):
            Bf[u::c, u * R:(u + 1) * R] = B
        Af = np.concatenate([A[:, u * L:(u + 1) * L] for u in range(c)])  # (c·R, L)
    else:
        raise UnsupportedAdapterError(f"ConvLoRA with lora_B {tuple(B.shape)}, lora_A {tuple(A.shape)} and "
                                      f"weight {tuple(W.shape)}: this view has no exact low-rank form here",
                                      path=path, key=key)
    r = R // k
    scale = None if alpha is None else alpha / r
    # ΔW (out, L) = scale · Bf (out, R') @ Af (R', L)
    return LowRank(Af, Bf, scale, name=name, source=str(path), kind="conv", weight_shape=tuple(W.shape),
                   meta=dict(base, r=r, kernel_size=k))


def _module(name, A, B, tensors, alpha, enable_lora, path, notes):
    pre = name + "." if name else ""
    wkey = next((k for k in (pre + "weight", pre + "conv.weight") if k in tensors), None)
    W = None if wkey is None else tensors[wkey]
    base = {"format": "loralib", "alpha": alpha, "base_weight_key": wkey}
    if W is not None and W.ndim > 2:
        return _conv(name, A, B, W, alpha, path, base)
    if W is not None and W.ndim != 2:
        raise AdapterError(f"expected a 2-D base weight next to lora_A/lora_B, got {tuple(W.shape)}",
                           path=path, key=wkey)
    d_in, d_out, r = A.shape[1], B.shape[0], B.shape[1]
    scale = None if alpha is None else alpha / r
    lin = W is not None and W.shape == (d_out, d_in)
    tr = W is not None and W.shape == (d_in, d_out)
    if A.shape[0] != r or (W is not None and not (lin or tr)):
        if A.shape[0] == r and W is not None and d_in not in W.shape:
            raise AdapterError(f"base weight is {tuple(W.shape)} but lora_A is {tuple(A.shape)} (r, in) "
                               f"and lora_B is {tuple(B.shape)} (out, r)", path=path, key=wkey)
        return _merged(name, A, B, W, scale, enable_lora, path, notes, base)
    ws = None if W is None else tuple(W.shape)
    by_name = is_embedding_name(name)
    if tr and not lin:
        embedding = by_name or (pre + "bias") not in tensors
        if embedding and not by_name:
            notes.append(f"{name}: read as an Embedding (weight {ws} = (num_embeddings, dim), no bias); "
                         f"a fan_in_fan_out Linear without bias would look the same")
    else:  # an embedding table is (num_embeddings, dim) = (d_in, d_out): not when only `lin` fits
        embedding = by_name and not (lin and not tr)
        if by_name and W is None:
            notes.append(f"{name}: read as an Embedding from its name (no base weight in the file)")
        elif W is None and "conv" in name.rsplit(".", 1)[-1].lower():
            notes.append(f"{name}: read as a Linear; if it is a loralib ConvLoRA, its base weight is "
                         f"needed (shape and scale alpha/r would otherwise be wrong)")
    if embedding:
        # table update (num_embeddings, dim) = scale · lora_A.T (num_emb, r) @ lora_B.T (r, dim)
        return LowRank(B.T, A.T, scale, name=name, source=str(path), kind="embedding", weight_shape=ws,
                       meta=dict(base, r=r))
    fifo = None if (lin and tr) or W is None else bool(tr)
    # ΔW (out, in) = scale · lora_B (out, r) @ lora_A (r, in)
    return LowRank(A, B, scale, name=name, source=str(path), weight_shape=ws,
                   meta=dict(base, r=r, fan_in_fan_out=fifo))


def load_loralib(path: str | os.PathLike[str], tensors: dict[str, np.ndarray], *, alpha: float | None = None,
                 enable_lora: Sequence[bool] | None = None, **options: Any) -> Adapter:
    """Read a loralib state dict into an :class:`~analysis.core.adapter.Adapter`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pt`` / ``.bin`` file (named in messages).
    tensors : dict[str, ndarray]
        Its validated tensors from :func:`~analysis.io.tensors.read_tensors`.
    alpha : float, optional
        loralib's ``lora_alpha``; scale = alpha / r. Without it every module
        has ``scale=None``: bases work, norms and ``delta()`` raise
        :class:`~analysis.errors.MissingAlphaError`.
    enable_lora : sequence of bool, optional
        loralib's MergedLinear ``enable_lora`` (not stored in the file),
        applied to every merged module. Inferred when possible (see module doc).

    Returns
    -------
    Adapter
        ``format="loralib"``; merged modules have ``parts`` (see
        :meth:`Adapter.expanded`).

    Raises
    ------
    AdapterError
        lora_A without lora_B, non-2-D factors, shape or rank mismatches, or
        a MergedLinear whose ``enable_lora`` cannot be inferred.
    """
    if options:
        raise AdapterError(f"option(s) {sorted(options)} do not apply to a loralib checkpoint "
                           f"(accepted: alpha, enable_lora)", path=path)
    enable_lora = _check_enable_lora(enable_lora, path)
    tensors = _strip_prefix(tensors, path)
    pairs = _pairs(tensors, path)
    if not pairs:
        raise AdapterError("no loralib keys ending in '.lora_A' / '.lora_B'", path=path)
    notes = []
    if alpha is None:
        notes.append("loralib does not store alpha: scale unknown, so subspaces are available but norms, "
                     "singular values and delta() need alpha (load_adapter(..., alpha=...))")
    mods = {name: _module(name, A, B, tensors, alpha, enable_lora, path, notes)
            for name, (A, B) in pairs.items()}
    return Adapter(mods, path=path, format="loralib", notes=notes)
