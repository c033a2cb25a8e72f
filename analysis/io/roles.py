"""Module roles: what each adapted module is in its architecture, from one table.

Every module name (as an adapter keys it: ``model.layers.3.self_attn.q_proj``, ``encoder.block.0.layer.1.
EncDecAttention.q``, ``transformer.h.5.attn.c_attn``, ``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``,
kohya's ``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` …) gets

- a **role**: attention ``q`` / ``k`` / ``v`` / ``o``, fused ``qkv``, cross-attention ``cross_q`` / ``cross_k`` /
  ``cross_v`` / ``cross_o``, MLP ``up`` / ``gate`` / ``down`` (fused ``gate_up``), ``embedding``, or ``other``;
- a **position**: the stack it sits in (``decoder``, ``encoder``, ``text_encoder``, ``vision_encoder``,
  ``unet down_blocks`` …) and its layer index within it (the first integer of the name, as
  :func:`analysis.core.adapter.split_name` gives it), plus the module part after that index.

The table covers Llama / Mistral / Qwen / Gemma / Phi, GPT-2, GPT-J, GPT-NeoX, Falcon / BLOOM, MPT, OPT, BART /
Whisper / Marian, T5, BERT / RoBERTa / DeBERTa / ViT, DistilBERT, CLIP (text and vision), diffusers UNet / DiT / Flux /
SD3 and kohya / LyCORIS names. Names it does not know fall back to the tensor-name map of the ``gguf`` package (the
names llama.cpp's converter knows for every architecture it supports) and then to role ``other`` with the raw name:
never an error. Everything above io asks for roles here, never for literal names like ``q_proj``.

>>> module_role("model.layers.3.self_attn.q_proj")
ModuleRole(name='model.layers.3.self_attn.q_proj', role='q', stack='decoder', layer=3, module='self_attn.q_proj')
>>> module_role("decoder.block.1.layer.1.EncDecAttention.v").role, module_role("transformer.h.0.attn.c_attn").role
('cross_v', 'qkv')
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from analysis.core.adapter import is_embedding_name, split_name

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ROLES", "ATTENTION_ROLES", "ModuleRole", "module_role", "role_label", "stack_order", "kind_of", "with_roles"]

#: Every role, in display order.
ROLES = ("q", "k", "v", "o", "qkv", "cross_q", "cross_k", "cross_v", "cross_o", "up", "gate", "gate_up", "down",
         "embedding", "other")
#: Roles of self-attention projections (the paper's ΔWq and ΔWv are ``q`` and ``v``).
ATTENTION_ROLES = ("q", "k", "v", "o", "qkv")

_ROLE_TEXT = {"q": "attention q", "k": "attention k", "v": "attention v", "o": "attention output",
              "qkv": "fused attention qkv", "cross_q": "cross-attention q", "cross_k": "cross-attention k",
              "cross_v": "cross-attention v", "cross_o": "cross-attention output", "up": "MLP up", "gate": "MLP gate",
              "gate_up": "MLP gate+up (fused)", "down": "MLP down", "embedding": "embedding", "other": "other"}

# Cross-attention blocks (the module part below the layer index, lower case, '.' -> '_').
_CROSS = re.compile(r"(^|_)(encdecattention|encoder_attn|crossattention|cross_attn|cross_attention|attn2)(_|$)")
# Attention context: a trailing output projection inside one of these is the attention output, not an MLP.
_ATTN_CTX = r"(attn|attention|self_attn|selfattention|self_attention|encdecattention|encoder_attn|crossattention|" \
            r"cross_attn|attn1|attn2|mixer)"

# (pattern on the lower-cased module part with '.' -> '_', role); the first match wins, so order matters.
_TABLE = [
    (rf"(^|_){_ATTN_CTX}_(c_proj|wo|dense|output_dense|out_proj|o_proj|o|out_lin|linear|attn_out)$", "o"),
    (r"(^|_)to_add_out(_0)?$", "cross_o"),  # joint attention (SD3 / Flux): the text stream's projections
    (r"(^|_)add_q_proj$", "cross_q"),
    (r"(^|_)add_k_proj$", "cross_k"),
    (r"(^|_)add_v_proj$", "cross_v"),
    (r"(^|_)(to_out(_0)?|out_lin|attn_out|o_proj)$", "o"),
    (r"(^|_)(c_attn|qkv|qkv_proj|query_key_value|wqkv|to_qkv|in_proj|in_proj_qkv|w_pack)$", "qkv"),
    (r"(^|_)gate_up_proj$", "gate_up"),
    (r"(^|_)(q_proj|q|query|q_lin|to_q|wq|query_proj|q_attn)$", "q"),
    (r"(^|_)(k_proj|k|key|k_lin|to_k|wk|key_proj)$", "k"),
    (r"(^|_)(v_proj|v|value|v_lin|to_v|wv|value_proj)$", "v"),
    (r"(^|_)(gate_proj|w1|wi_0|linear_1|c_fc2|ff_proj)$", "gate"),
    (r"(^|_)(up_proj|fc1|c_fc|c_fc_1|dense_h_to_4h|wi|wi_1|lin1|w3|fc_in|intermediate_dense|ff_net_0_proj|"
     r"ff_context_net_0_proj|proj_in_ff)$", "up"),
    (r"(^|_)(down_proj|fc2|dense_4h_to_h|wo|lin2|w2|fc_out|ff_net_2|ff_context_net_2|mlp_c_proj|output_dense|"
     r"ff_out)$", "down"),
]
_TABLE = [(re.compile(p), role) for p, role in _TABLE]  # type: ignore[misc]  # compiled in place

# Stacks: (pattern on the lower-cased prefix before the layer index, '.' -> '_', stack name); first match wins.
_STACKS = [
    (r"(^|_)lora_te2(_|$)|(^|_)text_encoder_2(_|$)", "text_encoder_2"),
    (r"(^|_)lora_te3(_|$)|(^|_)text_encoder_3(_|$)", "text_encoder_3"),
    (r"(^|_)(lora_te1?|text_encoder|text_model)(_|$)", "text_encoder"),
    (r"(^|_)(vision_model|vision_tower|visual|vision_encoder)(_|$)", "vision_encoder"),
    (r"(^|_)(down_blocks|input_blocks)(_|$)", "unet down"),
    (r"(^|_)(mid_block|middle_block)(_|$)", "unet mid"),
    (r"(^|_)(up_blocks|output_blocks)(_|$)", "unet up"),
    (r"(^|_)single_transformer_blocks$", "single_transformer_blocks"),
    (r"(^|_)transformer_blocks$", "transformer_blocks"),
    (r"(^|_)decoder(_|$)", "decoder"),
    (r"(^|_)(encoder|distilbert_transformer)(_|$)|^transformer_layer$|(^|_)(bert|roberta|deberta|electra|vit)(_|$)",
     "encoder"),
    (r"(^|_)(h|layers|blocks|gpt_neox_layers|model_layers)$", "decoder"),
]
_STACKS = [(re.compile(p), s) for p, s in _STACKS]  # type: ignore[misc]  # compiled in place
_STACK_ORDER = ("decoder", "encoder", "text_encoder", "text_encoder_2", "text_encoder_3", "vision_encoder",
                "unet down", "unet mid", "unet up", "transformer_blocks", "single_transformer_blocks")
_KOHYA = re.compile(r"^(lora_unet|lora_te\d?|lycoris)_")


@dataclass(frozen=True)
class ModuleRole:
    """What one module is: its role and its position in the model.

    Attributes
    ----------
    name : str
        The module name as given.
    role : str
        One of :data:`ROLES`.
    stack : str
        The stack it sits in (``"decoder"``, ``"encoder"``, ``"text_encoder"``, ``"unet down"`` …; the raw prefix
        before the layer index for an unknown layout; ``""`` without a layer index).
    layer : int or None
        Index within the stack (the first integer of the name), None for modules outside the layers.
    module : str
        The part of the name after the layer index (the whole name without one).
    """

    name: str
    role: str
    stack: str
    layer: int | None
    module: str

    @property
    def kind(self) -> str:
        """The module type across layers: ``"<stack>/<module>"`` (unique per stack and position in a layer)."""
        return f"{self.stack}/{self.module}"

    @property
    def label(self) -> str:
        """The role in words: ``"attention q"``, ``"cross-attention v"``, ``"MLP up"``, or the raw module part."""
        return role_label(self.role) if self.role != "other" else self.module


def role_label(role: str) -> str:
    """A role in words (``"q"`` -> ``"attention q"``)."""
    return _ROLE_TEXT.get(role, role)


@functools.lru_cache(maxsize=1)
def _gguf_suffixes():
    """``{module part after the layer index: role}`` from the ``gguf`` package's tensor-name map (unambiguous only)."""
    try:
        from gguf import MODEL_TENSOR
        from gguf.tensor_mapping import TensorNameMap
    except ImportError:  # the table above still works
        return {}
    want = {"ATTN_Q": "q", "ATTN_K": "k", "ATTN_V": "v", "ATTN_OUT": "o", "ATTN_QKV": "qkv", "FFN_UP": "up",
            "FFN_GATE": "gate", "FFN_DOWN": "down", "ENC_ATTN_Q": "q", "ENC_ATTN_K": "k", "ENC_ATTN_V": "v",
            "ENC_ATTN_OUT": "o", "DEC_ATTN_Q": "q", "DEC_ATTN_K": "k", "DEC_ATTN_V": "v", "DEC_ATTN_OUT": "o",
            "DEC_CROSS_ATTN_Q": "cross_q", "DEC_CROSS_ATTN_K": "cross_k", "DEC_CROSS_ATTN_V": "cross_v",
            "DEC_CROSS_ATTN_OUT": "cross_o", "ENC_FFN_UP": "up", "ENC_FFN_GATE": "gate", "ENC_FFN_DOWN": "down",
            "DEC_FFN_UP": "up", "DEC_FFN_GATE": "gate", "DEC_FFN_DOWN": "down", "V_ENC_ATTN_Q": "q",
            "V_ENC_ATTN_K": "k", "V_ENC_ATTN_V": "v", "V_ENC_ATTN_O": "o", "V_ENC_ATTN_QKV": "qkv"}
    out, clash = {}, set()
    for t, templates in TensorNameMap.block_mappings_cfg.items():
        role = want.get(getattr(t, "name", ""))
        if role is None or not isinstance(t, MODEL_TENSOR):
            continue
        for tpl in templates:
            if "{bid}." not in tpl:
                continue
            tail = tpl.split("{bid}.", 1)[1].lower().replace(".", "_")
            if out.get(tail, role) != role:
                clash.add(tail)
            out[tail] = role
    return {k: v for k, v in out.items() if k not in clash}


