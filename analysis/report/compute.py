"""Everything the report shows, computed once from the checkpoints and the base (no plotting)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from analysis.core.adapter import split_name

__all__ = ["ReportConfig", "ReportData", "compute_report", "adapter_label"]


def adapter_label(r, seed):
    """Folder name of a reference checkpoint: ``r8_seed0``."""
    return f"r{r}_seed{seed}"


@dataclass(frozen=True)
class ReportConfig:
    """What the report analyses.

    Attributes
    ----------
    checkpoints : str
        Folder holding ``r{r}_seed{s}`` adapters.
    base : str or None
        Base model (GGUF / safetensors); None skips Table 7 and Fig. 8.
    layer : int
        The single layer of Fig. 3, 4, 8 and Table 7 (the paper: 48 of 96).
    layers : tuple of int
        The layers of Fig. 6 / 7 (the paper: 1, 32, 64, 96).
    ranks : tuple of int
        Ranks trained with seed 0 (Table 7, Fig. 8).
    low, high : int
        The rank pair of Fig. 3 / 6 (the paper: 8 and 64); ``high`` also for Fig. 4 / 7.
    seeds : (int, int)
        The two seeds of Fig. 4 / 7.
    n_random, seed : int
        Random draws and seed of the baselines (per-layer sweeps).
    n_random_table : int
        Random draws for Table 7 at the focus layer.
    """

    checkpoints: str = "checkpoints"
    base: str | None = None
    layer: int = 15
    layers: tuple = (0, 10, 20, 29)
    ranks: tuple = (1, 2, 4, 8, 64)
    low: int = 8
    high: int = 64
    seeds: tuple = (0, 1)
    n_random: int = 10
    n_random_table: int = 200
    seed: int = 0


@dataclass
class ReportData:
    """The computed report (see :func:`compute_report`)."""

    config: ReportConfig
    adapters: dict = field(default_factory=dict)
    manifests: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    modules: list = field(default_factory=list)
    rank_pair: object = None
    seed_pair: object = None
    cross_pair: object = None
    advice: object = None
    random_sim: dict = field(default_factory=dict)
    sweeps: dict = field(default_factory=dict)
    table7: object = None
    overlaps: dict = field(default_factory=dict)
    w_spectra: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def name(self, module, layer=None):
        """Full module name at a layer, e.g. ``model.layers.15.self_attn.q_proj``."""
        layer = self.config.layer if layer is None else layer
        for n in self._names():
            if split_name(n) == (layer, module):
                return n
        raise KeyError(f"no module {module!r} at layer {layer}")

    @property
    def n_layers(self) -> int:
        """Number of distinct layers the adapters cover."""
        return len({split_name(n)[0] for n in self._names()} - {None})

    def _names(self):
        for ad in self.adapters.values():
            return list(ad.expanded())
        return []


def _load(cfg, data):
    from analysis.io import load_adapter

    wanted = [adapter_label(r, cfg.seeds[0]) for r in cfg.ranks]
    wanted += [adapter_label(r, cfg.seeds[1]) for r in (cfg.low, cfg.high)]
    for lab in dict.fromkeys(wanted):
        path = os.path.join(cfg.checkpoints, lab)
        if not os.path.exists(path):
            data.missing.append(lab)
            continue
        data.adapters[lab] = load_adapter(path)
        man = os.path.join(path, "manifest.json")
        if os.path.exists(man):
            with open(man) as fh:
                data.manifests[lab] = json.load(fh)


def compute_report(cfg: ReportConfig, *, progress=False) -> ReportData:
    """Load what exists of the reference checkpoints and compute every analysis.

    Parameters
    ----------
    cfg : ReportConfig
    progress : bool
        Progress bars on standard error.

    Returns
    -------
    ReportData
        Pairs and sweeps whose checkpoints are missing are None / absent and
        listed in ``missing``.
    """
    import pandas as pd

    from analysis.core import randomized_svd
    from analysis.metrics import gaussian_similarity
    from analysis.metrics.correlation import OVERLAP_SIDES, weight_overlap
    from analysis.io.base import base_matrix
    from analysis.sweeps.adapter import analyse_adapters
    from analysis.sweeps.pair import compare_adapters

    data = ReportData(cfg)
    t0 = time.perf_counter()
    _load(cfg, data)
    if not data.adapters:
        raise FileNotFoundError(f"no reference checkpoint r*_seed* found in {cfg.checkpoints!r}")
    data.modules = sorted({split_name(n)[1] for n in data._names()})
    s0, s1 = cfg.seeds
    lo, hi = adapter_label(cfg.low, s0), adapter_label(cfg.high, s0)
    hi1 = adapter_label(cfg.high, s1)
    sides = ("A", "B", "input", "output")
    if lo in data.adapters and hi in data.adapters:
        data.rank_pair = compare_adapters(data.adapters[lo], data.adapters[hi], sides=sides, progress=progress)
    if hi in data.adapters and hi1 in data.adapters:
        data.seed_pair = compare_adapters(data.adapters[hi], data.adapters[hi1], sides=sides, progress=progress)
        from analysis.sweeps.advice import advise_ranks  # stability-based rank advice from the seed pair

        data.advice = advise_ranks(data.adapters[hi], data.adapters[hi1], seed=cfg.seed)
    lo1 = adapter_label(cfg.low, s1)
    if lo1 in data.adapters and hi in data.adapters:  # control: the rank pair without a shared seed
        data.cross_pair = compare_adapters(data.adapters[lo1], data.adapters[hi], sides=sides, progress=progress)
    some = next(iter(data.adapters.values())).expanded()
    for m in data.modules:
        d_in = some[data.name(m)].shape[1]
        data.random_sim[m] = gaussian_similarity(cfg.high, cfg.high, d_in, seed=cfg.seed)
    data.timings["pairs_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    base = None
    if cfg.base is not None:
        from analysis.io.base import open_base

        base = open_base(cfg.base)
    try:
        labels = list(data.adapters)  # one pass over the base for all seven adapters
        sweeps = analyse_adapters([data.adapters[lab] for lab in labels], base=base, n_random=cfg.n_random,
                                  seed=cfg.seed, progress=progress)
        data.sweeps.update(zip(labels, sweeps))
        data.timings["sweeps_s"] = time.perf_counter() - t1
        if base is not None:
            t2 = time.perf_counter()
            labs = [adapter_label(r, s0) for r in cfg.ranks if adapter_label(r, s0) in data.adapters]
            rows = []  # Table 7 at the focus layer, with more random draws: one more pass over its weights
            for lab, sw in zip(labs, analyse_adapters([data.adapters[lab] for lab in labs], base=base,
                                                      layers={cfg.layer}, n_random=cfg.n_random_table,
                                                      seed=cfg.seed)):
                sub = sw.frame
                sub.insert(0, "adapter", lab)
                rows.append(sub)
            data.table7 = (pd.concat(rows, ignore_index=True).sort_values(["module", "r"], kind="stable")
                           .reset_index(drop=True) if rows else None)
            for m in data.modules:
                name = data.name(m)
                ref = some[name]
                W = base_matrix(base.weight(name) if hasattr(base, "weight") else base[name], ref, name=name)
                w_svd = randomized_svd(W, min(W.shape), seed=cfg.seed, method="full")
                data.w_spectra[m] = w_svd.S
                for side in OVERLAP_SIDES:
                    data.overlaps[(m, side)] = {
                        f"r = {r}": weight_overlap(W, data.adapters[adapter_label(r, s0)].expanded()[name],
                                                   side=side, seed=cfg.seed, w_svd=w_svd, name=name)
                        for r in cfg.ranks if adapter_label(r, s0) in data.adapters}
            data.timings["weight_overlap_s"] = time.perf_counter() - t2
    finally:
        if base is not None:
            base.close()
    data.timings["total_s"] = time.perf_counter() - t0
    return data
