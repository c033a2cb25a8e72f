"""One claim of the paper as a record (:class:`Finding`), and the generic test that makes one.

:func:`claim_modules` judges a claim over the modules it covers by :func:`analysis.report.protocol.assess`:
tail probabilities of each module's effect under its null (:mod:`analysis.metrics.tails`), a Holm correction over
the modules, the ratio to the paper's effect, and the power of the same test against the paper's effect planted
into draws of this geometry (the planted value plus the null's own spread: a draw from the null minus its mean;
power = the share of :data:`~analysis.report.protocol.N_DRAWS` planted draws the test calls "reproduces").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.metrics.nulls import z_score
from analysis.metrics.tails import median_null
from analysis.report.protocol import N_DRAWS, NOT_APPLICABLE, NOT_COMPUTED, P_TAIL, VERDICTS, assess, reproduces_rows

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike

    from analysis.metrics.tails import NullModel

__all__ = ["Finding", "claim_modules", "not_applicable", "fmt", "fmt_z", "fmt_p", "power_text"]


@dataclass(frozen=True)
class Finding:
    """One claim of the paper beside our numbers, its null, its power and the protocol's verdict.

    Attributes
    ----------
    id : str
        Stable key, e.g. ``"fig3_same_seed"``.
    figure : str
        The paper's figure or table, e.g. ``"Fig. 3"``.
    paper : str
        What the paper claims.
    measured : str
        What we measured, with the numbers.
    rule : str
        The test, in words.
    verdict : str
        One of :data:`VERDICTS`.
    effect : float
        The record's headline effect: the main case, the weakest covered module of a claim that must hold in
        every one, or the median over the covered modules of an all-layer claim.
    null_mean, null_sd : float
        The null of that same headline effect (for a median: the null of the median).
    z : float
        ``(effect − null_mean) / null_sd`` (checked when the record is made).
    n_modules, n_holding : int
        Covered modules, and those holding after the correction.
    conditions : str
        What bounds the claim: which adapters, layers and basis, training steps and share of an epoch, width,
        number of seeds or pairs, the attention layout.
    p_tail : float
        The headline effect's tail probability under its own null (closed form or Monte Carlo).
    power : float or None
        Share of planted draws of the paper's effect that reach "reproduces" (None: no number to plant).
    power_note : str
        How the paper's effect was planted, or why it could not be.
    correction : str
        The correction over modules (``"none"``, ``"Holm over n modules at 0.00135"``).
    n_exceed : int
        Covered modules with p ≤ 0.00135 before the correction.
    p_binomial : float
        The chance of that many raw exceedances among ``n_modules`` under the null.
    main_case : str
        The main case, named before it was computed (the paper's layer analogue, the paper's rank).
    null : str
        How the null was obtained.
    per_layer : tuple of dict
        Where a claim covers several modules: one row per module (``label, layer, effect, null_mean, null_sd,
        z, p_tail, holds``).
    """

    id: str
    figure: str
    paper: str
    measured: str
    rule: str
    verdict: str
    effect: float = math.nan
    null_mean: float = math.nan
    null_sd: float = math.nan
    z: float = math.nan
    n_modules: int = 0
    n_holding: int = 0
    conditions: str = ""
    p_tail: float = math.nan
    power: float | None = None
    power_note: str = ""
    correction: str = ""
    n_exceed: int = 0
    p_binomial: float = math.nan
    main_case: str = ""
    null: str = ""
    per_layer: tuple = field(default_factory=tuple)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"finding {self.id!r}: verdict {self.verdict!r} is not one of {sorted(VERDICTS)}")
        if all(math.isfinite(x) for x in (self.effect, self.null_mean, self.null_sd, self.z)) and self.null_sd > 0:
            want = (self.effect - self.null_mean) / self.null_sd
            if abs(want - self.z) > 1e-9 * max(1.0, abs(want)):
                raise ValueError(f"finding {self.id!r}: z = {self.z} is not (effect - null_mean) / null_sd = {want}")

    def to_dict(self) -> dict:
        """The record for ``findings.json`` (NaN becomes None)."""
        d = asdict(self)
        d["per_layer"] = [dict(r) for r in self.per_layer]
        return _json_ready(d)


def _json_ready(x):
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def fmt(x: float | None, nd: int = 2) -> str:
    """A number for a record's text: ``nd`` decimals, ``–`` for None / NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}"


def fmt_z(x: float | None) -> str:
    """A z-score for a record's text (signed, one decimal)."""
    return "–" if x is None or not math.isfinite(x) else f"{x:+.1f}"


def fmt_p(x: float | None) -> str:
    """A tail probability for a record's text (scientific below 0.01)."""
    return "–" if x is None or not math.isfinite(x) else (f"{x:.1e}" if x < 0.01 else f"{x:.3f}")


def power_text(power: float | None) -> str:
    """A power for a record's text (``unknown`` when no effect could be planted)."""
    return "unknown" if power is None else f"{power:.2f}"



