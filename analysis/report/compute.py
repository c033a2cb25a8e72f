"""Everything the report shows, computed once from the checkpoints and the base (no plotting)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from analysis.core.adapter import split_name
from analysis.core.randomized import DEFAULT_TOLERANCE

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
    base_name : str or None
        The base as the user named it (``"smollm2"``, a path as given), recorded in ``findings.json``
        instead of the resolved path; default the file name of ``base``.
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
        Random draws of Table 7's null at the focus layer (the protocol asks for at least 1,000).
    long_runs : tuple of str
        Folders of long training runs holding ``checkpoint-N`` adapters (Table 7 over training time).
    init_runs : tuple of str
        r = low adapters trained with separate data-order and initialisation seeds, compared with r = high
        seed 0 (what the shared top direction of Fig. 3 comes from).
    collection : bool
        Also compare every adapter folder of ``checkpoints`` (N × N φ(1, 1) and cosine) and merge the r = 8
        seed-0 task adapters (``merge_tasks``) to measure their interference.
    merge_tasks : tuple of str
        The adapters merged for the interference table.
    pairs : tuple of (str, str, str)
        Anyone's adapters instead of the reference checkpoints: ``("rank", A, B)`` (Fig. 3 / 6: A the smaller
        rank) and / or ``("seed", C, D)`` (Fig. 4 / 7: two runs of one rank), paths as given. When set,
        ``checkpoints``, ``ranks``, ``low``, ``high``, ``seeds``, ``long_runs`` and ``init_runs`` are not used.
    tolerance : float or "exact"
        Accuracy of W's top singular triplets in the per-adapter sweeps and Table 7 (see
        :func:`analysis.core.randomized.krylov_settings`); W's spectra and overlaps of Fig. 8 and Table 7 over
        training time use LAPACK's full SVD whatever it is.
    """

    checkpoints: str = "checkpoints"
    base: str | None = None
    base_name: str | None = None
    layer: int = 15
    layers: tuple = (0, 10, 20, 29)
    ranks: tuple = (1, 2, 4, 8, 64)
    low: int = 8
    high: int = 64
    seeds: tuple = (0, 1)
    n_random: int = 10
    n_random_table: int = 1000
    seed: int = 0
    long_runs: tuple = ("long_r4_seed0", "long_r64_seed0")
    init_runs: tuple = ("r8_seed0", "r8_data0_init1", "r8_data1_init0", "r8_seed1")
    collection: bool = True
    merge_tasks: tuple = ("r8_seed0", "word_r8_seed0", "hypernym_r8_seed0", "synonyms_r8_seed0")
    pairs: tuple = ()
    tolerance: float | str = DEFAULT_TOLERANCE


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
    long_run: object = None
    init_pairs: dict = field(default_factory=dict)
    init_seeds: dict = field(default_factory=dict)
    roles: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    table_labels: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    collection: object = None
    collection_meta: dict = field(default_factory=dict)
    merge: object = None
    merge_losses: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def adapter(self, role):
        """The adapter playing ``role`` (``"low"``, ``"high"``, ``"low_other"``, ``"seed_a"``, ``"seed_b"``), or None."""
        lab = self.roles.get(role)
        return self.adapters.get(lab) if lab else None

    def say(self, role):
        """How the report names the adapter playing ``role``: ``"r = 8, seed 0"`` or ``"mine (r = 8)"``."""
        return self.text.get(self.roles.get(role), "?")

    def series(self, label):
        """Legend label of an adapter in the per-rank figures: ``"r = 8"`` for the reference checkpoints (one
        seed), the adapter's own name otherwise."""
        return self.text.get(label, label) if self.config.pairs else self.text.get(label, label).split(",")[0]

    def rank(self, role):
        """The largest stored rank of the adapter playing ``role`` (0 when absent)."""
        ad = self.adapter(role)
        return max((lr.r for lr in ad.expanded().values()), default=0) if ad is not None else 0

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


