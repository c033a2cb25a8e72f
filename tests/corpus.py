"""A corpus of tiny random models of many architectures, with PEFT and kohya adapters of known planted structure.

The toolkit was first proven on Llama adapters on ``q_proj`` / ``v_proj`` only. This module builds, from
transformers / diffusers configs (no downloads), one tiny model per architecture family and a set of LoRA
adapters on it whose factors are overwritten with planted structure, so that every command can be run over
other people's layouts and its answers checked against what was planted.

Families (:data:`FAMILIES`; hidden size, layers, LoRA targets)
---------------------------------------------------------------
=============  ================================  =====  ======  ===================================================
family         model                             width  layers  targets (``wide``: extra targets)
=============  ================================  =====  ======  ===================================================
``gpt2``       GPT2LMHeadModel (Conv1D)          40     3       ``c_attn`` (fused qkv, fan_in_fan_out);
                                                                ``wide``: ``c_attn``, ``c_proj``, ``c_fc``
``bert``       BertForSequenceClassification     48     2       ``query``, ``value``
``roberta``    RobertaForSequenceClassification  56     3       ``query``, ``value``
``distilbert`` DistilBertModel                   64     2       ``q_lin``, ``v_lin``
``t5``         T5ForConditionalGeneration        72     2 + 2   ``q``, ``v`` (encoder and decoder self-attention,
                                                                decoder ``EncDecAttention``)
``llama_gqa``  LlamaForCausalLM, 8 heads / 2 kv  80     4       ``q_proj``, ``v_proj`` (v_proj 20 × 80);
                                                                ``wide``: all seven projections
``qwen2_gqa``  Qwen2ForCausalLM, 4 heads / 1 kv  88     3       ``q_proj``, ``v_proj`` (v_proj 22 × 88)
``clip_text``  CLIPTextModel                     96     3       ``q_proj``, ``v_proj``, ``out_proj``, ``fc1``
``unet``       diffusers UNet2DConditionModel    32     4 (*)   ``to_q``, ``to_k``, ``to_v``, ``to_out.0``
``gpt_neox``   GPTNeoXForCausalLM                36     2       ``query_key_value`` (fused qkv, nn.Linear)
=============  ================================  =====  ======  ===================================================

(*) the UNet's "layers" are its four attention transformer blocks (``down_blocks.0``, ``mid_block``, two in
``up_blocks.1``); channels 32 and 64, cross-attention width 32. Its base folder is diffusers' own layout
(``config.json`` + ``diffusion_pytorch_model.safetensors``), every other base folder holds ``config.json`` +
``model.safetensors`` as transformers 5 writes it (note: transformers 5 saves CLIPTextModel *without* the
``text_model.`` prefix that transformers 4 checkpoints and kohya names carry).

Adapters (:data:`ADAPTERS`; every family has the first six)
-----------------------------------------------------------
Each PEFT adapter is made by ``peft.get_peft_model(model, LoraConfig(...))`` (``lora_alpha = 2 r``,
dropout 0), its ``lora_A`` / ``lora_B`` then overwritten with the factors below (float32, B never zero) and
saved with ``save_pretrained``. For a module with factors ``A`` (r, d_in) and ``B`` (d_out, r) the planted
factors are ``A = diag(s) Qinᵀ`` and ``B = c · Qout diag(t)``, with ``Qin`` (d_in, r) and ``Qout`` (d_out, r)
orthonormal columns, so ``ΔW = B A`` has the exact SVD ``Qout diag(c t s) Qinᵀ``: the right singular
vectors of A and of ΔW are the columns of ``Qin``, the left ones of ΔW those of ``Qout``.

* ``rank_low`` (r = 4) and ``rank_high`` (r = 16): the first columns of ``Qin`` and ``Qout`` are one unit
  vector pair (u, p) per module, the same in both adapters, with ``s[0] = 8`` against ``s[1:]`` in
  [0.5, 1.5] (t in [0.8, 1.25]): the top right singular vector of A and of ΔW is u in both (φ(1, 1) ≈ 1 at
  every module) and the top left singular vector of ΔW is p. In the **middle layer** (:func:`is_middle`:
  layer ``n_layers // 2`` of every stack; the UNet's ``mid_block``) u and p are W's own top right and left
  singular vectors (W in the nn.Linear orientation), so a W-vs-ΔW test finds ΔW's top direction in W's.
  The other columns are random, independent between the two adapters.
* ``seed_a`` and ``seed_b`` (r = 8): the first four columns of ``Qin`` span one random 4-dimensional
  subspace per module, the same in both (rotated differently inside it), and likewise for ``Qout``;
  ``s[:4] = 8, 7, 6, 5`` against ``s[4:]`` in [0.5, 1.5] (t in [0.9, 1.1]), so the top-4 right singular
  vectors of A and of ΔW (and the top-4 left ones of ΔW) span the shared subspaces; the rest are random,
  orthogonal to them and independent between the two. ``seed_b`` has ``use_rslora=True`` (scale α/√r).
* ``unrelated_low`` (r = 4) and ``unrelated_high`` (r = 16): independent Gaussian factors, nothing
  shared. ``unrelated_high`` also has ``rank_pattern`` (the middle-layer module of the first target gets
  r = 12) and ``alpha_pattern`` (the last target gets α = 48).
* ``wide`` (gpt2, llama_gqa; r = 8): Gaussian factors on the :data:`WIDE_TARGETS`.
* ``cls_a``, ``cls_b``, ``cls_same_a``, ``cls_same_b`` (bert, roberta; r = 8): ``task_type="SEQ_CLS"``,
  ``modules_to_save=["classifier"]``, Gaussian LoRA factors; the saved classifier heads of ``cls_a`` and
  ``cls_b`` differ, those of ``cls_same_a`` and ``cls_same_b`` are identical (their LoRA factors are not).
* ``kohya_low`` (r = 4) and ``kohya_high`` (r = 16) (clip_text, unet): one kohya ``.safetensors`` file each
  (``lora_down`` = A, ``lora_up`` = B, ``alpha`` = 2 r; metadata ``ss_network_dim`` / ``ss_network_alpha``),
  with the rank pair's planted sharing, on the same (u, p) per module as ``rank_low`` / ``rank_high``. Names
  follow kohya sd-scripts: ``lora_te_text_model_encoder_layers_{i}_self_attn_q_proj`` (the transformers 4
  ``text_model.`` prefix included) and ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``.

Everything is deterministic (fixed seeds; random draws keyed by family, module and adapter through CRC-32).

Example
-------
>>> from corpus import build_corpus                                      # doctest: +SKIP
>>> models = build_corpus(tmp, families=("gpt2", "unet"))                # doctest: +SKIP
>>> models["gpt2"].adapters["rank_low"]                                  # doctest: +SKIP
'/tmp/.../gpt2/rank_low'
"""

