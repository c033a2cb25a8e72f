"""Everything the report shows, computed once from the checkpoints and the base (no plotting).

Modules are found by their role (:mod:`analysis.io.roles`), never by a literal name: the paper's ΔWq and ΔWv are
the self-attention ``q`` and ``v`` roles of whatever architecture the adapters are for, in its main stack (the stack
whose q module spans the most layers: the decoder of a causal LM, the encoder of BERT, a UNet block …). The
main case of every claim is the middle layer of that stack; Fig. 6 / 7 use four layers spread over it.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from analysis.core import randomized_svd
from analysis.core.adapter import Adapter, natural_key, select_modules
from analysis.core.forked import Forked, can_fork
from analysis.core.randomized import DEFAULT_TOLERANCE
from analysis.core.threads import resolve_jobs
from analysis.errors import InputError
from analysis.io import load_adapter
from analysis.io.jsonfile import read_json_object
from analysis.io.roles import module_role, stack_order
from analysis.io.tensors import safetensors_errors
from analysis.metrics import gaussian_similarity
from analysis.metrics.correlation import OVERLAP_SIDES, weight_correlation, weight_overlap
from analysis.metrics.nulls import projection_draws, projection_moments
from analysis.metrics.tails import DrawsNull, GAUSSIAN_K, SquareGaussianNull
from analysis.reference.data import manifest_task
from analysis.sweeps.advice import advise_ranks
from analysis.sweeps.driver import pair_modules, sweep_modules
from analysis.sweeps.pair import compare_adapters, pair_row, pair_sweep
from analysis.sweeps.progress import as_progress
from analysis.sweeps.svd_cache import cached_draws, cached_stability_nulls

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from analysis.io.roles import ModuleRole
    from analysis.sweeps.progress import Progress

__all__ = ["ReportConfig", "ReportData", "compute_report", "adapter_label", "spread_layers", "CAUSE_RUNS",
           "CAUSE_PARTNERS", "CONTROL_RUNS"]

#: r = 8 runs of the cause experiment (data order × initial A), each compared with both r = 64 partners.
CAUSE_RUNS = ("r8_seed0", "r8_data0_init1", "r8_data1_init0", "r8_seed1", "r8_data0_initr64s0",
              "r8_data1_initr64s0", "r8_data1_initr64s1", "r8_data0_initr64s1")
#: The r = 64 runs the cause experiment compares against.
CAUSE_PARTNERS = ("r64_seed0", "r64_seed1")
#: The q / k / v / o control of Fig. 4 (r = 64 on every attention projection, two seeds).
CONTROL_RUNS = ("qkvo_r64_seed0", "qkvo_r64_seed1")


def adapter_label(r: int, seed: int) -> str:
    """Folder name of a reference checkpoint: ``r8_seed0``."""
    return f"r{r}_seed{seed}"


def spread_layers(layers: Iterable[int], n: int = 4) -> tuple[int, ...]:
    """``n`` layers spread evenly over ``layers`` (sorted; first and last included), as the paper's 1, 32, 64, 96.

    >>> spread_layers(range(30))
    (0, 10, 19, 29)
    """
    have = sorted(set(layers))
    if not have:
        return ()
    return tuple(dict.fromkeys(have[round(i * (len(have) - 1) / (n - 1))] for i in range(n)))


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
    layer : int or None
        The single layer of Fig. 3, 4, 8 and Table 7 (the paper: 48 of 96); default the middle layer of the main
        stack.
    layers : tuple of int or None
        The layers of Fig. 6 / 7 (the paper: 1, 32, 64, 96); default four spread over the main stack.
    ranks : tuple of int
        Ranks trained with seed 0 (Table 7, Fig. 8).
    low, high : int
        The rank pair of Fig. 3 / 6 (the paper: 8 and 64); ``high`` also for Fig. 4 / 7.
    seeds : (int, int)
        The two seeds of Fig. 4 / 7.
    n_random, seed : int
        Random draws and seed of the baselines (per-layer sweeps).
    n_random_table : int
        Random draws of every null that has no closed form (the protocol asks for at least 1,000).
    long_runs : tuple of str
        Folders of long training runs holding ``checkpoint-N`` adapters (Table 7 over training time).
    init_runs, init_partners : tuple of str
        The cause experiment: r = low runs with separate data-order seeds and initial A's, each compared with
        every partner (r = high runs).
    control_runs : tuple of str
        Two seeds of an r = high run on every attention projection (q, k, v, o): Fig. 4 with matched shapes.
    collection : bool
        Also compare every adapter folder of ``checkpoints`` (N × N φ(1, 1) and cosine) and merge the r = 8
        seed-0 task adapters (``merge_tasks``) to measure their interference.
    merge_tasks : tuple of str
        The adapters merged for the interference table.
    merge_table : str or None
        The measured validation losses of merged task adapters (``python -m analysis.reference.merge_losses``):
        when the file exists and its task adapters are folders of ``checkpoints``, the merge advice is checked
        against them (figure ``merge_losses.png``). Not used with ``pairs``.
    pairs : tuple of (str, str, str)
        Anyone's adapters instead of the reference checkpoints: ``("rank", A, B)`` (Fig. 3 / 6: A the smaller
        rank) and / or ``("seed", C, D)`` (Fig. 4 / 7: two runs of one rank), paths as given. When set,
        ``checkpoints``, ``ranks``, ``low``, ``high``, ``seeds``, ``long_runs``, ``init_runs`` and
        ``control_runs`` are not used.
    alpha, alpha_b : float or None
        α for formats that do not store it (loralib): every adapter, and the second adapter of each pair.
    modules : tuple of str or None
        Only modules whose name matches one of these regular expressions.
    select_layers : str or None
        Only these layers (``"0,15,29"``, ``"10-19"``), as every command's ``--layers``.
    tolerance : float or "exact"
        Accuracy of W's top singular triplets in the per-adapter sweeps and Table 7 (see
        :func:`analysis.core.randomized.krylov_settings`); W's spectra and overlaps of Fig. 8 and Table 7 over
        layers and training time use LAPACK's full SVD whatever it is.
    """

    checkpoints: str = "checkpoints"
    base: str | None = None
    base_name: str | None = None
    layer: int | None = None
    layers: tuple | None = None
    ranks: tuple = (1, 2, 4, 8, 64)
    low: int = 8
    high: int = 64
    seeds: tuple = (0, 1)
    n_random: int = 10
    n_random_table: int = 1000
    seed: int = 0
    long_runs: tuple = ("long_r4_seed0", "long_r64_seed0")
    init_runs: tuple = CAUSE_RUNS
    init_partners: tuple = CAUSE_PARTNERS
    control_runs: tuple = CONTROL_RUNS
    collection: bool = True
    merge_tasks: tuple = ("r8_seed0", "word_r8_seed0", "hypernym_r8_seed0", "synonyms_r8_seed0")
    merge_table: str | None = "benchmarks/merge_losses.csv"
    pairs: tuple = ()
    alpha: float | None = None
    alpha_b: float | None = None
    modules: tuple | None = None
    select_layers: str | None = None
    tolerance: float | str = DEFAULT_TOLERANCE