def _role(module_part, name):
    if is_embedding_name(name):
        return "embedding"
    u = module_part.lower().replace(".", "_")
    u = _KOHYA.sub("", u)
    for pat, role in _TABLE:
        if pat.search(u):
            if role in ("q", "k", "v", "o") and _CROSS.search(u):
                return "cross_" + role
            return role
    role = _gguf_suffixes().get(u)
    return role or "other"


def _stack(prefix, name):
    p = prefix.lower().replace(".", "_").strip("_")
    if not p:
        return ""
    for pat, stack in _STACKS:
        if pat.search(p):
            return stack
    return prefix.strip("._")


@functools.lru_cache(maxsize=65536)
def module_role(name: str) -> ModuleRole:
    """The role and position of one module name; unknown names give role ``"other"``, never an error.

    Parameters
    ----------
    name : str
        A module name as an adapter keys it (dotted base-model names, or kohya's underscore names).

    Returns
    -------
    ModuleRole

    Examples
    --------
    >>> r = module_role("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_q")
    >>> r.role, r.stack, r.layer
    ('cross_q', 'unet down', 1)
    >>> module_role("bert.encoder.layer.2.attention.output.dense").role, module_role("bert.encoder.layer.2.output.dense").role
    ('o', 'down')
    >>> module_role("lm_head")
    ModuleRole(name='lm_head', role='other', stack='', layer=None, module='lm_head')
    """
    name = str(name)
    base = name.split(":", 1)[0]  # loralib's split fused modules: 'transformer.h.0.attn.c_attn:q'
    layer, module = split_name(name)
    if layer is None:
        prefix = ""
    else:
        m = re.match(r"^(?P<prefix>.*?)(?:^|[._])\d+[._]", base)
        prefix = m.group("prefix") if m else ""
    if ":" in name and name.rsplit(":", 1)[1] in ("q", "k", "v"):
        role = name.rsplit(":", 1)[1]
    else:
        role = _role(module, name)
    return ModuleRole(name, role, _stack(prefix, name), layer, module)


def kind_of(name: str) -> str:
    """The module type of ``name`` across layers (:attr:`ModuleRole.kind`)."""
    return module_role(name).kind


def stack_order(stack: str) -> tuple:
    """Sort key of a stack name: the model's own order (decoder, encoder, text encoders, UNet down → mid → up …)."""
    return (_STACK_ORDER.index(stack) if stack in _STACK_ORDER else len(_STACK_ORDER), stack)


def with_roles(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``stack`` and ``role`` columns after ``module`` (from its ``name`` column), for tables and JSON.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per module, with a ``name`` column (as every sweep frame has).

    Returns
    -------
    pandas.DataFrame
        A new frame; unchanged when it has no ``name`` column or already has both columns.
    """
    if "name" not in frame.columns or {"stack", "role"} <= set(frame.columns):
        return frame
    pos = [module_role(n) for n in frame["name"]]
    at = list(frame.columns).index("module") + 1 if "module" in frame.columns else len(frame.columns)
    out = frame.copy()
    out.insert(at, "stack", [p.stack for p in pos])
    out.insert(at + 1, "role", [p.role for p in pos])
    return out
