"""Training trajectories: how each module's update moves over the checkpoints of one run.

Per module and checkpoint: ‖ΔW‖_F and its growth towards the final value, the effective rank, the drift
1 − φ(k, k) of the top-k singular subspace against the final and the previous checkpoint, φ(1, 1) against
the final top direction, and the step from which that final top direction is present (φ(1, 1) above its
random null from that step on).

Null of φ(1, 1) between a fixed direction and a uniformly random one in R^d: cos² ~ Beta(1/2, (d − 1)/2),
mean 1/d, variance 2(d − 1) / (d² (d + 2)); "present" = above the mean + ``n_std`` sd (3, PAPER.md).
One Dask task per checkpoint reads it and keeps only its top-k bases, norms and spectra.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import select_modules, split_name
from analysis.errors import AdapterError, InputError
from analysis.metrics.nulls import phi11_null as closed_form
from analysis.metrics.similarity import phi_grid
from analysis.metrics.spectrum import effective_rank
from analysis.sweeps.collection import COLLECTION_SIDES, compute
from analysis.sweeps.driver import sweep_modules
from analysis.sweeps.sources import open_source

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    import pandas as pd
    from distributed import Client

    from analysis.core.adapter import Layers

__all__ = ["Trajectory", "checkpoint_steps", "phi11_null", "trajectory"]

_CKPT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_steps(folder: str | os.PathLike[str], *, strict: bool = True) -> list[tuple[int, str]]:
    """The ``checkpoint-N`` subfolders of a run, ordered by N.

    Parameters
    ----------
    folder : str or os.PathLike
    strict : bool
        Raise when there is none (else return an empty list).

    Returns
    -------
    list of (int, str)
        (step, path) with paths joined to ``folder`` as given.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        if strict:
            raise AdapterError("expected a folder of checkpoint-N subfolders (one training run)", path=folder)
        return []
    out = []
    for e in os.listdir(folder):
        m = _CKPT.match(e)
        if m and os.path.isdir(os.path.join(folder, e)):
            out.append((int(m.group(1)), os.path.join(folder, e)))
    if not out and strict:
        raise AdapterError("expected checkpoint-N subfolders (e.g. checkpoint-100), found none", path=folder)
    return sorted(out)


def phi11_null(d: int, *, n_std: float = 3.0) -> tuple[float, float, float]:
    """(mean, sd, threshold) of φ(1, 1) between a fixed and a uniformly random direction in R^d.

    The closed form of :func:`analysis.metrics.nulls.phi11_null`; the threshold is ``mean + n_std · sd``.
    """
    mean, sd = closed_form(d)
    return mean, sd, mean + n_std * sd


def _summarise(src, *, alpha, k, side, modules, layers):
    """Task: per module, the top-k basis on ``side``, ‖ΔW‖, numerical rank and effective rank."""
    def one(n, lr):
        S = lr.singular_values()
        U = lr.basis(side)[:, :k].copy() if not lr.is_zero else np.zeros((lr.basis(side).shape[0], 0))
        return n, {"U": U, "norm": float(lr.norm()), "rank": int(lr.rank), "erank": effective_rank(S),
                   "shape": tuple(lr.shape)}

    with open_source(src, alpha=alpha) as ad:
        mods = ad.expanded()
        # module after module in this task's thread, BLAS threads as the task found them
        return dict(sweep_modules(one, select_modules(list(mods), modules=modules, layers=layers), modules=(mods,),
                                  jobs=1, alone_threads=None))


def _local(p):
    """A local path made absolute (workers' working folders differ); Adapters and URLs as they are."""
    if isinstance(p, (str, os.PathLike)) and "://" not in os.fspath(p) and os.path.exists(p):
        return os.path.abspath(p)
    return p