from __future__ import annotations

import copy
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["ADAPTERS", "FAMILIES", "KOHYA_PAIR", "RANK_PAIR", "SEED_PAIR", "SHARED_DIM", "UNRELATED_PAIR",
           "WIDE_TARGETS", "CorpusModel", "adapter_names", "base_weights_file", "build_corpus", "is_middle",
           "kohya_name", "load_base_model"]

FAMILIES: tuple[str, ...] = ("gpt2", "bert", "roberta", "distilbert", "t5", "llama_gqa", "qwen2_gqa",
                             "clip_text", "unet", "gpt_neox")

#: adapter name -> its rank r (``unrelated_high`` has one module at r = 12 through ``rank_pattern``)
ADAPTERS: dict[str, int] = {
    "rank_low": 4, "rank_high": 16, "seed_a": 8, "seed_b": 8, "unrelated_low": 4, "unrelated_high": 16,
    "wide": 8, "cls_a": 8, "cls_b": 8, "cls_same_a": 8, "cls_same_b": 8, "kohya_low": 4, "kohya_high": 16,
}
RANK_PAIR = ("rank_low", "rank_high")
SEED_PAIR = ("seed_a", "seed_b")
UNRELATED_PAIR = ("unrelated_low", "unrelated_high")
KOHYA_PAIR = ("kohya_low", "kohya_high")
#: dimension of the subspace ``seed_a`` and ``seed_b`` share
SHARED_DIM = 4
#: the extra targets of the ``wide`` adapter
WIDE_TARGETS = {"gpt2": ("c_attn", "c_proj", "c_fc"),
                "llama_gqa": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}

