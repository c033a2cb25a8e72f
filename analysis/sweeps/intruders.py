"""Intruder dimensions of every module of an adapter against its base model.

Streams the base one tensor at a time (:func:`analysis.io.base.open_base`:
HF safetensors folder / shards / file, or a Llama GGUF) and runs
:func:`analysis.metrics.intruders.intruder_dimensions` per module. The command
is :mod:`analysis.cli.intruders`.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from analysis.core.adapter import natural_key, select_modules, split_name
from analysis.errors import AdapterError
from analysis.io.base import BaseWeights, base_matrix, open_base
from analysis.io.kohya_names import resolve_adapter_names
from analysis.io.roles import with_roles
from analysis.metrics.intruders import intruder_dimensions
from analysis.sweeps.common import require_adapter
from analysis.sweeps.driver import sweep_modules
from analysis.sweeps.svd_cache import SVDCache, cached_full_basis, tensor_file

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import pandas as pd

    from analysis.core.adapter import Adapter, Layers
    from analysis.sweeps.progress import Progress

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

    frame: pd.DataFrame
    results: dict = field(default_factory=dict)
    top_k: int = 10
    threshold: float = 0.5
    side: str = "left"
    method: str = "topk"

    def to_frame(self) -> pd.DataFrame:
        """The per-module table (a copy)."""
        return self.frame.copy()


def intruder_sweep(adapter: Adapter, base: str | os.PathLike[str] | BaseWeights, *, top_k: int = 10,
                   threshold: float = 0.5, side: str = "left", method: str = "topk", seed: int = 0,
                   modules: Sequence[str] | None = None, layers: set[int] | str | Layers | None = None,
                   progress: bool | Progress = False, jobs: int | None = None,
                   cache: bool | SVDCache = True) -> IntruderSweep:
    """Intruder dimensions of every module of ``adapter`` against the base weights.

    Parameters
    ----------
    adapter : Adapter
        Scales must be known (ΔW enters W + ΔW). kohya / LyCORIS names are resolved against the base's.
    base : str, os.PathLike or BaseWeights
        The base model, see :func:`analysis.io.base.open_base`.
    top_k, threshold, side, method, seed
        See :func:`~analysis.metrics.intruders.intruder_dimensions`.
    modules, layers
        Filters, see :func:`analysis.core.adapter.select_modules`.
    progress : bool
    jobs : int, optional
        Modules worked on at once (threads, BLAS pinned to one thread each); default: the available cores.
    cache : bool or SVDCache
        Keep W's singular vectors in the persistent cache (:mod:`analysis.sweeps.svd_cache`) and reuse them;
        ``False``: compute them every time.

    Returns
    -------
    IntruderSweep
    """
    import pandas as pd

    require_adapter(adapter)
    bw = base if isinstance(base, BaseWeights) else open_base(base)
    if adapter.format == "kohya":  # kohya / LyCORIS names: resolved against the base's own tensor names
        adapter = resolve_adapter_names(adapter, bw)
    names = select_modules(adapter, modules=modules, layers=layers)
    missing = [n for n in names if n not in bw]
    if missing:
        raise AdapterError(f"expected a base weight for every adapter module, got none for {len(missing)} "
                           f"(e.g. {missing[0]}.weight): is this the adapter's base model?", path=bw.path)
    # scipy's own OpenBLAS, used by the top-k eigensolve, must be loaded before the driver pins BLAS: a library
    # loaded later keeps its default threads and spins on a busy machine
    importlib.import_module("scipy.linalg")

    store = cache if isinstance(cache, SVDCache) else SVDCache(enabled=bool(cache))

    def one(item, lr):
        name, W = item
        t0 = time.perf_counter()
        W = base_matrix(W, lr, name=name, path=bw.path)
        X, S_w = cached_full_basis(store, tensor_file(bw, bw.resolve(name)), name, W, side=side)
        res = intruder_dimensions(W, lr, top_k=top_k, threshold=threshold, side=side, method=method,
                                  seed=seed, base_vectors=X, base_singular_values=S_w, name=name)
        return name, W.shape, lr.r, res, time.perf_counter() - t0

    rows, results = [], {}
    try:
        done = sweep_modules(one, bw.weights(names), modules=(adapter,), jobs=jobs, progress=progress,
                             total=len(names))
        for name, shape, r, res, seconds in done:
            results[name] = res
            layer, module = split_name(name)
            rows.append({"name": name, "layer": layer, "module": module, "d_out": shape[0], "d_in": shape[1],
                         "r": r, "zero": res.zero, "count": res.count,
                         "ranks": ",".join(str(j) for j in res.ranks),
                         "min_max_cos": float(res.max_cos.min()), "energy_share": res.energy_share,
                         "sigma1": float(res.sigma[0]), "seconds": seconds})
    finally:
        if bw is not base:
            bw.close()
    frame = with_roles(pd.DataFrame(rows))
    if len(frame):
        frame = frame.sort_values("name", key=lambda s: s.map(natural_key)).reset_index(drop=True)
    return IntruderSweep(frame=frame, results=results, top_k=int(top_k), threshold=float(threshold),
                         side=side, method=method)