def _phi_kk(U1, U2, k):
    kk = min(k, U1.shape[1], U2.shape[1])
    if kk == 0:
        return float("nan")
    return float(phi_grid(U1[:, :kk], U2[:, :kk])[kk - 1, kk - 1])


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Per-module measures over the checkpoints of one run.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per (checkpoint, module): ``step, path, name, layer, module, rank, norm, norm_growth``
        (‖ΔW‖ / final ‖ΔW‖), ``effective_rank, drift_final`` (1 − φ(k, k) against the final checkpoint),
        ``drift_previous`` (against the previous one; NaN at the first), ``phi_final`` (φ(1, 1) against the
        final top direction), ``present`` (φ(1, 1) above its null threshold).
    present_from : pandas.DataFrame
        One row per module: ``name, layer, module, d, threshold, step`` (the first step from which the final
        top direction stays present; the final step at worst).
    k, side, n_std
        Settings.
    """

    frame: pd.DataFrame
    present_from: pd.DataFrame
    k: int
    side: str
    n_std: float

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "side": self.side, "n_std": self.n_std,
                "checkpoints": self.frame.to_dict(orient="records"),
                "present_from": self.present_from.to_dict(orient="records")}


def trajectory(checkpoints: str | os.PathLike[str] | Sequence[tuple[int, str]], *, k: int = 1, side: str = "input",
               alpha: float | None = None, modules: Sequence[str] | None = None,
               layers: set[int] | str | Layers | None = None, n_std: float = 3.0,
               client: Client | str | None = None) -> Trajectory:
    """Measures of one training run over its checkpoints.

    Parameters
    ----------
    checkpoints : str, os.PathLike or sequence of (int, str)
        A run folder with ``checkpoint-N`` subfolders (ordered by N), or (step, path) pairs in order.
    k : int
        Subspace dimension of the drift (capped by the ranks).
    side : {"input", "output", "A", "B"}
    alpha, modules, layers
        As for :func:`analysis.sweeps.collection.collection_similarity`.
    n_std : float
        "Present" threshold: null mean + n_std sd of φ(1, 1).
    client : distributed.Client or str, optional
        Dask cluster; default local.

    Returns
    -------
    Trajectory
    """
    import dask
    import pandas as pd

    if side not in COLLECTION_SIDES:
        raise InputError(f"side must be one of {COLLECTION_SIDES}, got {side!r}")
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    steps = checkpoint_steps(checkpoints) if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if len(steps) < 2:
        raise InputError(f"expected at least two checkpoints, got {len(steps)}")
    task = dask.delayed(_summarise, pure=True)
    sums = compute([task(_local(p), alpha=alpha, k=max(int(k), 1), side=side,
                         modules=modules, layers=layers) for _, p in steps], client=client)
    final = sums[-1]
    rows, present = [], []
    for n, f in final.items():
        d = f["U"].shape[0]
        thr = phi11_null(d, n_std=n_std)[2] if d >= 2 else np.nan
        prev = None
        phis = []
        for (step, path), s in zip(steps, sums):
            m = s.get(n)
            if m is None:
                raise AdapterError(f"module missing at step {step}; a trajectory needs every module in every "
                                   "checkpoint", path=path, key=n)
            if m["shape"] != f["shape"]:
                raise AdapterError(f"expected ΔW of shape {f['shape']} as at the final step, got {m['shape']}",
                                   path=path, key=n)
            p1 = _phi_kk(m["U"], f["U"], 1)
            phis.append(p1)
            layer, module = split_name(n)
            rows.append({"step": step, "path": str(path), "name": n, "layer": layer, "module": module,
                         "rank": m["rank"], "norm": m["norm"],
                         "norm_growth": m["norm"] / f["norm"] if f["norm"] > 0 else np.nan,
                         "effective_rank": m["erank"], "drift_final": 1.0 - _phi_kk(m["U"], f["U"], k),
                         "drift_previous": np.nan if prev is None else 1.0 - _phi_kk(m["U"], prev["U"], k),
                         "phi_final": p1, "present": bool(p1 >= thr)})
            prev = m
        ok = np.asarray([np.isfinite(p) and p >= thr for p in phis])
        first = len(steps) - 1
        while first > 0 and ok[first - 1]:
            first -= 1
        layer, module = split_name(n)
        present.append({"name": n, "layer": layer, "module": module, "d": d, "threshold": thr,
                        "step": steps[first][0] if ok[-1] else None})
    return Trajectory(pd.DataFrame(rows), pd.DataFrame(present), int(k), side, float(n_std))