_B_SCALE = 0.01  # c: keeps ‖ΔW‖ comparable to ‖W‖ of the random init (top singular values ~0.1–0.4)
_RANK_PATTERN_R = 12
_ALPHA_PATTERN = 48


@dataclass(frozen=True)
class CorpusModel:
    """One family of the corpus: a tiny base model and its adapters.

    Attributes
    ----------
    family : str
        One of :data:`FAMILIES`.
    base : str
        Folder of the base model (``config.json`` + ``model.safetensors``; diffusers' layout for ``unet``).
    adapters : dict of str to str
        Adapter name (:data:`ADAPTERS`) -> path: a PEFT folder, or a kohya ``.safetensors`` file.
    targets : tuple of str
        The LoRA target module names of the planted adapters (``wide`` uses :data:`WIDE_TARGETS`).
    width : int
        Hidden size (the UNet's first block's channels).
    n_layers : int
        Layers per stack (the UNet's attention transformer blocks).
    """

    family: str
    base: str
    adapters: dict[str, str]
    targets: tuple[str, ...]
    width: int
    n_layers: int


# ----------------------------------------------------------------------------------------- families

@dataclass(frozen=True)
class _Family:
    make: Callable  # () -> torch model, random weights (seed set by the caller)
    load: Callable  # folder -> torch model
    targets: tuple
    width: int
    n_layers: int
    fan_in_fan_out: bool = False
    seq_cls: bool = False
    kohya: str | None = None  # kohya prefix, with the transformers 4 name prefix kohya keeps
    extra: dict = field(default_factory=dict)


def _transformers(cls_name, cfg_name, **cfg):
    def make():
        import transformers

        config = getattr(transformers, cfg_name)(**cfg)
        return getattr(transformers, cls_name)(config)

    def load(folder):
        import transformers

        return getattr(transformers, cls_name).from_pretrained(folder)

    return make, load


def _unet():
    def make():
        import diffusers

        return diffusers.UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, norm_num_groups=8,
            attention_head_dim=8)

    def load(folder):
        import diffusers

        return diffusers.UNet2DConditionModel.from_pretrained(folder)

    return make, load


_TOKENS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
_SPECS = {
    "gpt2": _Family(*_transformers("GPT2LMHeadModel", "GPT2Config", n_embd=40, n_layer=3, n_head=4,
                                   vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=1),
                    targets=("c_attn",), width=40, n_layers=3, fan_in_fan_out=True),
    "bert": _Family(*_transformers("BertForSequenceClassification", "BertConfig", vocab_size=64, hidden_size=48,
                                   num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                                   max_position_embeddings=32, num_labels=3, pad_token_id=1),
                    targets=("query", "value"), width=48, n_layers=2, seq_cls=True),
    "roberta": _Family(*_transformers("RobertaForSequenceClassification", "RobertaConfig", vocab_size=64,
                                      hidden_size=56, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=112, max_position_embeddings=40, num_labels=3, **_TOKENS),
                       targets=("query", "value"), width=56, n_layers=3, seq_cls=True),
    "distilbert": _Family(*_transformers("DistilBertModel", "DistilBertConfig", vocab_size=64, dim=64, n_layers=2,
                                         n_heads=4, hidden_dim=128, max_position_embeddings=32, pad_token_id=1),
                          targets=("q_lin", "v_lin"), width=64, n_layers=2),
    "t5": _Family(*_transformers("T5ForConditionalGeneration", "T5Config", vocab_size=64, d_model=72, d_kv=8,
                                 d_ff=144, num_layers=2, num_decoder_layers=2, num_heads=4, pad_token_id=1,
                                 eos_token_id=1, decoder_start_token_id=1),
                  targets=("q", "v"), width=72, n_layers=2),
    "llama_gqa": _Family(*_transformers("LlamaForCausalLM", "LlamaConfig", vocab_size=64, hidden_size=80,
                                        intermediate_size=160, num_hidden_layers=4, num_attention_heads=8,
                                        num_key_value_heads=2, max_position_embeddings=32, **_TOKENS),
                         targets=("q_proj", "v_proj"), width=80, n_layers=4),
    "qwen2_gqa": _Family(*_transformers("Qwen2ForCausalLM", "Qwen2Config", vocab_size=64, hidden_size=88,
                                        intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
                                        num_key_value_heads=1, max_position_embeddings=32, **_TOKENS),
                         targets=("q_proj", "v_proj"), width=88, n_layers=3),
    "clip_text": _Family(*_transformers("CLIPTextModel", "CLIPTextConfig", vocab_size=64, hidden_size=96,
                                        intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                                        max_position_embeddings=16, projection_dim=96, **_TOKENS),
                         targets=("q_proj", "v_proj", "out_proj", "fc1"), width=96, n_layers=3,
                         kohya="lora_te_text_model."),
    "unet": _Family(*_unet(), targets=("to_q", "to_k", "to_v", "to_out.0"), width=32, n_layers=4,
                    kohya="lora_unet_"),
    "gpt_neox": _Family(*_transformers("GPTNeoXForCausalLM", "GPTNeoXConfig", vocab_size=64, hidden_size=36,
                                       num_hidden_layers=2, num_attention_heads=3, intermediate_size=72,
                                       rotary_pct=0.5, max_position_embeddings=32, **_TOKENS),
                        targets=("query_key_value",), width=36, n_layers=2),
}


