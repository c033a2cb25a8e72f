"""Low-rank subspace analysis of LoRA adapters.

Read any common LoRA checkpoint into exact factored updates ΔW = s·B·A and
reproduce the analyses of Section 7 of the LoRA paper (Hu et al., 2021).

>>> import analysis
>>> ad = analysis.load_adapter("checkpoints/r8_seed0")          # doctest: +SKIP
>>> U, S, V = ad["model.layers.15.self_attn.q_proj"].svd()     # doctest: +SKIP
"""

from analysis.core import Adapter, FactoredSVD, LowRank, split_name
from analysis.errors import AdapterError, MissingAlphaError, UnsupportedAdapterError
from analysis.io import load_adapter
from analysis.metrics import (SimilarityResult, module_similarity, principal_angles, random_null,
                              subspace_similarity)

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

__all__ = ["Adapter", "AdapterError", "FactoredSVD", "LowRank", "MissingAlphaError",
           "SimilarityResult", "UnsupportedAdapterError", "load_adapter", "module_similarity",
           "principal_angles", "random_null", "split_name", "subspace_similarity", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
