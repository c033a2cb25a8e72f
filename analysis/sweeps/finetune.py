"""Low-rank view of a full fine-tune: W_ft − W₀ per module, by seeded randomized SVD.

Both models are read lazily (:func:`analysis.io.base.open_base`: HF folder,
sharded folder, single ``.safetensors``, GGUF for the base), one module at a
time, in the caller's thread; ``jobs`` modules are decomposed at once (threads,
BLAS pinned to one thread in each, :mod:`analysis.core.threads`), so at most
``jobs`` + 1 base and fine-tuned tensor pairs are in memory. For each 2-D
weight present in both, ΔW = W_ft − W₀ (float64), its top singular values by
:func:`analysis.core.randomized_svd` (fixed seed), ‖ΔW‖_F exactly, and the
energy captured by rank k, Σ_{i≤k} σ_i² / ‖ΔW‖_F². The rank-k truncations can
be saved as a PEFT adapter (the writer of ``python -m analysis.resize``). The
command is :mod:`analysis.cli.finetune`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import is_embedding_name, natural_key, select_modules, split_name
from analysis.core.randomized import randomized_svd
from analysis.core.truncate import from_svd
from analysis.errors import AdapterError, InputError
from analysis.io.base import open_base
from analysis.io.peft_writer import write_peft_adapter
from analysis.io.roles import with_roles
from analysis.metrics.spectrum import energy_retained, relative_error
from analysis.sweeps.driver import sweep_modules

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from typing import Any

    import pandas as pd

    from analysis.core.adapter import Layers
    from analysis.sweeps.progress import Progress

__all__ = ["FinetuneDeltas", "finetune_deltas", "is_embedding_name"]

@dataclass(frozen=True)
class FinetuneDeltas:
    """Spectra of W_ft − W₀ per module and their rank-k truncations.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, d_out, d_in, k, fro,
        sigma1, energy_k, rel_error_k, zero, seconds`` (``energy_k``: share
        of ‖ΔW‖_F² captured by the exported rank k).
    long : pandas.DataFrame
        One row per (module, i): ``name, layer, module, i, sigma, energy``
        for the computed spectrum (``energy`` cumulative, exact denominator).
    modules : dict[str, LowRank]
        Rank-k truncations (identical modules are left out).
    rank : int
    alpha : float
        ``lora_alpha`` for export (scale α / k per module).
    base_path, ft_path : str
    skipped : dict[str, str]
        Modules not analysed and why (only in one model, not 2-D).
    """

    frame: pd.DataFrame
    long: pd.DataFrame
    modules: dict
    rank: int
    alpha: float
    base_path: str = ""
    ft_path: str = ""
    skipped: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The per-module table (a copy)."""
        return self.frame.copy()

    def write(self, out: str | os.PathLike[str], *, force: bool = False) -> dict[str, Any]:
        """Save the truncations as a PEFT adapter folder; returns the config."""
        if not self.modules:
            raise AdapterError("no module differs between the two models: nothing to export", path=self.ft_path)
        return write_peft_adapter(out, self.modules, lora_alpha=self.alpha, force=force,
                                  base_model_name_or_path=self.base_path)


