"""Intruder dimensions of every module of an adapter against its base model.

Streams the base one tensor at a time (:func:`analysis.io.base.open_base`:
HF safetensors folder / shards / file, or a Llama GGUF) and runs
:func:`analysis.metrics.intruders.intruder_dimensions` per module. The command
is :mod:`analysis.cli.intruders`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from analysis.core.adapter import natural_key, select_modules, split_name
from analysis.errors import AdapterError
from analysis.metrics.intruders import intruder_dimensions
from analysis.sweeps.common import progress as progress_bar
from analysis.sweeps.common import require_adapter

__all__ = ["IntruderSweep", "intruder_sweep"]


@dataclass(frozen=True)
class IntruderSweep:
    """Intruder counts of every module.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, d_out, d_in, r, zero,
        count, ranks, min_max_cos, energy_share, sigma1, seconds`` (``ranks``:
        1-based positions of the intruders, as text ``"1,3"``).
    results : dict[str, IntruderResult]
    top_k, threshold, side, method
        The settings.
    """

    frame: object
    results: dict = field(default_factory=dict)
    top_k: int = 10
    threshold: float = 0.5
    side: str = "left"
    method: str = "full"

    def to_frame(self):
        """The per-module table (a copy)."""
        return self.frame.copy()


def intruder_sweep(adapter, base, *, top_k=10, threshold=0.5, side="left", method="full", seed=0,
                   modules=None, layers=None, progress=False):
    """Intruder dimensions of every module of ``adapter`` against the base weights.

    Parameters
    ----------
    adapter : Adapter
        Scales must be known (ΔW enters W + ΔW).
    base : str, os.PathLike or BaseWeights
        The base model, see :func:`analysis.io.base.open_base`.
    top_k, threshold, side, method, seed
        See :func:`~analysis.metrics.intruders.intruder_dimensions`.
    modules, layers
        Filters, see :func:`analysis.core.adapter.select_modules`.
    progress : bool

    Returns
    -------
    IntruderSweep
    """
    import pandas as pd

    from analysis.io.base import BaseWeights, base_matrix, open_base

    require_adapter(adapter, base_names="intruders (W is read by module name)")
    names = select_modules(adapter, modules=modules, layers=layers)
    bw = base if isinstance(base, BaseWeights) else open_base(base)
    missing = [n for n in names if n not in bw]
    if missing:
        raise AdapterError(f"expected a base weight for every adapter module, got none for {len(missing)} "
                           f"(e.g. {missing[0]}.weight): is this the adapter's base model?", path=bw.path)
    rows, results = [], {}
    try:
        for name, W in progress_bar(bw.weights(names), enabled=progress, total=len(names)):
            lr = adapter[name]
            W = base_matrix(W, lr, name=name, path=bw.path)
            res = intruder_dimensions(W, lr, top_k=top_k, threshold=threshold, side=side, method=method,
                                      seed=seed, name=name)
            lr.clear_cache()
            results[name] = res
            layer, module = split_name(name)
            rows.append({"name": name, "layer": layer, "module": module, "d_out": W.shape[0], "d_in": W.shape[1],
                         "r": lr.r, "zero": res.zero, "count": res.count,
                         "ranks": ",".join(str(j) for j in res.ranks),
                         "min_max_cos": float(res.max_cos.min()), "energy_share": res.energy_share,
                         "sigma1": float(res.sigma[0]), "seconds": res.seconds})
    finally:
        if bw is not base:
            bw.close()
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values("name", key=lambda s: s.map(natural_key)).reset_index(drop=True)
    return IntruderSweep(frame=frame, results=results, top_k=int(top_k), threshold=float(threshold),
                         side=side, method=method)
