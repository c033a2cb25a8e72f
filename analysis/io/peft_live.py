"""An :class:`~analysis.core.adapter.Adapter` from a live PEFT model, or from a state dict and its config.

The tensors and the config are exactly those ``save_pretrained`` would write
(``peft.utils.get_peft_model_state_dict`` and ``PeftConfig.to_dict``), read by the same
readers as a saved adapter, so the result equals ``load_adapter`` of the saved folder
without touching the disk. Tensors are copied to CPU numpy (fp16 / bf16 upcast to float32)
and checked for NaN / Inf.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import AdapterError
from analysis.io.peft import load_peft
from analysis.io.tensors import check_finite

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from analysis.core.adapter import Adapter

__all__ = ["from_peft_model", "from_state_dict"]


def _numpy(t, label, key):
    if hasattr(t, "detach"):  # a torch tensor
        import torch

        if not t.is_floating_point():
            raise AdapterError(f"expected floating-point values, got dtype {t.dtype}", path=label, key=key)
        t = t.detach().cpu()
        if t.element_size() < 4:
            t = t.to(torch.float32)
        t = t.numpy()
    x = np.asarray(t)
    if x.dtype.kind != "f":
        raise AdapterError(f"expected floating-point values, got dtype {x.dtype}", path=label, key=key)
    return check_finite(x, label, key)


def _plain_config(config, label):
    """A JSON-like dict of a PeftConfig or a mapping (enums to their values, sets to lists)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, dict):
        raise AdapterError(f"expected a PEFT config (PeftConfig or dict), got {type(config).__name__}", path=label)

    def default(v):
        if isinstance(v, (set, frozenset, tuple)):
            return sorted(v, key=str) if isinstance(v, (set, frozenset)) else list(v)
        return str(getattr(v, "value", v))
    return json.loads(json.dumps(config, default=default))


def from_state_dict(state_dict: Mapping[str, Any], config: Any, *, label: str = "<state_dict>",
                    adapter_name: str | None = None) -> Adapter:
    """Read an adapter from its state dict and config, as ``save_pretrained`` would have written them.

    Parameters
    ----------
    state_dict : Mapping[str, tensor or ndarray]
        ``get_peft_model_state_dict(model)`` (keys ``base_model.model.<module>.lora_A.weight`` …).
    config : PeftConfig or dict
        Its configuration.
    label : str
        Names the adapter in messages and in ``Adapter.path``.
    adapter_name : str, optional
        Select one adapter when the keys still carry adapter names.

    Returns
    -------
    Adapter
    """
    tensors = {str(k): _numpy(v, label, str(k)) for k, v in dict(state_dict).items()}
    return load_peft(label, tensors=tensors, config=_plain_config(config, label), adapter_name=adapter_name)


def from_peft_model(model: Any, adapter_name: str = "default") -> Adapter:
    """The :class:`~analysis.core.adapter.Adapter` of one adapter of a live ``PeftModel``.

    Parameters
    ----------
    model : peft.PeftModel
        A model with adapters (``model.peft_config``), e.g. in a notebook right after training.
    adapter_name : str
        Which adapter (PEFT's default is ``"default"``).

    Returns
    -------
    Adapter
        Equal to ``load_adapter`` of ``model.save_pretrained(...)``'s folder (for that adapter).

    Examples
    --------
    >>> import analysis                                                     # doctest: +SKIP
    >>> ad = analysis.from_peft_model(peft_model)                            # doctest: +SKIP
    >>> ad["model.layers.0.self_attn.q_proj"].svd().S                       # doctest: +SKIP
    """
    configs = getattr(model, "peft_config", None)
    label = f"<{type(model).__name__} adapter {adapter_name!r}>"
    if not isinstance(configs, dict):
        raise AdapterError(f"expected a PEFT model (with .peft_config), got {type(model).__name__}", path=label)
    if adapter_name not in configs:
        raise AdapterError(f"no adapter named {adapter_name!r}; the model has {sorted(configs)}", path=label)
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return from_state_dict(state, configs[adapter_name], label=label)