def adapter_names(family):
    """The names of a family's adapters, in build order (known before building: tests parametrize on them)."""
    spec = _SPECS[family]
    names = [*RANK_PAIR, *SEED_PAIR, *UNRELATED_PAIR]
    names += ["wide"] if family in WIDE_TARGETS else []
    names += ["cls_a", "cls_b", "cls_same_a", "cls_same_b"] if spec.seq_cls else []
    names += list(KOHYA_PAIR) if spec.kohya else []
    return tuple(names)


def is_middle(family, name):
    """Whether module ``name`` is in the middle layer, where ``rank_low``'s top directions are W's.

    Parameters
    ----------
    family : str
    name : str
        Module name in the base model (``model.layers.2.self_attn.q_proj``).

    Returns
    -------
    bool
        Layer ``n_layers // 2`` (the first integer in the name) of every stack; the UNet's ``mid_block``.
    """
    if family == "unet":
        return name.startswith("mid_block.")
    m = re.search(r"\.(\d+)\.", name)
    return m is not None and int(m.group(1)) == _SPECS[family].n_layers // 2


def kohya_name(family, name):
    """The kohya module name of base module ``name`` (``lora_te_text_model_…``, ``lora_unet_…``)."""
    prefix = _SPECS[family].kohya
    if prefix is None:
        raise ValueError(f"family {family!r} has no kohya adapters (only clip_text and unet do)")
    return prefix.replace(".", "_") + name.replace(".", "_")


def base_weights_file(model):
    """The safetensors file of a :class:`CorpusModel`'s base (``model.safetensors`` or diffusers' name)."""
    for f in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
        if os.path.exists(os.path.join(model.base, f)):
            return os.path.join(model.base, f)
    raise FileNotFoundError(f"no weights file in {model.base}")


