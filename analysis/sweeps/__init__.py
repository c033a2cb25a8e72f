"""Sweeps: run the metrics over every module of one adapter, a pair, or several, into tidy DataFrames.

Each module is one concept: :mod:`~analysis.sweeps.pair` (two adapters, φ per module),
:mod:`~analysis.sweeps.adapter` (one or several adapters, spectra and the W-vs-ΔW measures),
:mod:`~analysis.sweeps.spectra`, :mod:`~analysis.sweeps.advice` (rank advice),
:mod:`~analysis.sweeps.resize` (rank reduction), :mod:`~analysis.sweeps.intruders`,
:mod:`~analysis.sweeps.finetune` (a full fine-tune's update), :mod:`~analysis.sweeps.collection` (N × N
similarity and cosine, as Dask tasks), :mod:`~analysis.sweeps.trajectory` (checkpoints of one run),
:mod:`~analysis.sweeps.merge` (exact merges and their interference). They need pandas, so ``import analysis``
imports none of them.
"""

from analysis.sweeps.adapter import AdapterSweep, analyse_adapter, analyse_adapters
from analysis.sweeps.advice import ADVICE_SIDES, RankAdvice, advise_ranks
from analysis.sweeps.collection import CollectionResult, collection_similarity, seriation_order
from analysis.sweeps.finetune import FinetuneDeltas, finetune_deltas
from analysis.sweeps.merge import MERGE_METHODS, MergeResult, merge_adapters
from analysis.sweeps.intruders import IntruderSweep, intruder_sweep
from analysis.sweeps.pair import PairSweep, compare_adapters
from analysis.sweeps.resize import ResizeResult, read_rank_pattern, resize_adapter
from analysis.sweeps.spectra import SPECTRA_COLUMNS, spectra_frame, spectra_long, spectrum_row
from analysis.sweeps.trajectory import Trajectory, trajectory

__all__ = ["ADVICE_SIDES", "AdapterSweep", "FinetuneDeltas", "IntruderSweep", "PairSweep", "RankAdvice",
           "ResizeResult", "SPECTRA_COLUMNS", "advise_ranks", "analyse_adapter", "analyse_adapters",
           "compare_adapters", "finetune_deltas", "intruder_sweep", "read_rank_pattern", "resize_adapter",
           "spectra_frame", "spectra_long", "spectrum_row", "CollectionResult", "collection_similarity",
           "seriation_order", "MERGE_METHODS", "MergeResult", "merge_adapters", "Trajectory", "trajectory"]