def claim_modules(id: str, figure: str, paper: str, effects: ArrayLike, nulls: Sequence[NullModel], *,
                  conditions: str, rule: str, measured: str, labels: Sequence[str] | None = None,
                  layers: Sequence[int] | None = None, aggregate: bool = False, main: int | None = None,
                  plants: ArrayLike | None = None, paper_ratio: float | None = None,
                  ratio: Callable[[np.ndarray], float] | None = None, main_case: str = "", power_note: str = "",
                  seed: int = 0, n_power: int = N_DRAWS, unit: str = "modules") -> Finding:
    """Judge one claim: effects against their nulls in every covered module, with the power of the same test.

    Parameters
    ----------
    id, figure, paper : str
    effects : (n,) array_like of float
        The effect in each covered module (NaN: not measurable).
    nulls : sequence of NullModel
        Each module's null (:mod:`analysis.metrics.tails`).
    conditions, rule, measured : str
        The record's texts (``measured`` is completed with the counts).
    labels : list of str, optional
        A label per module (``"layer 15 q"``).
    layers : list of int, optional
        The layer of each module, for ``per_layer``.
    aggregate : bool
        Many layers: :data:`~analysis.report.protocol.AGGREGATE_SHARE` of the modules suffice; the headline effect is
        the median, tested against the null of the median.
    main : int, optional
        The main case's index: the headline effect, and the module that decides.
    plants : (n,) array_like of float, optional
        The paper's effect at each module (None: nothing to plant, power unknown).
    paper_ratio : float, optional
        The paper's effect for the ratio rule.
    ratio : callable, optional
        ``ratio(effects) -> float``: our effect for the ratio rule (default: none applied).
    main_case, power_note : str
    seed : int
    n_power : int
        Planted draws.
    unit : str
        What the covered cases are called in the text (``"modules"``, ``"cells"``).

    Returns
    -------
    Finding
    """
    eff = np.asarray(effects, dtype=float).ravel()
    n = eff.size
    labels = list(labels) if labels is not None else [str(i) for i in range(n)]
    if n == 0:
        return Finding(id, figure, paper, measured or "nothing to measure", rule, NOT_COMPUTED,
                       conditions=conditions, main_case=main_case)
    need = P_TAIL / n
    for i, nl in enumerate(nulls):
        nl.resolve(eff[i], need)
        if plants is not None:
            nl.resolve(float(np.asarray(plants, dtype=float).ravel()[i]), need)
    p = np.array([float(nl.tail(e)) if np.isfinite(e) else math.nan for nl, e in zip(nulls, eff)])
    p_low = np.array([float(nl.lower(e)) if np.isfinite(e) else math.nan for nl, e in zip(nulls, eff)])
    power = None
    if plants is not None:
        power = _power(nulls, np.asarray(plants, dtype=float).ravel(), aggregate=aggregate, main=main,
                       ratio=ratio, paper_ratio=paper_ratio, seed=seed, n=n_power)
    our_ratio = ratio(eff) if ratio is not None else None
    a = assess(p, p_low=p_low, aggregate=aggregate, main=main, ratio=our_ratio, paper_ratio=paper_ratio,
               power=power)
    # the headline: the main case, the median of an all-layer claim, else the weakest module
    if main is not None:
        h = main
        effect, m, s, p_head, null_text = eff[h], nulls[h].mean, nulls[h].sd, p[h], nulls[h].describe()
    elif aggregate and n > 1:
        med = median_null(nulls, n=N_DRAWS, seed=seed + 11)
        effect = float(np.nanmedian(eff))
        m, s, p_head = med.mean, med.sd, float(med.tail(effect))
        null_text = f"median over {n} {unit}; each: {nulls[0].describe()}"
    else:
        h = int(np.nanargmax(np.where(np.isfinite(p), p, np.inf))) if np.isfinite(p).any() else 0
        effect, m, s, p_head, null_text = eff[h], nulls[h].mean, nulls[h].sd, p[h], nulls[h].describe()
    z = z_score(effect, m, s)
    rows = tuple({"label": lab, "layer": None if layers is None else layers[i], "effect": float(eff[i]),
                  "null_mean": float(nulls[i].mean), "null_sd": float(nulls[i].sd),
                  "z": z_score(eff[i], nulls[i].mean, nulls[i].sd), "p_tail": float(p[i]), "holds": bool(a.holds[i])}
                 for i, lab in enumerate(labels)) if n > 1 else ()
    meas = measured
    if n > 1:
        meas += (f" — {a.n_holding} of {n} {unit} hold after the correction ({a.n_exceed} with p ≤ {P_TAIL:.5f} "
                 f"before it; chance of that many: {fmt_p(a.p_binomial)})")
    meas += f"; power against the paper's effect: {power_text(power)}"
    return Finding(id, figure, paper, meas, rule, a.verdict, float(effect), float(m), float(s), z, n, a.n_holding,
                   conditions, float(p_head), power, power_note, a.correction, a.n_exceed, a.p_binomial, main_case,
                   null_text, rows)


def _power(nulls, plants, *, aggregate, main, ratio, paper_ratio, seed, n):
    """Share of planted draws (paper's effect + the null's own spread) that the same test calls "reproduces"."""
    rng = np.random.default_rng(seed + 101)
    draws = np.stack([np.asarray(nl.sample(n, rng), dtype=float) - nl.mean + pl for nl, pl in zip(nulls, plants)],
                     axis=1)  # (n, modules)
    pv = np.empty_like(draws)
    columns: dict[int, list[int]] = {}  # modules sharing one null object: one vectorised tail for all of them
    for i, nl in enumerate(nulls):
        columns.setdefault(id(nl), []).append(i)
    for cols in columns.values():
        pv[:, cols] = np.asarray(nulls[cols[0]].tail(draws[:, cols]), dtype=float).reshape(n, len(cols))
    ratios = None if ratio is None else np.array([ratio(row) for row in draws], dtype=float)
    hits = reproduces_rows(pv, aggregate=aggregate, main=main, ratio=ratios, paper_ratio=paper_ratio)
    return float(hits.sum()) / n


def not_applicable(id: str, figure: str, paper: str, reason: str, *, conditions: str = "") -> Finding:
    """A claim the adapters cannot speak to (no module of the role it is about), with the reason."""
    return Finding(id, figure, paper, reason, "—", NOT_APPLICABLE, conditions=conditions)
