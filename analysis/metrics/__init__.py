"""Pure functions on bases and matrices; they know no file formats."""

from analysis.metrics.correlation import (OVERLAP_SIDES, WeightCorrelation, WeightOverlap,
                                          projection_norm, random_bases, weight_correlation,
                                          weight_overlap)
from analysis.metrics.cosine import (Interference, cosine_from_gram, cosine_null_std, frobenius_cosine,
                                     frobenius_inner, gram_blocks, interference, phi_blocks)
from analysis.metrics.pair import (SIDES, SimilarityResult, gaussian_similarity, module_similarity,
                                   near_tied_cuts)
from analysis.metrics.spectrum import (SpectrumSummary, effective_rank, energy_retained,
                                       rank_for_energy, rank_for_error, spectrum_summary,
                                       stable_rank)
from analysis.metrics.similarity import (check_orthonormal, principal_angles, random_null,
                                         random_null_std, subspace_similarity)

__all__ = ["SIDES", "SimilarityResult", "gaussian_similarity", "module_similarity", "near_tied_cuts",
           "check_orthonormal", "principal_angles", "random_null", "random_null_std",
           "subspace_similarity", "SpectrumSummary", "effective_rank", "energy_retained",
           "rank_for_energy", "rank_for_error", "spectrum_summary", "stable_rank",
           "OVERLAP_SIDES", "WeightCorrelation", "WeightOverlap", "projection_norm", "random_bases",
           "weight_correlation", "weight_overlap", "Interference", "cosine_from_gram", "cosine_null_std",
           "frobenius_cosine", "frobenius_inner", "gram_blocks", "interference", "phi_blocks"]
