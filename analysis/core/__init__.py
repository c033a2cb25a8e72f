"""Exact factored representation of LoRA updates, and adapters as mappings of them."""

from analysis.core.adapter import (Adapter, is_embedding_name, natural_key, parse_layers, select_modules,
                                   split_name)
from analysis.core.lowrank import FactoredSVD, LowRank, numerical_rank, sign_flip
from analysis.core.randomized import krylov_settings, randomized_svd
from analysis.core.truncate import from_svd, truncate

__all__ = ["Adapter", "FactoredSVD", "LowRank", "from_svd", "is_embedding_name", "krylov_settings", "natural_key",
           "numerical_rank", "parse_layers", "randomized_svd", "select_modules", "sign_flip", "split_name", "truncate"]