@dataclass
class ReportData:
    """The computed report (see :func:`compute_report`).

    Module types are *kinds* (:attr:`analysis.io.roles.ModuleRole.kind`, ``"<stack>/<module part>"``), unique
    across stacks; :meth:`role_kind` finds the kind playing a role in the main stack.
    """

    config: ReportConfig
    adapters: dict = field(default_factory=dict)
    manifests: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    modules: list = field(default_factory=list)
    main_stack: str = ""
    layer: int | None = None
    layers: tuple = ()
    rank_pair: Any = None
    seed_pair: Any = None
    cross_pair: Any = None
    control_pair: Any = None
    control_adapters: dict = field(default_factory=dict)
    advice: Any = None
    random_sim: dict = field(default_factory=dict)
    sweeps: dict = field(default_factory=dict)
    table7: Any = None
    t7_layers: Any = None
    nulls: dict = field(default_factory=dict)
    overlaps: dict = field(default_factory=dict)
    w_spectra: dict = field(default_factory=dict)
    long_run: Any = None
    init_pairs: dict = field(default_factory=dict)
    init_meta: dict = field(default_factory=dict)
    roles: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    table_labels: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    collection: Any = None
    collection_meta: dict = field(default_factory=dict)
    merge: Any = None
    merge_losses: dict = field(default_factory=dict)
    merge_check: Any = None
    timings: dict = field(default_factory=dict)
    _index: dict = field(default_factory=dict, repr=False)
    _wshape: dict = field(default_factory=dict, repr=False)

    def adapter(self, role: str) -> Adapter | None:
        """The adapter playing ``role`` (``"low"``, ``"high"``, ``"low_other"``, ``"seed_a"``, ``"seed_b"``), or None."""
        lab = self.roles.get(role)
        return self.adapters.get(lab) if lab else None

    def say(self, role: str) -> str:
        """How the report names the adapter playing ``role``: ``"r = 8, seed 0"`` or ``"mine (r = 8)"``."""
        return self.text.get(self.roles.get(role), "?")

    def series(self, label: str) -> str:
        """Legend label of an adapter in the per-rank figures: ``"r = 8"`` for the reference checkpoints (one
        seed), the adapter's own name otherwise."""
        return self.text.get(label, label) if self.config.pairs else self.text.get(label, label).split(",")[0]

    def rank(self, role: str) -> int:
        """The largest stored rank of the adapter playing ``role`` (0 when absent)."""
        ad = self.adapter(role)
        return max((lr.r for lr in ad.expanded().values()), default=0) if ad is not None else 0

    def name(self, kind: str, layer: int | None = None) -> str:
        """Full module name of module type ``kind`` at ``layer`` (default: the focus layer)."""
        layer = self.layer if layer is None else layer
        try:
            return self._index[(kind, layer)]
        except KeyError:
            raise KeyError(f"no module {kind!r} at layer {layer}") from None

    def layers_of(self, kind: str) -> list[int]:
        """Sorted layers at which module type ``kind`` exists."""
        return sorted(L for (k, L) in self._index if k == kind and L is not None)

    def role_kind(self, role: str, stack: str | None = None) -> str | None:
        """The module type playing ``role`` in ``stack`` (default: the main stack) with the most layers, or None."""
        stack = self.main_stack if stack is None else stack
        cands = [k for k in self.modules if module_role(self._some_name(k)).role == role
                 and module_role(self._some_name(k)).stack == stack]
        return max(cands, key=lambda k: (len(self.layers_of(k)), -self.modules.index(k)), default=None)

    def kinds_of(self, role: str) -> list[str]:
        """Every module type playing ``role``, in any stack."""
        return [k for k in self.modules if module_role(self._some_name(k)).role == role]

    def role_of(self, kind: str) -> ModuleRole:
        """The :class:`~analysis.io.roles.ModuleRole` of module type ``kind`` (at one of its layers)."""
        return module_role(self._some_name(kind))

    def stacks(self) -> list[str]:
        """The stacks of the adapted modules, in the model's order."""
        return sorted({self.role_of(k).stack for k in self.modules}, key=stack_order)

    def _some_name(self, kind):
        for (k, _), n in self._index.items():
            if k == kind:
                return n
        raise KeyError(kind)

    @property
    def n_layers(self) -> int:
        """Number of distinct layers the main stack covers."""
        return len({L for (k, L) in self._index if L is not None and self.role_of(k).stack == self.main_stack})

    def _names(self):
        for ad in self.adapters.values():
            return list(ad.expanded())
        return []

    def index_modules(self) -> None:
        """Build the kind / layer index over the union of every adapter's modules (after loading)."""
        names = set()
        for ad in self.adapters.values():
            names |= set(ad.expanded())
        self._index = {}
        for n in sorted(names, key=natural_key):
            r = module_role(n)
            self._index.setdefault((r.kind, r.layer), n)
        kinds = {r for (r, _) in self._index}
        role_order = {"q": 0, "k": 1, "v": 2, "o": 3}
        self.modules = sorted(kinds, key=lambda k: (stack_order(self.role_of(k).stack),
                                                    role_order.get(self.role_of(k).role, 9), natural_key(k)))
        q_kinds = [k for k in self.modules if self.role_of(k).role in ("q", "qkv")]
        pool = q_kinds or self.modules
        best = max(pool, key=lambda k: (len(self.layers_of(k)), -self.modules.index(k)), default=None)
        self.main_stack = self.role_of(best).stack if best is not None else ""