def load_base_model(model):
    """The base model of a :class:`CorpusModel` as a torch module (``from_pretrained`` of its folder)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _SPECS[model.family].load(model.base)


# ----------------------------------------------------------------------------------------- factors

def _rng(*keys):
    """A generator keyed by strings and ints (CRC-32: stable across processes, unlike ``hash``)."""
    return np.random.default_rng([zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys])


def _orthonormal(rng, d, k):
    """(d, k) random orthonormal columns."""
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))


def _complete(rng, shared, r):
    """``[shared R, rest]`` (d, r): ``shared`` (d, k) rotated by a random orthogonal R, then r − k random
    orthonormal columns orthogonal to it."""
    d, k = shared.shape
    rot = _orthonormal(rng, k, k)
    rest = rng.standard_normal((d, r - k))
    rest -= shared @ (shared.T @ rest)  # (d, k) @ (k, r - k)
    rest = np.linalg.qr(rest)[0]
    rest -= shared @ (shared.T @ rest)  # second pass: orthogonal to machine precision
    rest = np.linalg.qr(rest)[0]
    return np.hstack([shared @ rot, rest])


def _planted(rng, in_shared, out_shared, r, lead):
    """Factors ``A = diag(s) Qinᵀ`` (r, d_in), ``B = c Qout diag(t)`` (d_out, r) with the shared columns first.

    ``lead`` holds the k leading values of ``s``; the other r − k lie in [0.5, 1.5].
    """
    k = len(lead)
    q_in = _complete(rng, in_shared, r)  # (d_in, r)
    q_out = _complete(rng, out_shared, r)  # (d_out, r)
    s = np.concatenate([lead, np.linspace(1.5, 0.5, r - k)])
    t = rng.uniform(0.8, 1.25, r) if k == 1 else rng.uniform(0.9, 1.1, r)
    return (s[:, None] * q_in.T), _B_SCALE * (q_out * t)  # (r, d_in), (d_out, r)


def _top_pair(W):
    """W's top (right, left) singular vectors, float64, sign fixed; W (d_out, d_in)."""
    U, _, Vt = np.linalg.svd(np.asarray(W, dtype=np.float64), full_matrices=False)
    sign = np.sign(U[np.argmax(np.abs(U[:, 0])), 0])
    return Vt[0] * sign, U[:, 0] * sign


def _factors(family, adapter, name, d_out, d_in, r, W):
    """The planted ``(A (r, d_in), B (d_out, r))`` of one module; ``W`` (d_out, d_in), the base weight."""
    rng = _rng(family, name, adapter)
    if adapter in RANK_PAIR or adapter in KOHYA_PAIR:
        shared = _rng(family, name, "rank-pair")
        if is_middle(family, name):
            u, p = _top_pair(W)
        else:
            u, p = _orthonormal(shared, d_in, 1)[:, 0], _orthonormal(shared, d_out, 1)[:, 0]
        return _planted(rng, u[:, None], p[:, None], r, [8.0])
    if adapter in SEED_PAIR:
        shared = _rng(family, name, "seed-pair")
        return _planted(rng, _orthonormal(shared, d_in, SHARED_DIM), _orthonormal(shared, d_out, SHARED_DIM), r,
                        [8.0, 7.0, 6.0, 5.0])
    A = rng.standard_normal((r, d_in)) / np.sqrt(d_in)  # as PEFT's Kaiming-uniform init, Gaussian
    B = _B_SCALE * rng.standard_normal((d_out, r))
    return A, B


# ----------------------------------------------------------------------------------------- building

def _target_names(model, targets):
    """Names of the modules PEFT adapts for ``targets`` (exact name or a ``.``-suffix)."""
    return [n for n, _ in model.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]


def _weight(layer, fan_in_fan_out):
    W = layer.get_base_layer().weight.detach().numpy()
    return W.T if fan_in_fan_out else W  # nn.Linear orientation (d_out, d_in)


def _configs(family, spec, base_model):
    """``{adapter name: LoraConfig keyword arguments}`` of one family's PEFT adapters."""
    out = {}
    for name in ("rank_low", "rank_high", "seed_a", "seed_b", "unrelated_low", "unrelated_high"):
        r = ADAPTERS[name]
        out[name] = dict(r=r, lora_alpha=2 * r, target_modules=list(spec.targets))
    out["seed_b"]["use_rslora"] = True
    middle = [n for n in _target_names(base_model, spec.targets[:1]) if is_middle(family, n)]
    out["unrelated_high"].update(rank_pattern={middle[0]: _RANK_PATTERN_R},
                                 alpha_pattern={spec.targets[-1]: _ALPHA_PATTERN})
    if family in WIDE_TARGETS:
        out["wide"] = dict(r=8, lora_alpha=16, target_modules=list(WIDE_TARGETS[family]))
    if spec.seq_cls:
        for name in ("cls_a", "cls_b", "cls_same_a", "cls_same_b"):
            out[name] = dict(r=8, lora_alpha=16, target_modules=list(spec.targets), task_type="SEQ_CLS",
                             modules_to_save=["classifier"])
    for kw in out.values():
        kw.update(lora_dropout=0.0, fan_in_fan_out=spec.fan_in_fan_out)
    return out