def finetune_deltas(base: str | os.PathLike[str], finetuned: str | os.PathLike[str], *, rank: int,
                    spectrum: int | None = None, modules: Sequence[str] | None = None,
                    layers: set[int] | str | Layers | None = None, alpha: float | None = None,
                    fan_in_fan_out: bool = False, oversample: int = 10, n_iter: int = 4, seed: int = 0,
                    progress: bool | Progress = False, jobs: int | None = None) -> FinetuneDeltas:
    """Randomized low-rank view of every module's fine-tuning update.

    Parameters
    ----------
    base, finetuned : str or os.PathLike
        Model folders / files readable by :func:`analysis.io.base.open_base`.
    rank : int
        Rank k of the truncation (clipped to min(d_out, d_in) per module).
    spectrum : int, optional
        Number of singular values to compute (≥ rank); default ``rank``.
    modules : sequence of str, optional
        Keep names matching any of these regular expressions (``re.search``).
    layers : set of int or str, optional
        Keep these layers (see :func:`analysis.core.adapter.parse_layers`).
    alpha : float, optional
        ``lora_alpha`` of the export; default ``rank`` (scale 1 at rank k).
    fan_in_fan_out : bool
        The weights are stored (d_in, d_out) (GPT-2 Conv1D): ΔW is transposed
        into the nn.Linear orientation and the export says fan_in_fan_out.
    oversample, n_iter, seed
        Of :func:`analysis.core.randomized_svd`.
    progress : bool
        Progress bar on standard error.
    jobs : int, optional
        Modules decomposed at once (threads, BLAS pinned to one thread in each; see
        :mod:`analysis.core.threads`); default: the cores available to the process. BLAS stays on one thread
        with 1 job too, so that the result does not depend on ``jobs`` (``seconds`` aside: a multithreaded
        LAPACK gives other last bits). Memory: ``jobs`` + 1 pairs of tensors (and their ΔW).

    Returns
    -------
    FinetuneDeltas
    """
    import pandas as pd

    if int(rank) != rank or rank < 1:
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    spectrum = int(rank) if spectrum is None else int(spectrum)
    if spectrum < rank:
        raise InputError(f"spectrum ({spectrum}) must be >= rank ({rank})")
    alpha = float(rank if alpha is None else alpha)
    rows, longs, out, skipped = [], [], {}, {}

    def one(item):
        name, W0, W1, t_read = item
        item.clear()  # the tensors go with the locals below, not with the task's argument
        t0 = time.perf_counter()
        if W1.shape != W0.shape:
            raise AdapterError(f"expected shape {W0.shape} as in the base, got {W1.shape}",
                               path=b1.path, key=name + ".weight")
        D = W1.astype(np.float64) - W0  # (d_out, d_in), or (d_in, d_out) stored for Conv1D
        stored = W0.shape
        del W0, W1
        if fan_in_fan_out:
            D = D.T  # (d_out, d_in)
        fro = float(np.linalg.norm(D))
        k = min(int(rank), *D.shape)
        ks = min(spectrum, *D.shape)
        layer, module = split_name(name)
        lr = None
        if fro == 0.0:
            S = np.zeros(0)
        else:
            U, S, V = randomized_svd(D, ks, oversample=oversample, n_iter=n_iter, seed=seed)
            kind = "embedding" if is_embedding_name(name) else "linear"
            lr = from_svd(U[:, :k], S[:k], V[:, :k], alpha=alpha, name=name, kind=kind, weight_shape=stored,
                          source=str(finetuned), meta={"format": "peft", "fan_in_fan_out": bool(fan_in_fan_out)})
        energy = energy_retained(S, total=fro * fro)  # (ks,): the exact ‖ΔW‖_F² as denominator
        e_k = float(energy[k - 1]) if S.size else 1.0
        row = {"name": name, "layer": layer, "module": module, "d_out": D.shape[0], "d_in": D.shape[1],
               "k": k, "fro": fro, "sigma1": float(S[0]) if S.size else 0.0, "energy_k": e_k,
               "rel_error_k": float(relative_error(e_k)), "zero": fro == 0.0,
               "seconds": t_read + time.perf_counter() - t0}
        long = (pd.DataFrame({"name": name, "layer": layer, "module": module, "i": np.arange(1, S.size + 1),
                              "sigma": S, "energy": energy}) if S.size else None)
        return name, lr, row, long

    with open_base(base) as b0, open_base(finetuned) as b1:
        n0, n1 = set(b0.names()), set(b1.names())
        mats = set(b0.names(matrices_only=True)) & set(b1.names(matrices_only=True))
        for n in sorted(n0 ^ n1, key=natural_key):
            skipped[n] = "only in the base" if n in n0 else "only in the fine-tuned model"
        names = select_modules(mats, modules=modules, layers=layers)

        def pairs():  # read here, in the caller's thread, one module at a time: the readers stay single-threaded
            for name, W0 in b0.weights(names):
                t0 = time.perf_counter()
                item = [name, W0, b1.weight(name), None]  # emptied by the task that takes it
                item[3] = time.perf_counter() - t0
                del W0
                yield item

        for name, lr, row, long in sweep_modules(one, pairs(), jobs=jobs, progress=progress, total=len(names)):
            if lr is not None:
                out[name] = lr
            rows.append(row)
            if long is not None:
                longs.append(long)
    long = (pd.concat(longs, ignore_index=True) if longs else
            pd.DataFrame(columns=["name", "layer", "module", "i", "sigma", "energy"]))
    return FinetuneDeltas(frame=with_roles(pd.DataFrame(rows)), long=long, modules=out, rank=int(rank), alpha=alpha,
                          base_path=str(base), ft_path=str(finetuned), skipped=skipped)
