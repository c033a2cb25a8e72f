"""Low-rank subspace analysis of LoRA adapters.

Read any common LoRA checkpoint into exact factored updates ΔW = s·B·A and
reproduce the analyses of Section 7 of the LoRA paper (Hu et al., 2021).

>>> import analysis
>>> ad = analysis.load_adapter("checkpoints/r8_seed0")          # doctest: +SKIP
>>> U, S, V = ad["model.layers.15.self_attn.q_proj"].svd()     # doctest: +SKIP
"""

from typing import TYPE_CHECKING, Any

from analysis.core import Adapter, FactoredSVD, LowRank, split_name
from analysis.errors import AdapterError, InputError, MissingAlphaError, UnsupportedAdapterError
from analysis.io import load_adapter
from analysis.metrics import (SimilarityResult, module_similarity, principal_angles, random_null,
                              subspace_similarity)

if TYPE_CHECKING:  # the lazy names below, for type checkers
    from analysis.io.base import open_base
    from analysis.io.dora import dora_effective
    from analysis.io.frames import load_frame, save_frame
    from analysis.io.kohya_names import resolve_adapter_names
    from analysis.io.peft_live import from_peft_model, from_state_dict
    from analysis.sweeps.adapter import analyse_adapter, analyse_adapters
    from analysis.sweeps.advice import advise_ranks
    from analysis.sweeps.collection import collection_similarity
    from analysis.sweeps.finetune import finetune_deltas
    from analysis.sweeps.intruders import intruder_sweep
    from analysis.sweeps.merge import merge_adapters
    from analysis.sweeps.pair import compare_adapters
    from analysis.sweeps.resize import resize_adapter
    from analysis.sweeps.spectra import spectra_frame, spectra_long
    from analysis.sweeps.trajectory import trajectory

__version__ = "0.1.0"

# Sweeps and frames need pandas; they are imported on first use so that
# ``import analysis`` stays light (no pandas, matplotlib or torch).
_LAZY = {
    "analyse_adapter": "analysis.sweeps.adapter", "analyse_adapters": "analysis.sweeps.adapter",
    "compare_adapters": "analysis.sweeps.pair",
    "save_frame": "analysis.io.frames", "load_frame": "analysis.io.frames",
    "spectra_frame": "analysis.sweeps.spectra", "spectra_long": "analysis.sweeps.spectra",
    "advise_ranks": "analysis.sweeps.advice", "resize_adapter": "analysis.sweeps.resize",
    "finetune_deltas": "analysis.sweeps.finetune", "intruder_sweep": "analysis.sweeps.intruders",
    "open_base": "analysis.io.base",
    "from_peft_model": "analysis.io.peft_live", "from_state_dict": "analysis.io.peft_live",
    "dora_effective": "analysis.io.dora", "resolve_adapter_names": "analysis.io.kohya_names",
    "collection_similarity": "analysis.sweeps.collection", "merge_adapters": "analysis.sweeps.merge",
    "trajectory": "analysis.sweeps.trajectory",
}

__all__ = ["Adapter", "AdapterError", "FactoredSVD", "InputError", "LowRank", "MissingAlphaError",
           "SimilarityResult", "UnsupportedAdapterError", "load_adapter", "module_similarity",
           "principal_angles", "random_null", "split_name", "subspace_similarity",
           # the lazy names (_LAZY), spelled out for linters
           "analyse_adapter", "analyse_adapters", "compare_adapters", "save_frame", "load_frame", "spectra_frame",
           "spectra_long", "advise_ranks", "resize_adapter", "finetune_deltas", "intruder_sweep", "open_base",
           "from_peft_model", "from_state_dict", "dora_effective", "resolve_adapter_names", "collection_similarity",
           "merge_adapters", "trajectory"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