def _load_pairs(cfg, data):
    """Anyone's adapters (``cfg.pairs``): labels from the folder names, roles from the pairs."""
    from analysis.io import load_adapter

    kinds = [k for k, _, _ in cfg.pairs]
    bad = [k for k in kinds if k not in ("rank", "seed")] + [k for k in set(kinds) if kinds.count(k) > 1]
    if bad:
        raise ValueError(f"--pair kinds are 'rank' and 'seed', each at most once; got {', '.join(kinds)}")
    labels = {}
    for kind, a, b in cfg.pairs:
        for path in (a, b):
            if path in labels:
                continue
            base = os.path.basename(os.path.normpath(str(path))) or str(path)
            lab, n = base, 2
            while lab in labels.values():
                lab, n = f"{base} ({n})", n + 1
            labels[path] = lab
            data.adapters[lab] = load_adapter(path)
            data.inputs[lab] = str(path)
            data.manifests[lab] = _manifest(path) if os.path.isdir(path) else {}
        if kind == "rank":
            data.roles.update(low=labels[a], high=labels[b])
        else:
            data.roles.update(seed_a=labels[a], seed_b=labels[b])
    for lab, ad in data.adapters.items():
        data.text[lab] = f"{lab} (r = {max((lr.r for lr in ad.expanded().values()), default=0)})"
    seen = [data.roles[k] for k in ("low", "high", "seed_a") if k in data.roles]
    data.table_labels = sorted(dict.fromkeys(seen), key=lambda lab: (max(
        (lr.r for lr in data.adapters[lab].expanded().values()), default=0), lab))


def _load(cfg, data):
    from analysis.io import load_adapter

    if cfg.pairs:
        return _load_pairs(cfg, data)
    s0, s1 = cfg.seeds
    data.roles = {"low": adapter_label(cfg.low, s0), "high": adapter_label(cfg.high, s0),
                  "low_other": adapter_label(cfg.low, s1), "seed_a": adapter_label(cfg.high, s0),
                  "seed_b": adapter_label(cfg.high, s1)}
    data.table_labels = [adapter_label(r, s0) for r in cfg.ranks]
    wanted = [adapter_label(r, cfg.seeds[0]) for r in cfg.ranks]
    wanted += [adapter_label(r, cfg.seeds[1]) for r in (cfg.low, cfg.high)]
    for lab in dict.fromkeys(wanted):
        path = os.path.join(cfg.checkpoints, lab)
        if not os.path.exists(path):
            data.missing.append(lab)
            continue
        data.adapters[lab] = load_adapter(path)
        data.inputs[lab] = path
        r, _, seed = lab[1:].partition("_seed")
        data.text[lab] = f"r = {r}, seed {seed}"
        man = _manifest(path)
        if man:
            data.manifests[lab] = man
    data.table_labels = [lab for lab in data.table_labels if lab in data.adapters]
    data.roles = {k: v for k, v in data.roles.items() if v in data.adapters}