def _select(adapter, cfg):
    """``adapter`` restricted to the modules the filters keep (the same Adapter when no filter is given)."""
    if not cfg.modules and not cfg.select_layers:
        return adapter
    keep = select_modules(list(adapter), modules=cfg.modules, layers=cfg.select_layers)
    return Adapter({n: adapter[n] for n in keep}, path=adapter.path, format=adapter.format,
                   config=getattr(adapter, "config", None), notes=getattr(adapter, "notes", ()))


def _load_one(path, cfg, alpha):
    return _select(load_adapter(path, alpha=alpha), cfg)


def _load_pairs(cfg, data):
    """Anyone's adapters (``cfg.pairs``): labels from the folder names, roles from the pairs."""
    kinds = [k for k, _, _ in cfg.pairs]
    bad = [k for k in kinds if k not in ("rank", "seed")] + [k for k in set(kinds) if kinds.count(k) > 1]
    if bad:
        raise InputError(f"--pair kinds are 'rank' and 'seed', each at most once; got {', '.join(kinds)}")
    labels = {}
    for kind, a, b in cfg.pairs:
        for path, alpha in ((a, cfg.alpha), (b, cfg.alpha_b if cfg.alpha_b is not None else cfg.alpha)):
            if path in labels:
                continue
            base = os.path.basename(os.path.normpath(str(path))) or str(path)
            lab, n = base, 2
            while lab in labels.values():
                lab, n = f"{base} ({n})", n + 1
            labels[path] = lab
            data.adapters[lab] = _load_one(path, cfg, alpha)
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
        data.adapters[lab] = _load_one(path, cfg, cfg.alpha)
        data.inputs[lab] = path
        r, _, seed = lab[1:].partition("_seed")
        data.text[lab] = f"r = {r}, seed {seed}"
        man = _manifest(path)
        if man:
            data.manifests[lab] = man
    data.table_labels = [lab for lab in data.table_labels if lab in data.adapters]
    data.roles = {k: v for k, v in data.roles.items() if v in data.adapters}


