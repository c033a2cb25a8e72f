"""What llama.cpp's converter did to a model's tensors, and how to read them back in the HF layout.

``convert_hf_to_gguf.py`` renames every tensor with the ``gguf`` package's own map
(``gguf.get_tensor_name_map(arch, n_blocks)``: many HF spellings of a module → one GGUF name such as
``blk.0.attn_q``), stores every matrix in ggml's orientation (``ne0`` = d_in, so numpy reads it as
(d_out, d_in): the ``nn.Linear`` orientation) and, for some architectures, changes a tensor's values or row
order on the way. This module holds that knowledge; :class:`analysis.io.base.GGUFBase` uses it to give back
each weight as the HF model holds it, in the ``nn.Linear`` orientation.

What is undone, per ``general.architecture`` (read from llama.cpp's converter classes):

* **Rotary row permutation of Wq / Wk** (``LlamaModel.permute``: ``W.reshape(n, 2, rows/n/2, d_in)
  .swapaxes(1, 2)``, interleaving the two rotary halves of each head for ggml's "normal" rope), with n the
  head count for Wq and the KV head count for Wk: :data:`ROPE_PERMUTED`. Baichuan and Xverse permute with
  their own ``_reverse_hf_permute``, which reshapes Wk into ``n_head // n_head_kv`` groups when the two
  counts differ: :data:`ROPE_PERMUTED_K_GROUPS`. A llama-architecture file is always in the permuted layout
  (the converter permutes HF checkpoints; Mistral's own format already has it).
* **Fused QKV regrouped** from HF's layout into ``[Q; K; V]``: BLOOM and GPT-NeoX interleave per head
  ``[q_h, k_h, v_h]`` (:data:`QKV_PER_HEAD`); Falcon per KV group ``[q … q, k, v]`` (:data:`QKV_KV_GROUPS`).
* **RMSNorm weights stored as 1 + w** for models whose norm computes ``x · (1 + w)`` (Gemma 1–3,
  EmbeddingGemma, Nemotron): :data:`NORM_PLUS_ONE`.
* **Conv1D transposes**: GPT-2 and Jais store their Conv1D weights (d_in, d_out) in HF; the converter
  transposes them, so the GGUF holds (d_out, d_in) and the reader returns that (:data:`CONV1D_TRANSPOSED`
  marks them, so that an adapter's ``fan_in_fan_out`` does not transpose them again).

Not undone (such tensors are returned as the file holds them): Gemma 3's embedding rows trimmed to the real
vocabulary, Jais's scaled embedding and output, Chameleon's permuted q/k norms, and tensors the converter
split or fused (Baichuan's ``W_pack``, InternLM2's ``wqkv``: their HF names have no tensor in the file, which
is reported as such).

>>> import numpy as np
>>> W = np.arange(16.0).reshape(8, 2)
>>> P = W.reshape(2, 2, 2, 2).swapaxes(1, 2).reshape(8, 2)  # llama.cpp's permute, 2 heads
>>> bool((unpermute_rope_rows(P, 2) == W).all())
True
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError

if TYPE_CHECKING:
    import gguf

__all__ = [
    "CONV1D_TRANSPOSED",
    "CONVERTER_RENAMES",
    "LLAMA_HF_NAMES",
    "NORM_PLUS_ONE",
    "QKV_KV_GROUPS",
    "QKV_PER_HEAD",
    "ROPE_PERMUTED",
    "ROPE_PERMUTED_K_GROUPS",
    "gguf_to_hf_name",
    "listed_name",
    "mapped_name",
    "tensor_kind",
    "tensor_name_map",
    "undo_converter",
    "ungroup_qkv_kv_groups",
    "ungroup_qkv_per_head",
    "unpermute_rope_rows",
]

#: architectures whose Wq / Wk rows llama.cpp permutes with ``LlamaModel.permute`` (or a copy of it):
#: LlamaModel and its subclasses that keep ``undo_permute`` (Arcee, SmolLM3, Ministral 3, Llama-embed,
#: Granite, Granite MoE, Granite hybrid), DeciLM, DeepSeek (v1), MiniCPM, InternLM2, OLMo, Arctic,
#: Chameleon, LLaDA, Bailing MoE.
ROPE_PERMUTED = frozenset({
    "llama", "arcee", "smollm3", "mistral3", "llama-embed", "granite", "granitemoe", "granitehybrid", "deci",
    "deepseek", "minicpm", "internlm2", "olmo", "arctic", "chameleon", "llada", "bailingmoe",
})
#: permuted like :data:`ROPE_PERMUTED`, but Wk in ``n_head // n_head_kv`` groups when the counts differ
ROPE_PERMUTED_K_GROUPS = frozenset({"baichuan", "xverse"})
#: fused QKV stored ``[Q; K; V]``, regrouped from HF's per-head ``[q_h, k_h, v_h]``
QKV_PER_HEAD = frozenset({"bloom", "gptneox"})
#: fused QKV stored ``[Q; K; V]``, regrouped from HF's per-KV-group ``[q … q, k, v]``
QKV_KV_GROUPS = frozenset({"falcon"})
#: norm weights stored as ``1 + w``
NORM_PLUS_ONE = frozenset({"gemma", "gemma2", "gemma3", "gemma-embedding", "nemotron"})
#: architectures whose HF Conv1D weights (d_in, d_out) the converter transposes into (d_out, d_in)
CONV1D_TRANSPOSED = frozenset({"gpt2", "jais"})
_CONV1D_KINDS = frozenset({"ATTN_QKV", "ATTN_OUT", "FFN_UP", "FFN_GATE", "FFN_DOWN"})

#: parts of an HF name the converter removes before it looks the name up in the package's map (BLOOM drops
#: ``transformer.``; the multimodal wrappers of Gemma 3, Qwen2 (InternVL) and Llama (SmolVLM) their
#: language-model part), tried when a name is not mapped as it stands
CONVERTER_RENAMES = {"bloom": ("transformer.",), "gemma3": ("language_model.",), "qwen2": ("language_model.",),
                     "llama": ("text_model.",)}

#: What a llama-architecture GGUF base lists its tensors as: transformers' ``LlamaForCausalLM`` names, by
#: ``gguf.MODEL_TENSOR`` member (every other architecture lists the GGUF names; any HF name the package maps
#: finds its tensor either way).
LLAMA_HF_NAMES = {
    "TOKEN_EMBD": "model.embed_tokens",
    "OUTPUT_NORM": "model.norm",
    "OUTPUT": "lm_head",
    "ATTN_NORM": "model.layers.{bid}.input_layernorm",
    "ATTN_Q": "model.layers.{bid}.self_attn.q_proj",
    "ATTN_K": "model.layers.{bid}.self_attn.k_proj",
    "ATTN_V": "model.layers.{bid}.self_attn.v_proj",
    "ATTN_OUT": "model.layers.{bid}.self_attn.o_proj",
    "FFN_NORM": "model.layers.{bid}.post_attention_layernorm",
    "FFN_GATE": "model.layers.{bid}.mlp.gate_proj",
    "FFN_UP": "model.layers.{bid}.mlp.up_proj",
    "FFN_DOWN": "model.layers.{bid}.mlp.down_proj",
}


def _gguf():
    import gguf

    return gguf


@functools.lru_cache(maxsize=32)
def tensor_name_map(arch: str, n_blocks: int) -> gguf.TensorNameMap | None:
    """The ``gguf`` package's name map for an architecture.

    Parameters
    ----------
    arch : str
        ``general.architecture`` (``"llama"``, ``"gpt2"``, …).
    n_blocks : int
        ``<arch>.block_count``.

    Returns
    -------
    gguf.TensorNameMap or None
        None when the package does not know the architecture.
    """
    gguf = _gguf()
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name or by_name[arch] not in gguf.MODEL_TENSORS:
        return None
    return gguf.get_tensor_name_map(by_name[arch], int(n_blocks))


def mapped_name(tmap: gguf.TensorNameMap, arch: str, name: str) -> str | None:
    """The GGUF tensor name (without ``.weight``) the package maps HF module ``name`` to, or None.

    Parameters
    ----------
    tmap : gguf.TensorNameMap
        :func:`tensor_name_map` of the file.
    arch : str
    name : str
        E.g. ``"transformer.h.0.attn.c_attn"``; ``blk.0.attn_qkv`` maps to itself.

    Returns
    -------
    str or None
    """
    stem = tmap.get_name(name)
    if stem is None:
        rewritten = name
        for part in CONVERTER_RENAMES.get(arch, ()):
            rewritten = rewritten.replace(part, "")
        stem = tmap.get_name(rewritten) if rewritten != name else None
    return stem


def tensor_kind(tmap: gguf.TensorNameMap, stem: str) -> tuple[str | None, int | None]:
    """``(MODEL_TENSOR member name, block index or None)`` of a GGUF tensor name without ``.weight``.

    >>> from analysis.io.gguf_layout import tensor_name_map
    >>> tensor_kind(tensor_name_map("llama", 4), "blk.3.attn_q")
    ('ATTN_Q', 3)
    """
    kind = tmap.get_type(stem)
    parts = stem.split(".")
    bid = int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else None
    return (None if kind is None else kind.name), bid


def gguf_to_hf_name(gguf_name: str) -> str | None:
    """Map a llama-architecture tensor name to the HF Llama module name a GGUF base lists it as.

    Parameters
    ----------
    gguf_name : str
        E.g. ``"blk.3.attn_q.weight"``.

    Returns
    -------
    str or None
        E.g. ``"model.layers.3.self_attn.q_proj"``; None if the name is not a weight or has no HF Llama name.

    Examples
    --------
    >>> gguf_to_hf_name("blk.3.attn_q.weight")
    'model.layers.3.self_attn.q_proj'
    >>> gguf_to_hf_name("token_embd.weight")
    'model.embed_tokens'
    """
    if not gguf_name.endswith(".weight"):
        return None
    stem = gguf_name[: -len(".weight")]
    parts = stem.split(".")
    n_blocks = int(parts[1]) + 1 if len(parts) > 2 and parts[1].isdigit() else 1
    return listed_name(tensor_name_map("llama", n_blocks), "llama", stem)  # type: ignore[arg-type]  # llama is known


def listed_name(tmap: gguf.TensorNameMap, arch: str, stem: str) -> str | None:
    """The name a GGUF base lists a tensor under: its HF Llama name in a llama file, else its GGUF name.

    Parameters
    ----------
    tmap : gguf.TensorNameMap
        :func:`tensor_name_map` of the file.
    arch : str
    stem : str
        The GGUF tensor name without ``.weight``.

    Returns
    -------
    str or None
        None for a llama tensor with no HF Llama name (``rope_freqs``): not listed, as before.
    """
    if arch != "llama":
        return stem
    kind, bid = tensor_kind(tmap, stem)
    template = LLAMA_HF_NAMES.get(kind)  # type: ignore[arg-type]  # None: no template
    if template is None or ("{bid}" in template) != (bid is not None):
        return None
    return template.format(bid=bid)


def unpermute_rope_rows(W: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of Wq / Wk.

    ``convert_hf_to_gguf.py`` stores ``W.reshape(n_head, 2, hd/2, d_in).swapaxes(1, 2)``
    (interleaving the two rotary halves of each head); this applies the inverse.

    Parameters
    ----------
    W : (n_head * head_dim, d_in) ndarray
        The weight as stored in the GGUF file (rows permuted).
    n_head : int
        Number of heads (row groups) the permutation used: ``head_count`` for Wq, ``head_count_kv`` for Wk.

    Returns
    -------
    (n_head * head_dim, d_in) ndarray
        The HF row order.

    Raises
    ------
    ValueError
        If the row count is not a multiple of ``2 * n_head``.
    """
    rows = W.shape[0]
    if n_head < 1 or rows % (2 * n_head):
        raise InputError(f"W has {rows} rows, not a multiple of 2 * n_head = {2 * n_head}: "
                         f"got W of shape {W.shape}")
    half = rows // n_head // 2
    return W.reshape(n_head, half, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def ungroup_qkv_per_head(W: np.ndarray, n_head: int) -> np.ndarray:
    """HF's per-head fused QKV (BLOOM, GPT-NeoX) from llama.cpp's ``[Q; K; V]``.

    The converter stores ``W.reshape(n_head, 3, hd, d_in)`` regrouped as ``[all q; all k; all v]``.

    Parameters
    ----------
    W : (3 * n_head * head_dim, d_in) ndarray
        As stored in the GGUF file.
    n_head : int

    Returns
    -------
    (3 * n_head * head_dim, d_in) ndarray
        Rows in HF's order ``[q_0, k_0, v_0, q_1, …]`` (head by head).

    Raises
    ------
    ValueError
        If the row count is not a multiple of ``3 * n_head``.
    """
    rows = W.shape[0]
    if n_head < 1 or rows % (3 * n_head):
        raise InputError(f"W has {rows} rows, not a multiple of 3 * n_head = {3 * n_head}: got W of shape {W.shape}")
    return W.reshape(3, n_head, rows // (3 * n_head), *W.shape[1:]).swapaxes(0, 1).reshape(W.shape)


def ungroup_qkv_kv_groups(W: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """HF's grouped fused QKV (Falcon) from llama.cpp's ``[Q; K; V]``.

    HF holds ``n_head_kv`` groups of ``n_head / n_head_kv`` query heads followed by one key and one value head;
    the converter stores all query heads, then all key heads, then all value heads.

    Parameters
    ----------
    W : ((n_head + 2 * n_head_kv) * head_dim, d_in) ndarray
        As stored in the GGUF file.
    n_head, n_head_kv : int

    Returns
    -------
    ((n_head + 2 * n_head_kv) * head_dim, d_in) ndarray
        Rows in HF's order.

    Raises
    ------
    ValueError
        If the counts do not divide the rows (or ``n_head`` by ``n_head_kv``).
    """
    rows = W.shape[0]
    if n_head_kv < 1 or n_head % n_head_kv or rows % (n_head + 2 * n_head_kv):
        raise InputError(f"W has {rows} rows: expected a multiple of n_head + 2 * n_head_kv = "
                         f"{n_head + 2 * n_head_kv} with n_head = {n_head} a multiple of n_head_kv = {n_head_kv}")
    hd = rows // (n_head + 2 * n_head_kv)
    g, rest = n_head // n_head_kv, W.shape[1:]
    q = W[: n_head * hd].reshape(n_head_kv, g, hd, *rest)
    k = W[n_head * hd:(n_head + n_head_kv) * hd].reshape(n_head_kv, 1, hd, *rest)
    v = W[(n_head + n_head_kv) * hd:].reshape(n_head_kv, 1, hd, *rest)
    return np.concatenate([q, k, v], axis=1).reshape(W.shape)


def undo_converter(W: np.ndarray, arch: str, kind: str | None, n_head: int | None = None,
                   n_head_kv: int | None = None) -> tuple[np.ndarray, bool]:
    """A GGUF tensor as the HF model holds it (in the ``nn.Linear`` orientation).

    Parameters
    ----------
    W : ndarray
        The dequantised tensor as stored, (d_out, d_in) for a matrix.
    arch : str
        ``general.architecture``.
    kind : str or None
        Its ``gguf.MODEL_TENSOR`` member name (``"ATTN_Q"``, …).
    n_head, n_head_kv : int, optional
        The block's head counts (needed for the row reorders).

    Returns
    -------
    W : ndarray
    transposed_in_hf : bool
        True when HF stores this weight transposed (a Conv1D): W is its ``.T``.

    Raises
    ------
    ValueError
        If a reorder is needed and the head counts do not fit the rows.
    """
    if kind is None:
        return W, False
    if W.ndim == 2 and kind in ("ATTN_Q", "ATTN_K"):
        # A head count None raises TypeError below, which GGUFBase reports as an AdapterError.
        if arch in ROPE_PERMUTED:
            W = unpermute_rope_rows(W, n_head if kind == "ATTN_Q" else n_head_kv)  # type: ignore[arg-type]
        elif arch in ROPE_PERMUTED_K_GROUPS:
            groups = n_head if kind == "ATTN_Q" or n_head == n_head_kv else n_head // n_head_kv  # type: ignore[operator]
            W = unpermute_rope_rows(W, groups)  # type: ignore[arg-type]
    elif W.ndim == 2 and kind == "ATTN_QKV":
        if arch in QKV_PER_HEAD:
            W = ungroup_qkv_per_head(W, n_head)  # type: ignore[arg-type]
        elif arch in QKV_KV_GROUPS:
            W = ungroup_qkv_kv_groups(W, n_head, n_head_kv)  # type: ignore[arg-type]
    elif arch in NORM_PLUS_ONE and "NORM" in kind:
        W = W - np.asarray(1, dtype=W.dtype)
    return W, (W.ndim == 2 and arch in CONV1D_TRANSPOSED and kind in _CONV1D_KINDS)