def compute_report(cfg: ReportConfig, *, progress=False, jobs=None) -> ReportData:
    """Load what exists of the reference checkpoints and compute every analysis.

    Parameters
    ----------
    cfg : ReportConfig
    progress : bool
        Progress bars on standard error.
    jobs : int, optional
        Modules worked on at once by each sweep (threads, BLAS pinned to one thread in each; see
        :mod:`analysis.core.threads`): the pair comparisons, the rank advice, the per-adapter sweeps with the
        base, W's spectra and overlaps at the focus layer, and Table 7 over training time. Default: the
        cores available to the process. The result does not depend on it (``timings`` aside).

    Returns
    -------
    ReportData
        Pairs and sweeps whose checkpoints are missing are None / absent and
        listed in ``missing``.
    """
    import pandas as pd

    from analysis.core import randomized_svd
    from analysis.core.threads import map_ordered
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
    sides = ("A", "B", "input", "output")
    lo, hi, lo1 = data.adapter("low"), data.adapter("high"), data.adapter("low_other")
    sa, sb = data.adapter("seed_a"), data.adapter("seed_b")
    if lo is not None and hi is not None:
        data.rank_pair = compare_adapters(lo, hi, sides=sides, progress=progress, jobs=jobs)
    if sa is not None and sb is not None:
        data.seed_pair = compare_adapters(sa, sb, sides=sides, progress=progress, jobs=jobs)
        from analysis.sweeps.advice import advise_ranks  # stability-based rank advice from the seed pair

        data.advice = advise_ranks(sa, sb, seed=cfg.seed, jobs=jobs)
    if lo1 is not None and hi is not None:  # control: the rank pair without a shared seed
        data.cross_pair = compare_adapters(lo1, hi, sides=sides, progress=progress, jobs=jobs)
    if not cfg.pairs:
        _init_pairs(cfg, data, progress, jobs)
    some = next(iter(data.adapters.values())).expanded()
    r_random = data.rank("seed_a") or data.rank("high") or max(lr.r for lr in some.values())
    for m in data.modules:
        d_in = some[data.name(m)].shape[1]
        data.random_sim[m] = gaussian_similarity(r_random, r_random, d_in, seed=cfg.seed)
    data.timings["pairs_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    base = None
    if cfg.base is not None:
        from analysis.io.base import open_base

        base = open_base(cfg.base)
    try:
        labels = list(data.adapters)  # one pass over the base for all seven adapters
        sweeps = analyse_adapters([data.adapters[lab] for lab in labels], base=base, n_random=cfg.n_random,
                                  seed=cfg.seed, progress=progress, jobs=jobs, tolerance=cfg.tolerance)
        data.sweeps.update(zip(labels, sweeps))
        data.timings["sweeps_s"] = time.perf_counter() - t1
        if base is not None:
            t2 = time.perf_counter()
            labs = data.table_labels
            rows = []  # Table 7 at the focus layer, with more random draws: one more pass over its weights
            for lab, sw in zip(labs, analyse_adapters([data.adapters[lab] for lab in labs], base=base,
                                                      layers={cfg.layer}, n_random=cfg.n_random_table,
                                                      seed=cfg.seed, jobs=jobs, tolerance=cfg.tolerance)):
                sub = sw.frame
                sub.insert(0, "adapter", lab)
                rows.append(sub)
            data.table7 = (pd.concat(rows, ignore_index=True).sort_values(["module", "r"], kind="stable")
                           .reset_index(drop=True) if rows else None)

            def focus(item):  # one module type at the focus layer: W's full spectrum, each adapter's overlap
                m, name, W = item
                W = base_matrix(W, some[name], name=name)
                w_svd = randomized_svd(W, min(W.shape), seed=cfg.seed, method="full")
                return m, w_svd.S, {side: {data.series(lab): weight_overlap(
                    W, data.adapters[lab].expanded()[name], side=side, seed=cfg.seed, w_svd=w_svd, name=name)
                    for lab in data.table_labels} for side in OVERLAP_SIDES}

            # W read here, in this thread, one at a time; at most ``jobs`` of them decomposed at once
            focus_weights = ((m, data.name(m), _base_weight(base, data.name(m))) for m in data.modules)
            for m, S, by_side in map_ordered(focus, focus_weights, jobs=jobs):
                data.w_spectra[m] = S
                for side in OVERLAP_SIDES:
                    data.overlaps[(m, side)] = by_side[side]
            data.timings["weight_overlap_s"] = time.perf_counter() - t2
            t3 = time.perf_counter()
            data.long_run = None if cfg.pairs else _long_run(cfg, data, base, some, progress, jobs)
            data.timings["long_run_s"] = time.perf_counter() - t3
    finally:
        if base is not None:
            base.close()
    if cfg.collection and not cfg.pairs:
        t4 = time.perf_counter()
        _collection(cfg, data)
        data.timings["collection_s"] = time.perf_counter() - t4
    data.timings["total_s"] = time.perf_counter() - t0
    return data


def _collection(cfg, data):
    """Every adapter folder of ``checkpoints`` compared with every other; the task adapters merged."""
    from analysis.io import load_adapter
    from analysis.reference.data import manifest_task
    from analysis.sweeps.collection import collection_similarity
    from analysis.sweeps.merge import merge_adapters
    from analysis.sweeps.trajectory import checkpoint_steps

    folders = sorted(f for f in os.listdir(cfg.checkpoints)
                     if os.path.isfile(os.path.join(cfg.checkpoints, f, "adapter_config.json")))
    paths = {f: os.path.join(cfg.checkpoints, f) for f in folders}
    for run in cfg.long_runs:  # a training run's last checkpoint joins the collection
        steps = checkpoint_steps(os.path.join(cfg.checkpoints, run), strict=False)
        if steps:
            paths[f"{run}@{steps[-1][0]}"] = steps[-1][1]
    if len(paths) < 2:
        return
    for f, path in paths.items():
        man = data.manifests.get(f) or _manifest(path)
        data.collection_meta[f] = {"task": "merged" if "merged" in man else manifest_task(man), "rank": man.get("rank"), "seeds": _seeds(man)}
    data.collection = collection_similarity(list(paths.values()), k=1, side="input")
    tasks = [f for f in cfg.merge_tasks if f in folders]
    if len(tasks) >= 2:
        data.merge = merge_adapters([data.adapters.get(f) or load_adapter(os.path.join(cfg.checkpoints, f))
                                     for f in tasks], method="svd",
                                    rank=8, labels=tasks)
    for f in folders:  # the validation losses measured by python -m analysis.reference.evaluate
        man = _manifest(os.path.join(cfg.checkpoints, f))
        if man.get("merged") == list(tasks) and isinstance(man.get("val_loss"), dict):
            data.merge_losses = {"folder": f, **man}


def _manifest(path):
    man = os.path.join(path, "manifest.json")
    if not os.path.exists(man):
        return {}
    with open(man, encoding="utf-8") as fh:
        return json.load(fh)


def _seeds(manifest):
    """(data-order seed, initialisation seed) of a training run; older manifests have one ``seed`` for both."""
    seed = manifest.get("seed")
    return manifest.get("data_seed", seed), manifest.get("init_seed", seed)


def _base_weight(base, name):
    """Base tensor ``name`` as read, from an open reader or a mapping."""
    return base.weight(name) if hasattr(base, "weight") else base[name]


def _init_pairs(cfg, data, progress, jobs=None):
    """r = low runs with separate data and init seeds, each against r = high seed 0 (sides A and input)."""
    from analysis.io import load_adapter
    from analysis.sweeps.pair import compare_adapters

    hi = adapter_label(cfg.high, cfg.seeds[0])
    if hi not in data.adapters:
        return
    for lab in cfg.init_runs:
        path = os.path.join(cfg.checkpoints, lab)
        if not os.path.exists(path):
            continue
        ad = data.adapters.get(lab) or load_adapter(path)
        data.init_seeds[lab] = _seeds(data.manifests.get(lab) or _manifest(path))
        data.init_pairs[lab] = compare_adapters(ad, data.adapters[hi], sides=("A", "input"), progress=progress,
                                                jobs=jobs)


def _long_run(cfg, data, base, some, progress, jobs=None):
    """Table 7 over training time: for each checkpoint, ΔWq's ‖UᵀWV‖ against its null at every layer.

    The layers of one checkpoint are worked on ``jobs`` at a time (W read in this thread, once, on the first
    checkpoint; its full SVD and the nulls computed once, in the workers).
    """
    import numpy as np
    import pandas as pd

    from analysis.core import randomized_svd
    from analysis.core.threads import map_ordered
    from analysis.io import load_adapter
    from analysis.io.base import base_matrix
    from analysis.metrics.correlation import weight_correlation
    from analysis.metrics.nulls import projection_draws
    from analysis.sweeps.common import progress as progress_bar
    from analysis.sweeps.trajectory import checkpoint_steps

    runs = [(lab, checkpoint_steps(os.path.join(cfg.checkpoints, lab), strict=False)) for lab in cfg.long_runs]
    runs = [(lab, steps) for lab, steps in runs if steps]
    if not runs:
        return None
    q = next((m for m in data.modules if m.endswith("q_proj")), data.modules[0])
    names = [n for n in some if split_name(n)[1] == q]
    W, w_svd, nulls, rows = {}, {}, {}, []
    losses = {}
    for lab, _ in runs:
        man = _manifest(os.path.join(cfg.checkpoints, lab))
        losses[lab] = dict(tuple(x) for x in man.get("val_loss", []) if isinstance(x, (list, tuple)) and len(x) == 2)

    def one(item):  # one layer of one checkpoint; W and its SVD on the first checkpoint only
        name, raw, mods = item
        if raw is None:
            Wm, svd = W[name], w_svd[name]
        else:
            Wm = base_matrix(raw, some[name], name=name)
            svd = randomized_svd(Wm, min(Wm.shape), seed=cfg.seed, method="full")
        wc = weight_correlation(Wm, mods[name], n_random=1, seed=cfg.seed, w_svd=svd)
        null = None
        if not wc.zero:  # names differ within a checkpoint: no two workers draw the same null
            null = nulls.get((name, wc.k))
            if null is None:
                draws = projection_draws(svd.S, wc.d_out, wc.d_in, wc.k, n=cfg.n_random_table, seed=cfg.seed)
                null = (float(draws.mean()), float(draws.std(ddof=1)))
        return name, Wm, svd, wc, null

    todo = [(lab, step, path) for lab, steps in runs for step, path in steps]
    for lab, step, path in progress_bar(todo, enabled=progress, desc="checkpoints"):
        mods = load_adapter(path).expanded()
        items = ((name, None if name in W else _base_weight(base, name), mods) for name in names)
        for name, Wm, svd, wc, null in map_ordered(one, items, jobs=jobs):
            W[name], w_svd[name] = Wm, svd
            if wc.zero:
                continue
            nulls[(name, wc.k)] = null
            mean, sd = null
            rows.append({"run": lab, "r": wc.r, "step": step, "name": name, "layer": split_name(name)[0],
                         "module": q, "proj_delta": wc.proj_delta, "null_mean": mean, "null_sd": sd,
                         "z": (wc.proj_delta - mean) / sd, "delta_norm": wc.delta_norm, "w_norm": wc.w_norm,
                         "rel_norm": wc.delta_norm / wc.w_norm, "amplification": wc.amplification,
                         "amp_random": wc.delta_norm / mean, "val_loss": losses[lab].get(step, np.nan)})
    return pd.DataFrame(rows)
