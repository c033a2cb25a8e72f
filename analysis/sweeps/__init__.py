"""Sweeps: run the metrics over every module of one adapter, a pair, or several, into tidy DataFrames.

Every sweep runs its per-module function on :func:`~analysis.sweeps.driver.sweep_modules` (jobs, progress, the
cache policy) and splits two adapters' modules by :func:`~analysis.sweeps.driver.pair_modules` (a shared module
whose ΔW shapes differ is skipped and named). Each module is one concept: :mod:`~analysis.sweeps.pair` (two
adapters, φ per module),
:mod:`~analysis.sweeps.adapter` (one or several adapters, spectra and the W-vs-ΔW measures),
:mod:`~analysis.sweeps.spectra`, :mod:`~analysis.sweeps.advice` (rank advice),
:mod:`~analysis.sweeps.resize` (rank reduction), :mod:`~analysis.sweeps.intruders`,
:mod:`~analysis.sweeps.finetune` (a full fine-tune's update), :mod:`~analysis.sweeps.collection` (N × N
similarity and cosine, as Dask tasks), :mod:`~analysis.sweeps.trajectory` (checkpoints of one run),
:mod:`~analysis.sweeps.merge` (exact merges and their interference). They need pandas, so ``import analysis``
imports none of them, and ``import analysis.sweeps`` imports each on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the lazy names below, for type checkers
    from analysis.sweeps.adapter import AdapterSweep, analyse_adapter, analyse_adapters
    from analysis.sweeps.advice import ADVICE_SIDES, RankAdvice, advise_ranks
    from analysis.sweeps.collection import CollectionResult, collection_similarity, seriation_order
    from analysis.sweeps.finetune import FinetuneDeltas, finetune_deltas
    from analysis.sweeps.intruders import IntruderSweep, intruder_sweep
    from analysis.sweeps.merge import MERGE_METHODS, MergeResult, merge_adapters
    from analysis.sweeps.pair import PairSweep, compare_adapters
    from analysis.sweeps.resize import ResizeResult, read_rank_pattern, resize_adapter
    from analysis.sweeps.spectra import SPECTRA_COLUMNS, spectra_frame, spectra_long, spectrum_row
    from analysis.sweeps.trajectory import Trajectory, trajectory

#: Each public name and its module, imported on first use: a command that needs one sweep (or only
#: :mod:`~analysis.sweeps.progress`) imports that one, not all of them (measured: +90 ms on every ``--help``).
_LAZY = {name: f"analysis.sweeps.{module}" for module, names in {
    "adapter": ("AdapterSweep", "analyse_adapter", "analyse_adapters"),
    "advice": ("ADVICE_SIDES", "RankAdvice", "advise_ranks"),
    "collection": ("CollectionResult", "collection_similarity", "seriation_order"),
    "finetune": ("FinetuneDeltas", "finetune_deltas"),
    "intruders": ("IntruderSweep", "intruder_sweep"),
    "merge": ("MERGE_METHODS", "MergeResult", "merge_adapters"),
    "pair": ("PairSweep", "compare_adapters"),
    "resize": ("ResizeResult", "read_rank_pattern", "resize_adapter"),
    "spectra": ("SPECTRA_COLUMNS", "spectra_frame", "spectra_long", "spectrum_row"),
    "trajectory": ("Trajectory", "trajectory"),
}.items() for name in names}

__all__ = ["ADVICE_SIDES", "AdapterSweep", "FinetuneDeltas", "IntruderSweep", "PairSweep", "RankAdvice",
           "ResizeResult", "SPECTRA_COLUMNS", "advise_ranks", "analyse_adapter", "analyse_adapters",
           "compare_adapters", "finetune_deltas", "intruder_sweep", "read_rank_pattern", "resize_adapter",
           "spectra_frame", "spectra_long", "spectrum_row", "CollectionResult", "collection_similarity",
           "seriation_order", "MERGE_METHODS", "MergeResult", "merge_adapters", "Trajectory", "trajectory"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:  # a submodule (``analysis.sweeps.pair``) not imported yet
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
