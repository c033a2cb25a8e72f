"""Run metrics over every module of one or two adapters into a tidy DataFrame."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from analysis.adapter import Adapter, split_name
from analysis.errors import AdapterError, MissingAlphaError
from analysis.frames import load_frame, save_frame
from analysis.metrics.pair import SIDES, module_similarity

__all__ = ["PairSweep", "compare_adapters", "select_modules", "parse_layers", "AdapterSweep", "analyse_adapters",
           "analyse_adapter", "base_matrix", "save_frame", "load_frame"]


def parse_layers(spec: str) -> set:
    """Parse a layer selection such as ``"0,5,10-15"`` into a set of ints."""
    out = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise ValueError(f"bad layer selection {spec!r}: expected integers and ranges like '0,5,10-15'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise ValueError(f"bad layer range {part!r} in {spec!r}: end before start")
        out.update(range(lo, hi + 1))
    return out


def select_modules(names, *, modules=None, layers=None):
    """Filter module names by regular expressions and layer indices.

    Parameters
    ----------
    names : iterable of str
    modules : sequence of str, optional
        Keep a name if any pattern matches it (``re.search``), e.g. ``q_proj``.
    layers : set of int or str, optional
        Keep names whose layer (see :func:`~analysis.adapter.split_name`) is in it.

    Returns
    -------
    list of str, in the input order.
    """
    if isinstance(layers, str):
        layers = parse_layers(layers)
    pats = []
    for p in modules or ():
        try:
            pats.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"bad module pattern {p!r}: {e}") from None
    out = []
    for n in names:
        if pats and not any(p.search(n) for p in pats):
            continue
        if layers is not None and split_name(n)[0] not in layers:
            continue
        out.append(n)
    return out


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _maybe(f):
    try:
        return f()
    except MissingAlphaError:
        return np.nan


@dataclass
class PairSweep:
    """Similarity of every module two adapters share.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per shared module: ``name, layer, module, d_out, d_in, r_a,
        r_b, rank_a, rank_b, norm_a, norm_b, zero_a, zero_b`` and, per side
        ``s`` compared, ``phi11_s``, ``shared_dims_s``, ``ties_s`` and the
        principal-angle summaries ``min_angle_deg_s``, ``median_angle_deg_s``,
        ``max_angle_deg_s``, ``mean_cos2_s`` (mean cos² θ over the min(k1, k2)
        angles between the full spans, = φ(k1, k2)).
    results : dict[str, dict[str, SimilarityResult]]
        ``results[name][side]``: the full φ grids.
    only_a, only_b : list of str
        Modules present in only one adapter (not compared).
    mismatched : list of str
        Shared names whose ΔW shapes differ (not compared).
    """

    frame: object
    results: dict = field(default_factory=dict)
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)


def compare_adapters(a: Adapter, b: Adapter, *, sides=SIDES, modules=None, layers=None,
                     progress=False, keep_cache=False) -> PairSweep:
    """Compare every module two adapters share, on the chosen bases.

    Parameters
    ----------
    a, b : Adapter
    sides : sequence of {"A", "B", "input", "output"}
        Bases compared (see :func:`~analysis.metrics.module_similarity`).
    modules, layers
        Filters, see :func:`select_modules`.
    progress : bool
        Show a progress bar (tqdm) on standard error.
    keep_cache : bool
        Keep each module's float64 SVD after use (default: drop it, so memory
        stays bounded by one module at a time).

    Returns
    -------
    PairSweep
    """
    import pandas as pd

    for s in sides:
        if s not in SIDES:
            raise ValueError(f"side must be among {SIDES}, got {s!r}")
    ea, eb = a.expanded(), b.expanded()
    shared = sorted(set(ea) & set(eb), key=_natural_key)
    only_a = sorted(set(ea) - set(eb), key=_natural_key)
    only_b = sorted(set(eb) - set(ea), key=_natural_key)
    shared = select_modules(shared, modules=modules, layers=layers)
    rows, results, mismatched = [], {}, []
    it = shared
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(shared, desc="modules", unit="mod", leave=False)
    for name in it:
        la, lb = ea[name], eb[name]
        if la.shape != lb.shape:
            mismatched.append(name)
            continue
        layer, module = split_name(name)
        row = {"name": name, "layer": layer, "module": module, "d_out": la.shape[0],
               "d_in": la.shape[1], "r_a": la.r, "r_b": lb.r, "rank_a": la.rank, "rank_b": lb.rank,
               "norm_a": _maybe(la.norm), "norm_b": _maybe(lb.norm),
               "zero_a": la.is_zero, "zero_b": lb.is_zero}
        results[name] = {}
        for s in sides:
            res = module_similarity(la, lb, side=s)
            results[name][s] = res
            row[f"phi11_{s}"] = np.nan if res.phi11 is None else res.phi11
            row[f"shared_dims_{s}"] = res.shared_dims()
            ang = res.angles
            row[f"min_angle_deg_{s}"] = float(np.degrees(ang[0])) if ang.size else np.nan
            row[f"median_angle_deg_{s}"] = float(np.degrees(np.median(ang))) if ang.size else np.nan
            row[f"max_angle_deg_{s}"] = float(np.degrees(ang[-1])) if ang.size else np.nan
            row[f"mean_cos2_{s}"] = float(np.mean(np.cos(ang) ** 2)) if ang.size else np.nan
            row[f"ties_{s}"] = len(res.ties1) + len(res.ties2)
        rows.append(row)
        if not keep_cache:
            la.clear_cache()
            lb.clear_cache()
    frame = pd.DataFrame(rows)
    return PairSweep(frame=frame, results=results, only_a=only_a, only_b=only_b,
                     mismatched=mismatched)


# ---------------------------------------------------------------------------- one adapter (+ base)

def base_matrix(W, lr, *, name=None):
    """The base weight of a module in ΔW's (d_out, d_in) orientation.

    Settles the base-side layouts: a weight stored (in, out) for a
    fan_in_fan_out / Conv1D module is transposed, a convolution kernel is
    flattened to (out, in·kh·kw), and a loralib MergedLinear part (``…:q``)
    gets its rows of the fused weight.

    Parameters
    ----------
    W : ndarray
        The base tensor as read (``name + ".weight"``, or the parent's for a part).
    lr : LowRank
    name : str, optional
        For error messages.

    Returns
    -------
    (d_out, d_in) ndarray
    """
    W = np.asarray(W)
    name = name or lr.name
    d_out, d_in = lr.shape
    if W.ndim > 2:
        W = W.reshape(W.shape[0], -1)  # (out, in, kh, kw) -> (out, in·kh·kw)
    if W.ndim != 2:
        raise ValueError(f"module {name!r}: base weight has shape {W.shape}, expected a matrix")
    rows = lr.meta.get("rows") if lr.meta.get("parent") else None
    if rows is not None:
        lo, hi = rows
        if W.shape[1] != d_in and W.shape[0] == d_in:
            W = W.T  # (in, out_total) -> (out_total, in)
        W = W[lo:hi]  # (d_out, d_in): this part's rows of the fused weight
    elif lr.meta.get("fan_in_fan_out") and W.shape == (d_in, d_out):
        return W.T
    if W.shape == (d_out, d_in):
        return W
    if W.shape == (d_in, d_out):
        return W.T
    raise ValueError(f"module {name!r}: base weight has shape {W.shape} but ΔW is {lr.shape} "
                     "(d_out, d_in); is the base model the one the adapter was trained on?")


def _base_name(name, lr):
    return lr.meta.get("parent") or name


def _iter_base(base, needed):
    """Yield (base name, W) for the needed names, streaming from the source."""
    if hasattr(base, "weights"):
        yield from base.weights(needed)
    elif hasattr(base, "weight"):
        for n in needed:
            yield n, base.weight(n)
    else:  # a Mapping name -> array
        for n in needed:
            if n not in base:
                raise AdapterError(f"expected a base weight for module '{n}', got none", key=n + ".weight")
            yield n, base[n]


def _spectrum_row(lr):
    from analysis.metrics.spectrum import spectrum_summary

    s = lr.side_singular_values("input") if lr.scale is None else lr.singular_values()
    row = spectrum_summary(s).to_dict()
    if lr.scale is None:  # scale-free measures only
        row["sigma1"] = row["fro"] = np.nan
    row["norm"] = row.pop("fro")
    row.pop("rank", None)
    return row, s


@dataclass
class AdapterSweep:
    """Per-module measures of one adapter, and of its relation to the base weights.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per module: ``name, layer, module, d_out, d_in, r, rank, scale,
        zero, sigma1, norm, effective_rank, stable_rank, rank90, rank99,
        top1_energy``; with a base also ``w_norm, w_sigma1, proj_delta, proj_w,
        proj_random, proj_random_std, proj_random_rms, proj_random_expected, amplification,
        over_random`` (Table 7) and ``phi_w_output, phi_w_input,
        null_w_output, null_w_input``: φ(k, k) between W's top-k and ΔW's
        top-k directions (Fig. 8 at i = j = k) and its random null k / d.
    spectra : dict[str, (k,) ndarray]
        Singular values of each ΔW (scale included when known).
    correlations : dict[str, WeightCorrelation]
        Table-7 results (empty without a base).
    """

    frame: object
    spectra: dict = field(default_factory=dict)
    correlations: dict = field(default_factory=dict)


def analyse_adapter(adapter: Adapter, *, base=None, modules=None, layers=None, n_random=10, seed=0,
                    progress=False, keep_cache=False) -> AdapterSweep:
    """Spectra, rank measures and (with a base) Table-7 columns for every module.

    Parameters
    ----------
    adapter : Adapter
    base : str or os.PathLike or BaseWeights or Mapping[str, ndarray], optional
        The frozen base model: a path for :func:`analysis.io.base.open_base`,
        an open reader, or a mapping ``module name -> (d_out, d_in) array``.
        Weights are read one at a time.
    modules, layers
        Filters, see :func:`select_modules`.
    n_random, seed : int
        Random subspace draws and seed for the Table-7 baselines and W's randomized SVD.
    progress : bool
        Progress bar (tqdm) on standard error.
    keep_cache : bool
        Keep each module's float64 SVD after use.

    Returns
    -------
    AdapterSweep
    """
    return analyse_adapters([adapter], base=base, modules=modules, layers=layers, n_random=n_random, seed=seed,
                            progress=progress, keep_cache=keep_cache)[0]


def analyse_adapters(adapters, *, base=None, modules=None, layers=None, n_random=10, seed=0, progress=False,
                     keep_cache=False) -> list:
    """:func:`analyse_adapter` for several adapters of one base, reading each base weight once.

    With a base, each W is read once and its top singular triplets are
    computed once, for the largest rank any of the adapters has at that
    module, then shared (the top-k of a randomized SVD for a larger k is as
    accurate, see :func:`~analysis.core.randomized_svd`): comparing an
    r = 8 and an r = 64 adapter costs one pass over the base, not two.

    Parameters
    ----------
    adapters : sequence of Adapter
    base, modules, layers, n_random, seed, progress, keep_cache
        As for :func:`analyse_adapter`.

    Returns
    -------
    list of AdapterSweep
        One per adapter, in order.
    """
    import pandas as pd

    from analysis.core.randomized import randomized_svd
    from analysis.metrics.correlation import weight_correlation, weight_overlap

    runs = []  # per adapter: (modules, selected names, rows, spectra, correlations)
    for adapter in adapters:
        mods = adapter.expanded()
        names = select_modules(sorted(mods, key=_natural_key), modules=modules, layers=layers)
        runs.append((mods, names, {}, {}, {}))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(r[1]) for r in runs) * (2 if base is not None else 1), desc="modules",
                   unit="mod", leave=False)
    for mods, names, rows, spectra, _ in runs:
        for name in names:
            lr = mods[name]
            layer, module = split_name(name)
            row = {"name": name, "layer": layer, "module": module, "d_out": lr.shape[0], "d_in": lr.shape[1],
                   "r": lr.r, "rank": lr.rank, "scale": np.nan if lr.scale is None else lr.scale,
                   "zero": lr.is_zero}
            srow, spectra[name] = _spectrum_row(lr)
            row.update(srow)
            rows[name] = row
            if not keep_cache:
                lr.clear_cache()
            if bar is not None:
                bar.update()
    if base is not None:
        opened = None
        if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
            from analysis.io.base import open_base

            base = opened = open_base(base)
        try:
            by_base = {}  # base tensor -> [(adapter index, module name)]
            for i, (mods, names, *_) in enumerate(runs):
                for name in names:
                    by_base.setdefault(_base_name(name, mods[name]), []).append((i, name))
            for bname, W_raw in _iter_base(base, list(by_base)):
                svds = {}  # (module name, shape) -> (W, top-k triplets for the largest k any adapter needs)
                for i, name in by_base[bname]:
                    mods, _, rows, _, corr = runs[i]
                    lr = mods[name]
                    key = (name, lr.shape)
                    if key not in svds:
                        try:
                            W = base_matrix(W_raw, lr, name=name)
                        except ValueError as e:
                            raise AdapterError(str(e), path=getattr(base, "path", None)) from None
                        k_all = max(max(runs[j][0][n].rank, 1) for j, n in by_base[bname]
                                    if (n, runs[j][0][n].shape) == key)
                        svds[key] = (W, randomized_svd(W, k_all, seed=seed))
                    W, w_svd = svds[key]
                    k = max(lr.rank, 1)
                    c = corr[name] = weight_correlation(W, lr, n_random=n_random, seed=seed, w_svd=w_svd,
                                                        name=name)
                    rows[name].update(w_norm=c.w_norm, w_sigma1=float(w_svd.S[0]), proj_delta=c.proj_delta,
                                      proj_w=c.proj_w, proj_random=c.proj_random, proj_random_std=c.proj_random_std,
                                      proj_random_rms=c.proj_random_rms,
                                      proj_random_expected=c.proj_random_expected, amplification=c.amplification,
                                      over_random=c.over_random)
                    for side in ("output", "input"):
                        ov = weight_overlap(W, lr, side=side, n_w=k, seed=seed, w_svd=w_svd, name=name)
                        rows[name][f"phi_w_{side}"] = float(ov.phi[-1, -1]) if not ov.zero else np.nan
                        rows[name][f"null_w_{side}"] = k / ov.d
                    if not keep_cache:
                        lr.clear_cache()
                    if bar is not None:
                        bar.update()
        finally:
            if opened is not None:
                opened.close()
    if bar is not None:
        bar.close()
    out = []
    for _, names, rows, spectra, corr in runs:
        frame = pd.DataFrame([rows[n] for n in names])
        if len(frame) and frame["layer"].isna().any():
            frame["layer"] = frame["layer"].astype("Int64")
        out.append(AdapterSweep(frame=frame, spectra=spectra, correlations=corr))
    return out
