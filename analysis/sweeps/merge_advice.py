"""Advice before merging, from the interference statistics, and how well it predicts measured losses.

From the exact Frobenius inner products of a merge (no dense ΔW; :attr:`MergeResult.cosines` and
:attr:`MergeResult.projections`), pooled over modules (the whole adapter as one long vector):

pairs
    the cosine of ΔWa and ΔWb and its z against random directions of the same norms (sd
    ‖ΔWa‖‖ΔWb‖ / √(d_out d_in) per module): ``reinforce`` (z ≥ 3), ``cancel`` (z ≤ −3) or ``independent``.
per adapter i (M the merged update, ΔWᵢ its own update at weight 1)
    ``retained`` gᵢ = ⟨M, ΔWᵢ⟩ / ‖ΔWᵢ‖² (how much of its own update the merge carries: 1 = all of it),
    ``distance`` dᵢ = ‖M − ΔWᵢ‖² / ‖ΔWᵢ‖² and ``foreign`` fᵢ = dᵢ − (1 − gᵢ)² (the merge's energy outside
    ΔWᵢ's direction, in units of ‖ΔWᵢ‖²: what the other adapters add that task i did not ask for).
suggested scale
    c* = Σ gᵢ / Σ ‖M‖²/‖ΔWᵢ‖², the common factor on the weights that minimises Σᵢ dᵢ(c) (every method here
    scales M linearly with a common factor on the weights): 1/n for n orthogonal adapters of equal norms,
    less when they reinforce, more when they cancel.

What it can and cannot predict: all of it is weight-space geometry. It sees when two updates share or
oppose directions, and how far the merge is from each adapter's own update; it cannot see how an update acts
on another task's inputs (activations), so two adapters orthogonal as matrices can still hurt each other's
task. :func:`advice_vs_losses` measures how well dᵢ ranks the loss increase over each task's own adapter,
on a table of measured losses (``benchmarks/merge_losses.csv``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.metrics.cosine import INTERFERENCE_Z, frobenius_inner

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd

    from analysis.core.adapter import Adapter
    from analysis.sweeps.merge import MergeResult

__all__ = ["P_TAIL", "MergeAdvice", "advise_merge", "pair_relations", "adapter_distances", "suggested_scale",
           "merged_distances", "AdviceCheck", "advice_vs_losses"]


#: The protocol's one-sided level: the upper tail of a Gaussian at z = 3 (equals report.protocol.P_TAIL).
P_TAIL = 0.5 * math.erfc(INTERFERENCE_Z / math.sqrt(2.0))


@dataclass(frozen=True)
class MergeAdvice:
    """What the interference statistics say about one merge.

    Attributes
    ----------
    pairs : pandas.DataFrame
        ``a, b, modules, cosine, z, relation`` (pooled over the modules both adapters have).
    adapters : pandas.DataFrame
        ``adapter, weight, norm2, retained, foreign, distance, distance_at_scale``.
    scale : float
        c*: multiply every weight by it to bring the merge closest, on average, to each adapter's own update.
    ratio : float
        ‖Σ wᵢΔWᵢ‖² / Σ ‖wᵢΔWᵢ‖², pooled.
    lines : tuple of str
        The advice in words.
    """

    pairs: pd.DataFrame
    adapters: pd.DataFrame
    scale: float
    ratio: float
    lines: tuple

    def to_frame(self) -> pd.DataFrame:
        """The per-adapter table."""
        return self.adapters.copy()


def pair_relations(cosines: pd.DataFrame, weights: Mapping[str, float] | None = None, *,
                   z: float = INTERFERENCE_Z) -> pd.DataFrame:
    """Pooled inner product and z of every pair of adapters, and whether they reinforce or cancel in the merge.

    Parameters
    ----------
    cosines : pandas.DataFrame
        ``a, b, inner, null_sd`` per module and pair (:attr:`MergeResult.cosines`).
    weights : Mapping[str, float], optional
        Adapter label -> merge weight: the relation is that of wa ΔWa and wb ΔWb (two equal updates with weights
        of opposite signs cancel). Default: 1 each.
    z : float

    Returns
    -------
    pandas.DataFrame
        ``a, b, modules, inner, null_sd, z`` (of the unweighted updates), ``relation`` (of the weighted ones:
        ``reinforce`` when sign(wa wb) z ≥ 3, ``cancel`` when ≤ −3, else ``independent``).
    """
    import pandas as pd

    weights = dict(weights or {})
    rows = []
    for (a, b), g in cosines.groupby(["a", "b"], sort=False):
        inner = float(g["inner"].sum())
        sd = float(np.sqrt(np.sum(g["null_sd"].to_numpy(dtype=float) ** 2)))
        zz = inner / sd if sd > 0 else 0.0
        zw = zz * np.sign(weights.get(a, 1.0) * weights.get(b, 1.0))
        rel = "reinforce" if zw >= z else "cancel" if zw <= -z else "independent"
        rows.append({"a": a, "b": b, "modules": len(g), "inner": inner, "null_sd": sd, "z": zz, "relation": rel})
    return pd.DataFrame(rows, columns=["a", "b", "modules", "inner", "null_sd", "z", "relation"])


def adapter_distances(projections: pd.DataFrame, norm2_merged: float) -> pd.DataFrame:
    """Per adapter: retained gᵢ, foreign fᵢ and distance dᵢ of the merged update (pooled over modules).

    Parameters
    ----------
    projections : pandas.DataFrame
        ``adapter, weight, norm2, inner_merged`` per module and adapter (:attr:`MergeResult.projections`).
    norm2_merged : float
        ‖M‖² summed over every module of the merge.

    Returns
    -------
    pandas.DataFrame
        ``adapter, weight, norm2, inner, retained, foreign, distance``.
    """
    import pandas as pd

    rows = []
    for lab, g in projections.groupby("adapter", sort=False):
        own = float(g["norm2"].sum())
        inner = float(g["inner_merged"].sum())
        if own > 0:
            ret = inner / own
            dist = norm2_merged / own - 2.0 * ret + 1.0
            foreign = dist - (1.0 - ret) ** 2
        else:
            ret = dist = foreign = float("nan")
        rows.append({"adapter": lab, "weight": float(g["weight"].iloc[0]), "norm2": own, "inner": inner,
                     "retained": ret, "foreign": max(foreign, 0.0) if math.isfinite(foreign) else foreign,
                     "distance": max(dist, 0.0) if math.isfinite(dist) else dist})
    return pd.DataFrame(rows, columns=["adapter", "weight", "norm2", "inner", "retained", "foreign", "distance"])


def suggested_scale(adapters: pd.DataFrame, norm2_merged: float) -> float:
    """c* = Σ gᵢ / Σ ‖M‖²/‖ΔWᵢ‖² (minimises Σᵢ ‖cM − ΔWᵢ‖²/‖ΔWᵢ‖²); NaN when the merge is zero.

    Parameters
    ----------
    adapters : pandas.DataFrame
        ``norm2, retained`` per adapter (:func:`adapter_distances`).
    norm2_merged : float

    Returns
    -------
    float
    """
    ok = adapters["norm2"].to_numpy(dtype=float) > 0
    den = float(np.sum(norm2_merged / adapters["norm2"].to_numpy(dtype=float)[ok]))
    return float(np.sum(adapters["retained"].to_numpy(dtype=float)[ok]) / den) if den > 0 else float("nan")


def _distance_at(adapters, norm2_merged, c):
    own = adapters["norm2"].to_numpy(dtype=float)
    g = adapters["retained"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(c * c * norm2_merged / own - 2 * c * g + 1, 0.0)


def _lines(pairs, ad, scale, ratio, method):
    out = []
    for r in pairs.itertuples():
        what = {"reinforce": "reinforce (what they share adds up in the merge)",
                "cancel": "cancel (the merge loses part of both)",
                "independent": "are independent (as random directions)"}[r.relation]
        out.append(f"{r.a} and {r.b} {what}: pooled cosine {r.cosine:+.3f}, z {r.z:+.1f} over {r.modules} modules"
                   + (" (weights of opposite signs)" if r.relation != "independent" and (r.z > 0) != (
                       r.relation == "reinforce") else ""))
    if len(ad):
        worst = ad.loc[ad["distance"].idxmax()] if ad["distance"].notna().any() else None
        parts = ", ".join(f"{r.adapter} g {r.retained:.2f} f {r.foreign:.2f}" for r in ad.itertuples())
        out.append(f"the {method} merge keeps g of each adapter's own update and adds f times its energy from the "
                   f"others: {parts}" + (f"; farthest from its own update: {worst['adapter']} (distance "
                                         f"{worst['distance']:.2f})" if worst is not None else ""))
    if math.isfinite(scale):
        now = float(np.nanmean(ad["distance"])) if len(ad) else float("nan")
        best = float(np.nanmean(ad["distance_at_scale"])) if len(ad) else float("nan")
        out.append(f"suggested scale {scale:.3g} (multiply every weight by it): mean distance from each adapter's "
                   f"own update {now:.2f} -> {best:.2f}; ||sum w dW||^2 / sum ||w dW||^2 = {ratio:.3f}")
    out.append("weight-space advice: it cannot see how one adapter's update acts on another task's inputs "
               "(measured against validation losses in benchmarks/merge_losses.csv)")
    return tuple(out)


def advise_merge(result: MergeResult) -> MergeAdvice:
    """Advice from a merge's interference statistics.

    Parameters
    ----------
    result : MergeResult
        From :func:`~analysis.sweeps.merge.merge_adapters`.

    Returns
    -------
    MergeAdvice
    """
    pairs = pair_relations(result.cosines, dict(zip(result.labels, result.weights)))
    # ignored: MergeResult.projections is None only in a result not made by merge_adapters
    own = result.projections.groupby("adapter", sort=False)["norm2"].sum()  # type: ignore[union-attr]
    pairs["cosine"] = [p.inner / math.sqrt(own[p.a] * own[p.b]) if own[p.a] > 0 and own[p.b] > 0 else float("nan")
                       for p in pairs.itertuples()]
    merged2 = float(result.frame["norm2_merged"].sum())
    ad = adapter_distances(result.projections, merged2)
    scale = suggested_scale(ad, merged2)
    ad["distance_at_scale"] = _distance_at(ad, merged2, scale) if math.isfinite(scale) else float("nan")
    s = result.summary()
    pairs = pairs[["a", "b", "modules", "cosine", "z", "relation", "inner", "null_sd"]]
    return MergeAdvice(pairs, ad, scale, s["ratio_pooled"], _lines(pairs, ad, scale, s["ratio_pooled"],
                                                                    result.method))


def merged_distances(merged: Adapter, sources: Sequence[Adapter], *,
                     labels: Sequence[str] | None = None) -> pd.DataFrame:
    """gᵢ, fᵢ, dᵢ of an adapter already written (e.g. a shipped merge) against its sources, from the factors.

    Parameters
    ----------
    merged : Adapter
    sources : sequence of Adapter
        The adapters it was merged from (their own updates at weight 1).
    labels : sequence of str, optional

    Returns
    -------
    pandas.DataFrame
        ``adapter, norm2, inner, retained, foreign, distance`` (:func:`adapter_distances`), and ``norm2_merged``.
    """
    import pandas as pd

    labels = [str(a.path) for a in sources] if labels is None else list(labels)
    m = merged.expanded()
    merged2 = float(sum(lr.norm() ** 2 for lr in m.values()))
    rows = []
    for lab, src in zip(labels, sources):
        for n, lr in src.expanded().items():
            inner = float(frobenius_inner(m[n], lr)) if n in m else 0.0
            rows.append({"name": n, "adapter": lab, "weight": 1.0, "norm2": lr.norm() ** 2, "inner_merged": inner})
    out = adapter_distances(pd.DataFrame(rows), merged2).drop(columns="weight")
    out["norm2_merged"] = merged2
    return out


@dataclass(frozen=True)
class AdviceCheck:
    """How well a predictor ranks measured loss increases (Spearman ρ against a permutation null).

    Attributes
    ----------
    predictor : str
    rho : float
        Spearman's ρ between the predictor and the loss increase over each task's own adapter.
    null_mean, null_sd : float
        Of ρ under the null: the increases permuted within each task (``n_perm`` draws, seeded).
    z : float
    p : float
        One-sided empirical p, (1 + #{ρ_null ≥ ρ}) / (1 + n_perm).
    n : int
        Rows (merged adapter × task).
    per_task : dict
        Task -> ρ within that task.
    verdict : str
        ``"predicts"`` (p ≤ 0.00135, the protocol's level), ``"weakly"`` (0 < ρ and p < 0.05 but above that
        level), ``"does not predict"``. The permutation null's sd also gives the smallest ρ the test detects
        with power 0.8: about ``null_mean + (3 + 0.84) null_sd`` (:attr:`detectable`).
    """

    predictor: str
    rho: float
    null_mean: float
    null_sd: float
    z: float
    p: float
    n: int
    per_task: dict
    verdict: str

    @property
    def detectable(self) -> float:
        """The ρ this test detects with power about 0.8 (normal approximation of the permutation null)."""
        return self.null_mean + (3.0 + 0.84) * self.null_sd


def _ranks(x):
    from scipy.stats import rankdata

    return rankdata(x)


def _spearman(x, y):
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / den if den > 0 else float("nan")


def advice_vs_losses(table: pd.DataFrame, *, predictor: str = "distance", outcome: str = "increase",
                     strata: str = "task", n_perm: int = 10_000, seed: int = 0, p_tail: float = P_TAIL) -> AdviceCheck:
    """Spearman ρ of a predictor against measured loss increases, with a stratified permutation null.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per (merged adapter, task), with the ``predictor``, ``outcome`` and ``strata`` columns
        (``benchmarks/merge_losses.csv``: ``increase`` = merged loss − the task's own adapter's loss).
    predictor, outcome, strata : str
        Columns. The null permutes ``outcome`` within each stratum (tasks differ in their loss scales).
    n_perm : int
        Null draws (≥ 1,000 by the protocol).
    seed : int
    p_tail : float
        The protocol's one-sided level (PAPER.md: 0.00135, a Gaussian z of 3): ``"predicts"`` when the
        permutation p is at most this (resolvable with ``n_perm`` ≥ 1,000).

    Returns
    -------
    AdviceCheck
    """
    t = table[[predictor, outcome, strata]].dropna()
    x = t[predictor].to_numpy(dtype=float)
    y = t[outcome].to_numpy(dtype=float)
    groups = [np.flatnonzero(t[strata].to_numpy() == s) for s in dict.fromkeys(t[strata])]
    rho = _spearman(x, y)
    rng = np.random.default_rng(seed)
    # Spearman's ρ of x and a permuted y is the correlation of x's ranks with y's ranks permuted alike: rank once
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    perms = np.empty((n_perm, y.size), dtype=np.intp)
    perm = np.arange(y.size)
    for k in range(n_perm):
        for g in groups:
            perm[g] = g[rng.permutation(g.size)]
        perms[k] = perm
    null = (ry[perms] @ rx) / den if den > 0 else np.full(n_perm, np.nan)
    mean, sd = float(null.mean()), float(null.std(ddof=1))
    zz = (rho - mean) / sd if sd > 0 else float("nan")
    p = float((1 + np.sum(null >= rho)) / (1 + n_perm))
    per = {s: _spearman(x[g], y[g]) for s, g in zip(dict.fromkeys(t[strata]), groups) if g.size > 2}
    verdict = "predicts" if p <= p_tail else "weakly" if rho > 0 and p < 0.05 else "does not predict"
    return AdviceCheck(predictor, rho, mean, sd, zz, p, int(len(t)), per, verdict)