def _focus(cfg, data):
    """The focus layer and the spread layers, from the main stack unless the configuration names them."""
    q = data.role_kind("q") or data.role_kind("qkv")
    main_layers = data.layers_of(q) if q else sorted({L for (k, L) in data._index if L is not None
                                                      and data.role_of(k).stack == data.main_stack})
    if not main_layers:
        raise InputError("no layer index in the module names; the report compares layers")
    data.layer = main_layers[len(main_layers) // 2] if cfg.layer is None else cfg.layer
    data.layers = tuple(cfg.layers) if cfg.layers else spread_layers(main_layers)
    present = {L for (_, L) in data._index}
    bad = [L for L in (data.layer, *data.layers) if L not in present]
    if bad:
        raise InputError(f"--layer / --layers {', '.join(map(str, bad))}: not a layer of the adapters (they have "
                         f"layers {min(main_layers)}-{max(main_layers)})")


def compute_report(cfg: ReportConfig, *, progress: bool | Progress = False, jobs: int | None = None) -> ReportData:
    """Load what exists of the reference checkpoints (or the given pairs) and compute every analysis.

    Parameters
    ----------
    cfg : ReportConfig
    progress : bool or Progress
        ``True``: progress bars on standard error; a :class:`~analysis.sweeps.progress.Progress`: a stage per
        step (loading, pairs, sweeps and the base pass, collection, merge advice) with the sweeps' counters
        under it.
    jobs : int, optional
        Cores used (default: those available to the process). With two or more (and ``fork``), the base pass
        and the merge advice run in a second process while this one compares the pairs and the collection
        (:class:`~analysis.core.forked.Forked`: the per-module work holds the GIL, so threads alone keep one core
        busy), each with its half of the cores as module threads (BLAS pinned to one thread in each; see
        :mod:`analysis.core.threads`). The result does not depend on it (``timings`` aside).

    Returns
    -------
    ReportData
        Pairs and sweeps whose checkpoints are missing are None / absent and listed in ``missing``.
    """
    pr = as_progress(progress)
    data = ReportData(cfg)
    t0 = time.perf_counter()
    with pr.stage("loading adapters"):
        _load(cfg, data)
    if not data.adapters:
        raise FileNotFoundError(f"no reference checkpoint r*_seed* found in {cfg.checkpoints!r}")
    if not any(len(ad) for ad in data.adapters.values()):
        raise InputError("no module left after --modules / --layers")
    data.index_modules()
    _focus(cfg, data)
    some = _union(data)
    # the base pass and the merge advice need no pair: a second process computes them while this one compares
    # the pairs and the collection (threads share one core here: the per-module work holds the GIL)
    n = resolve_jobs(jobs)
    parallel = n > 1 and can_fork()
    # the cores shared out: the pairs' threads get the larger half, the base pass's the rest
    mine, theirs = ((n + 1) // 2, n // 2) if parallel else (n, n)
    with Forked(lambda: _base_stages_forked(cfg, data, some, theirs), enabled=parallel,
                name="the base pass and the merge advice") as child:
        with pr.stage("pairs"), cached_stability_nulls():  # the prefix-stability nulls: a second each, cached
            _pairs(cfg, data, pr, mine)
        data.timings["pairs_s"] = time.perf_counter() - t0
        if not child.forked:
            _base_stages(cfg, data, some, pr, n)
        _collection_stage(cfg, data, pr)
        if child.forked:
            with pr.stage("sweeps and the base pass (a second process)"):
                fields, timings, null_keys = child.result()
            for key, value in fields.items():
                setattr(data, key, value)
            data.timings.update(timings)
            for name, k in null_keys:  # the nulls hold the draws' function (no pickle): made again, the same
                _projection_null(cfg, data, name, k)
    data.timings["total_s"] = time.perf_counter() - t0
    return data


#: What :func:`_base_stages` sets on a :class:`ReportData` (sent back from the process that runs them).
_BASE_FIELDS = ("sweeps", "table7", "t7_layers", "overlaps", "w_spectra", "_wshape", "long_run", "merge_check")


def _collection_stage(cfg, data, pr):
    """Every adapter compared with every other, the task adapters merged (:func:`_collection`)."""
    if cfg.collection and not cfg.pairs:
        t4 = time.perf_counter()
        with pr.stage("collection and merge"):
            _collection(cfg, data)
        data.timings["collection_s"] = time.perf_counter() - t4


def _base_stages(cfg, data, some, pr, jobs):
    """The per-adapter sweeps and the base pass, and the merge advice: what needs no pair."""
    t1 = time.perf_counter()
    base = None
    if cfg.base is not None:
        from analysis.io.base import open_base  # local: +8 ms on report --help

        base = open_base(cfg.base)
    try:
        with pr.stage("sweeps and the base pass"):
            _with_base(cfg, data, base, some, pr, jobs, t1)
    finally:
        if base is not None:
            base.close()
    measured = (_read_merge_table(cfg.merge_table, cfg.checkpoints)
                if cfg.merge_table and not cfg.pairs and os.path.isfile(cfg.merge_table) else None)
    if measured is not None:
        from analysis.reference.merge_losses import analyse  # local: merges, trainer: +41 ms on report --help

        with pr.stage("merge advice against measured losses"):
            data.merge_check = analyse(measured, seed=cfg.seed)


def _base_stages_forked(cfg, data, some, jobs):
    """:func:`_base_stages` in a child process: the fields it set, its timings and the projection nulls' keys."""
    _base_stages(cfg, data, some, as_progress(False), jobs)
    return {k: getattr(data, k) for k in _BASE_FIELDS}, dict(data.timings), list(data.nulls)


def _pairs(cfg, data, progress, jobs):
    """The adapter pairs (rank, seed, cross, cause, control), the rank advice and the random references;
    returns every module of every adapter (:func:`_union`)."""
    sides = ("A", "B", "input", "output")
    lo, hi, lo1 = data.adapter("low"), data.adapter("high"), data.adapter("low_other")
    sa, sb = data.adapter("seed_a"), data.adapter("seed_b")
    if lo is not None and hi is not None:
        data.rank_pair = compare_adapters(lo, hi, sides=sides, progress=progress, jobs=jobs)
    if sa is not None and sb is not None:
        data.seed_pair = compare_adapters(sa, sb, sides=sides, progress=progress, jobs=jobs)
        data.advice = advise_ranks(sa, sb, seed=cfg.seed, jobs=jobs)  # stability-based rank advice
    if lo1 is not None and hi is not None:  # control: the rank pair without a shared seed
        data.cross_pair = compare_adapters(lo1, hi, sides=sides, progress=progress, jobs=jobs)
    if not cfg.pairs:
        _init_pairs(cfg, data, progress, jobs)
        _control_pair(cfg, data, progress, jobs)
    some = _union(data)
    r_random = data.rank("seed_a") or data.rank("high") or max(lr.r for lr in some.values())
    for m in data.modules:
        d_in = some[data._some_name(m)].shape[1]
        data.random_sim[m] = gaussian_similarity(min(r_random, d_in), min(r_random, d_in), d_in, seed=cfg.seed)
    return some


def _union(data):
    """Every module of every adapter (the first adapter's LowRank where several have it)."""
    out = {}
    for ad in data.adapters.values():
        for n, lr in ad.expanded().items():
            out.setdefault(n, lr)
    return out


def _with_base(cfg, data, base, some, progress, jobs, t1):
    """The per-adapter sweeps; with a base also Table 7 (focus layer and every layer), Fig. 8 and the long runs."""
    import pandas as pd

    from analysis.sweeps.adapter import analyse_adapters  # local: SVD cache, base readers: +14 ms on report --help

    labels = list(data.adapters)  # one pass over the base for all the adapters
    sweeps = analyse_adapters([data.adapters[lab] for lab in labels], base=base, n_random=cfg.n_random,
                              seed=cfg.seed, progress=progress, jobs=jobs, tolerance=cfg.tolerance)
    data.sweeps.update(zip(labels, sweeps))
    data.timings["sweeps_s"] = time.perf_counter() - t1
    if base is None:
        return
    t2 = time.perf_counter()
    labs = data.table_labels
    rows = []  # Table 7 at the focus layer, with more random draws: one more pass over its weights
    for lab, sw in zip(labs, analyse_adapters([data.adapters[lab] for lab in labs], base=base,
                                              layers={data.layer}, n_random=cfg.n_random_table,
                                              seed=cfg.seed, jobs=jobs, tolerance=cfg.tolerance)):
        sub = sw.frame
        sub.insert(0, "adapter", lab)
        rows.append(sub)
    data.table7 = (pd.concat(rows, ignore_index=True).sort_values(["module", "r"], kind="stable")
                   .reset_index(drop=True) if rows else None)
    _w_pass(cfg, data, base, some, jobs, _long_runs(cfg, data) if not cfg.pairs else [])
    data.timings["weight_overlap_s"] = time.perf_counter() - t2


def _qv_kinds(data):
    """The self-attention q and v module types of every stack (the paper's ΔWq, ΔWv)."""
    return data.kinds_of("q") + data.kinds_of("v")


def _long_runs(cfg, data):
    """The checkpoints of the long runs, read lazily: ``[(run, step, modules, validation loss)]`` (step 0 skipped:
    B = 0, no update yet)."""
    from analysis.sweeps.trajectory import checkpoint_steps  # local: the collection sweep, +16 ms on report --help

    out = []
    for lab in cfg.long_runs:
        steps = [(s, p) for s, p in checkpoint_steps(os.path.join(cfg.checkpoints, lab), strict=False) if s > 0]
        if not steps:
            continue
        man = _manifest(os.path.join(cfg.checkpoints, lab))
        losses = dict(tuple(x) for x in man.get("val_loss", []) if isinstance(x, (list, tuple)) and len(x) == 2)
        for step, path in steps:
            try:
                mods = load_adapter(path, alpha=cfg.alpha, lazy=True)
            except (TypeError, ValueError):  # a format without a lazy reader
                mods = load_adapter(path, alpha=cfg.alpha)
            out.append((lab, step, _select(mods, cfg).expanded(), losses.get(step, float("nan"))))
    return out


def _w_pass(cfg, data, base, some, jobs, long_runs):
    """One pass over the base for the q and v modules at every layer, each W read once and dropped after use: its
    full spectrum (the nulls of Table 7 at every layer), at the focus layer every adapter's overlap with W's singular
    directions (Fig. 8), and Table 7 over training time (every checkpoint of the long runs at that module)."""
    import numpy as np
    import pandas as pd

    from analysis.io.base import base_matrix  # local: +8 ms on report --help

    kinds = _qv_kinds(data) or list(data.modules)
    names = [data.name(k, L) for k in kinds for L in data.layers_of(k)]
    focus = {data.name(k) for k in kinds if (k, data.layer) in data._index}

    def one(item):
        name, W = item
        W = base_matrix(W, some[name], name=name)
        svd = randomized_svd(W, min(W.shape), seed=cfg.seed, method="full")
        over = None
        if name in focus:
            over = {side: {data.series(lab): weight_overlap(
                W, data.adapters[lab].expanded()[name], side=side, seed=cfg.seed, w_svd=svd, name=name)
                for lab in data.table_labels if name in data.adapters[lab].expanded()} for side in OVERLAP_SIDES}
        long = [(lab, step, loss, weight_correlation(W, mods[name], n_random=1, seed=cfg.seed, w_svd=svd))
                for lab, step, mods, loss in long_runs if name in mods]
        return name, W.shape, np.asarray(svd.S, dtype=float), over, long

    long_rows = []
    for name, shape, S, over, long in sweep_modules(one, ((n, _base_weight(base, n)) for n in names), jobs=jobs):
        data.w_spectra[name] = S
        data._wshape[name] = shape
        role = module_role(name)
        if over is not None:
            for side in OVERLAP_SIDES:
                data.overlaps[(role.kind, side)] = over[side]
        for lab, step, loss, wc in long:
            if wc.zero:
                continue
            null = _projection_null(cfg, data, name, wc.k)
            long_rows.append({"run": lab, "r": wc.r, "k": wc.k, "step": step, "name": name, "kind": role.kind,
                              "role": role.role, "layer": role.layer, "module": role.module,
                              "proj_delta": wc.proj_delta, "null_mean": null.mean, "null_sd": null.sd,
                              "z": (wc.proj_delta - null.mean) / null.sd, "delta_norm": wc.delta_norm,
                              "w_norm": wc.w_norm, "rel_norm": wc.delta_norm / wc.w_norm,
                              "amplification": wc.amplification, "amp_random": wc.delta_norm / null.mean,
                              "val_loss": loss})
    if long_rows:
        data.long_run = (pd.DataFrame(long_rows).sort_values(["run", "step", "layer", "role"], kind="stable")
                         .reset_index(drop=True))
    rows = []
    for lab in data.table_labels:
        fr = data.sweeps[lab].frame if lab in data.sweeps else None
        if fr is None or "proj_delta" not in fr:
            continue
        for rec in fr[fr["name"].isin(set(names))].to_dict("records"):
            if rec.get("zero") or not np.isfinite(rec.get("proj_delta", np.nan)):
                continue
            n = rec["name"]
            role = module_role(n)
            k = int(rec["rank"])
            null = _projection_null(cfg, data, n, k)
            rows.append({"adapter": lab, "name": n, "kind": role.kind, "role": role.role, "stack": role.stack,
                         "layer": role.layer, "r": int(rec["r"]), "k": k, "d_out": int(rec["d_out"]),
                         "d_in": int(rec["d_in"]), "proj_delta": float(rec["proj_delta"]),
                         "null_mean": null.mean, "null_sd": null.sd, "w_norm": float(rec["w_norm"]),
                         "delta_norm": float(rec["fro"]), "amplification": float(rec["amplification"]),
                         "amp_random": float(rec["fro"]) / null.mean if null.mean > 0 else np.nan})
    data.t7_layers = pd.DataFrame(rows)


def _projection_null(cfg, data, name, k):
    """The null of ‖UᵀWV‖_F for k random directions at module ``name`` (cached per module and k)."""
    key = (name, int(k))
    if key not in data.nulls:
        S = data.w_spectra[name]
        d_out, d_in = data._wshape[name]
        if k >= GAUSSIAN_K:
            ex, vx = projection_moments(S, d_out, d_in, k)
            data.nulls[key] = SquareGaussianNull(ex, vx, what=f"‖UᵀWV‖ for {k} Haar-random directions")
        else:
            draw = cached_draws(lambda n, seed: projection_draws(S, d_out, d_in, k, n=n, seed=seed),
                                kind="projection_draws", data=S, shape=[int(d_out), int(d_in)], k=int(k))
            data.nulls[key] = DrawsNull(draw, n=cfg.n_random_table, seed=cfg.seed,
                                        what=f"‖UᵀWV‖ for {k} Haar-random directions")
    return data.nulls[key]


def _collection(cfg, data):
    """Every adapter folder of ``checkpoints`` compared with every other; the task adapters merged."""
    from analysis.sweeps.collection import collection_similarity  # local: +13 ms on report --help
    from analysis.sweeps.merge import merge_adapters  # local: +28 ms on report --help
    from analysis.sweeps.trajectory import checkpoint_steps  # local: the collection sweep, +16 ms on report --help

    folders = sorted(f for f in os.listdir(cfg.checkpoints)
                     if os.path.isfile(os.path.join(cfg.checkpoints, f, "adapter_config.json"))
                     and f not in cfg.control_runs)  # the q/k/v/o control adapts other modules
    paths = {f: os.path.join(cfg.checkpoints, f) for f in folders}
    for run in cfg.long_runs:  # a training run's last checkpoint joins the collection
        steps = checkpoint_steps(os.path.join(cfg.checkpoints, run), strict=False)
        if steps:
            paths[f"{run}@{steps[-1][0]}"] = steps[-1][1]
    if len(paths) < 2:
        return
    for f, path in paths.items():
        man = data.manifests.get(f) or _manifest(path)
        data.collection_meta[f] = {"task": "merged" if "merged" in man else manifest_task(man), "rank": man.get("rank"),
                                   "seeds": _seeds(man)}
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


def _read_merge_table(table, checkpoints=None):
    """The measured merge losses of ``table`` (read once, never written: a partial last line is ignored), or None
    when it measures other adapters than those of ``checkpoints`` (an ``own`` row's folder is not there; not
    checked when None)."""
    import pandas as pd

    with open(table, encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):  # being appended to by the measuring run
        lines = lines[:-1]
    fr = pd.read_csv(io.StringIO("".join(lines)), dtype=str, keep_default_na=False)
    if checkpoints is not None:
        own = fr.loc[fr["kind"] == "own", "subset"]
        if not len(own) or not all(f and os.path.isfile(os.path.join(checkpoints, f, "adapter_config.json"))
                                    for f in own):
            return None
    return fr


def _merge_check(table, *, seed, checkpoints=None):
    """The merge advice against the measured losses of ``table`` (:func:`_read_merge_table`), or None."""
    from analysis.reference.merge_losses import analyse  # local: merges, trainer: +41 ms on report --help

    fr = _read_merge_table(table, checkpoints)
    return None if fr is None else analyse(fr, seed=seed)


def _manifest(path):
    """The run's ``manifest.json`` as a dict ({} when there is none); a file that is no JSON object is an
    :class:`~analysis.errors.AdapterError` naming it."""
    man = os.path.join(path, "manifest.json")
    if not os.path.exists(man):
        return {}
    return read_json_object(man)


def _seeds(manifest):
    """(data-order seed, initialisation seed) of a training run; older manifests have one ``seed`` for both."""
    seed = manifest.get("seed")
    return manifest.get("data_seed", seed), manifest.get("init_seed", seed)


def _base_weight(base, name):
    """Base tensor ``name`` as read, from an open reader or a mapping."""
    return base.weight(name) if hasattr(base, "weight") else base[name]


def shared_start(run, partner):
    """Whether run ``run``'s A started as the first rows of run ``partner``'s A, read from their step-0 adapters.

    Parameters
    ----------
    run, partner : str
        Run folders holding ``checkpoint-0`` (the adapter at initialisation).

    Returns
    -------
    bool or None
        None when either step-0 adapter is missing (the start cannot be checked from the files).
    """
    import numpy as np
    from safetensors.numpy import load_file

    fa, fb = (os.path.join(p, "checkpoint-0", "adapter_model.safetensors") for p in (run, partner))
    if not (os.path.exists(fa) and os.path.exists(fb)):
        return None
    with safetensors_errors(fa):  # a damaged file: an AdapterError naming it
        a = load_file(fa)
    with safetensors_errors(fb):
        b = load_file(fb)
    keys = [k for k in a if k.endswith("lora_A.weight")]
    if not keys or any(k not in b for k in keys):
        return False
    return all(a[k].shape[0] <= b[k].shape[0] and np.array_equal(a[k], b[k][: a[k].shape[0]]) for k in keys)


def _init_pairs(cfg, data, progress, jobs=None):
    """The cause experiment: every r = low run against every r = high partner (sides A and input), with what they
    share: the data order (manifests) and the initial A (checked from the step-0 adapters).

    One pass over the modules for all the pairs: a partner's bases, taken once per module, serve every run."""
    partners = {}
    for p in cfg.init_partners:
        path = os.path.join(cfg.checkpoints, p)
        if os.path.exists(path):
            partners[p] = data.adapters.get(p) or _load_one(path, cfg, cfg.alpha)
    splits = {}
    for lab in cfg.init_runs:
        path = os.path.join(cfg.checkpoints, lab)
        if not os.path.exists(os.path.join(path, "adapter_config.json")) or not partners:
            continue  # absent, or a run still training (only its checkpoint-0 so far)
        ad = data.adapters.get(lab) or _load_one(path, cfg, cfg.alpha)
        man = data.manifests.get(lab) or _manifest(path)
        ds, is_ = _seeds(man)
        for p, pad in partners.items():
            pman = data.manifests.get(p) or _manifest(os.path.join(cfg.checkpoints, p))
            pds, _ = _seeds(pman)
            start = shared_start(path, os.path.join(cfg.checkpoints, p))
            data.init_meta[(lab, p)] = {"data_seed": ds, "init_seed": is_, "partner_data_seed": pds,
                                        "shared_data": ds == pds, "shared_A": start,
                                        "init_a_from": (man.get("init_a_from") or {}).get("path"),
                                        "steps": man.get("steps")}
            splits[(lab, p)] = pair_modules(ad, pad)
    if not splits:
        return
    names = sorted({n for sp in splits.values() for n in sp.names}, key=natural_key)
    compared = {key: set(sp.names) for key, sp in splits.items()}

    def involved(name):  # every adapter's module at ``name``, each once (cleared once all pairs are done)
        return list({id(lr): lr for sp in splits.values() if name in sp.a for lr in (sp.a[name], sp.b[name])
                     if name in sp.b}.values())

    def one(name, *_):
        return {key: pair_row(name, sp.a[name], sp.b[name], sides=("A", "input"))
                for key, sp in splits.items() if name in compared[key]}

    rows: dict = {key: [] for key in splits}
    for done in sweep_modules(one, names, modules=involved, jobs=jobs, progress=progress):
        for key, res in done.items():
            rows[key].append(res)
    for key, sp in splits.items():
        data.init_pairs[key] = pair_sweep(rows[key], sp)


def _control_pair(cfg, data, progress, jobs=None):
    """Fig. 4 with matched shapes: two seeds of r = high on q, k, v and o."""
    paths = [os.path.join(cfg.checkpoints, r) for r in cfg.control_runs]
    if len(paths) != 2 or not all(os.path.exists(p) for p in paths):
        return
    a, b = (_load_one(p, cfg, cfg.alpha) for p in paths)
    for lab, p, ad in zip(cfg.control_runs, paths, (a, b)):
        data.manifests.setdefault(lab, _manifest(p))
        data.control_adapters[lab] = ad
    data.control_pair = compare_adapters(a, b, sides=("A", "input"), progress=progress, jobs=jobs)
