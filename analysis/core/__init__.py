"""Exact factored representation of LoRA updates."""

from analysis.core.lowrank import FactoredSVD, LowRank, numerical_rank, sign_flip
from analysis.core.randomized import randomized_svd

__all__ = ["FactoredSVD", "LowRank", "numerical_rank", "randomized_svd", "sign_flip"]