def _head_key(adapter):
    return {"cls_a": "head-a", "cls_b": "head-b"}.get(adapter, "head-same")


def _build_peft(family, spec, base_model, adapter, kwargs, out):
    """Save one PEFT adapter with planted factors to folder ``out``; return ``{module: (d_out, d_in, W)}``."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(base_model), LoraConfig(**kwargs))
    modules = {}
    with torch.no_grad():
        for full, layer in model.named_modules():
            if not (hasattr(layer, "lora_A") and "default" in layer.lora_A):
                continue
            name = full.removeprefix("base_model.model.")
            lora_A, lora_B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            (r, d_in), d_out = lora_A.shape, lora_B.shape[0]
            W = _weight(layer, spec.fan_in_fan_out)
            A, B = _factors(family, adapter, name, d_out, d_in, r, W)
            lora_A.copy_(torch.from_numpy(A))
            lora_B.copy_(torch.from_numpy(B))
            modules[name] = (d_out, d_in, W)
        if "modules_to_save" in kwargs:
            rng = _rng(family, _head_key(adapter))
            for full, wrapper in model.named_modules():
                if hasattr(wrapper, "modules_to_save") and "default" in getattr(wrapper, "modules_to_save", {}):
                    for _, p in sorted(wrapper.modules_to_save["default"].named_parameters()):
                        p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.1))
    model.save_pretrained(str(out), safe_serialization=True)
    return modules


def _build_kohya(family, adapter, modules, out):
    """Write one kohya LoRA file with the rank pair's planted sharing on ``modules``."""
    import torch
    from safetensors.torch import save_file

    r = ADAPTERS[adapter]
    tensors = {}
    for name, (d_out, d_in, W) in modules.items():
        A, B = _factors(family, adapter, name, d_out, d_in, r, W)
        key = kohya_name(family, name)
        tensors[f"{key}.lora_down.weight"] = torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32))
        tensors[f"{key}.lora_up.weight"] = torch.from_numpy(np.ascontiguousarray(B, dtype=np.float32))
        tensors[f"{key}.alpha"] = torch.tensor(float(2 * r))
    save_file(tensors, str(out), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(r),
                                           "ss_network_alpha": str(float(2 * r))})


def _build_family(family, root):
    import torch

    spec = _SPECS[family]
    folder = os.path.join(os.fspath(root), family)
    torch.manual_seed(zlib.crc32(family.encode()))
    base_model = spec.make().eval()
    base = os.path.join(folder, "base")
    base_model.save_pretrained(base, safe_serialization=True)
    adapters = {}
    modules = None
    configs = _configs(family, spec, base_model)
    for adapter in adapter_names(family):
        if adapter in KOHYA_PAIR:
            adapters[adapter] = os.path.join(folder, f"{adapter}.safetensors")
            _build_kohya(family, adapter, modules, adapters[adapter])
            continue
        adapters[adapter] = os.path.join(folder, adapter)
        got = _build_peft(family, spec, base_model, adapter, configs[adapter], adapters[adapter])
        modules = got if adapter == "rank_low" else modules
    return CorpusModel(family=family, base=base, adapters=adapters, targets=spec.targets, width=spec.width,
                       n_layers=spec.n_layers)


def build_corpus(root, families=FAMILIES):
    """Build the corpus under ``root`` (one folder per family).

    Parameters
    ----------
    root : str or os.PathLike
        An existing, writable folder.
    families : iterable of str
        A subset of :data:`FAMILIES`.

    Returns
    -------
    dict of str to CorpusModel
        Family -> its base and adapters, in the order asked.
    """
    families = tuple(families)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; expected a subset of {list(FAMILIES)}")
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(1):  # tiny factorisations: spinning BLAS threads cost 30x
        warnings.simplefilter("ignore")
        return {family: _build_family(family, root) for family in families}
