"""How a finding is judged: the protocol of PAPER.md ("How a finding is judged"), its constants in one place.

History, as PAPER.md tells it. The first verdicts of this report were computed on 2026-11-29. The rules below were
written down on 2026-12-02, *after* those first numbers were known (so they were not fixed before any number was
seen); they were never tuned afterwards. An independent audit then showed that a "does not reproduce" could come
from a test that could not have seen the paper's effect at all, and PAPER.md was amended on 2026-12-06 (power,
tails, many modules, main case and all layers, conditions). The amendment adds rules; the earlier ones stay.

Rules of 2026-12-02 (quoted from PAPER.md):

- Null draws: Haar-random orthonormal bases of the same sizes (subspace claims) or random directions
  carrying the same ‖ΔW‖_F (norm claims); at least 1,000 draws (:data:`N_DRAWS`), or the closed form.
- **reproduces**: the paper's direction holds with z ≥ 3 (:data:`Z_MIN`) against the null in every module
  the claim covers (aggregate claims over many layers: in ≥ 90 % of them, :data:`AGGREGATE_SHARE`), and the
  effect, expressed as a ratio to its null, is at least half (:data:`RATIO_SHARE`) of the paper's own ratio.
- **partly**: z ≥ 3 in some but not all covered modules, or the effect holds but is below half the paper's ratio.
- **does not reproduce**: z < 3 in the main case, or the opposite direction.
- A derived quantity (the amplification factor) inherits its parent's verdict.

Amendment of 2026-12-06 (quoted in substance from PAPER.md):

- **Power.** The paper's own effect, expressed without the width, is planted into draws of this model's geometry and
  the same test is run on them; power = the share of planted draws that reach "reproduces". A claim whose main case
  does not hold while its power is below :data:`POWER_MIN` is **inconclusive**; one whose effect lies significantly
  in the opposite direction stays "does not reproduce". How each claim's effect is made width-free is stated where
  the claim is built (:mod:`analysis.report.findings`): φ claims plant the paper's φ itself (φ is already a
  fraction); Table 7 plants the paper's share of ‖W‖_F captured by ΔW's top-r directions (0.32 / 61.95 at r = 4,
  1.90 / 61.95 at r = 64), times this W's ‖W‖_F, with the spread of this geometry's null; claims with no number in
  the paper (Fig. 4's q vs v) have no planted effect, so their power is unknown and the record says which
  difference the test could detect with power 0.8.
- **Tails.** "z ≥ 3" means the tail probability of a Gaussian z = 3 (:data:`P_TAIL`, 0.00135) taken from the null
  itself: the closed form where one exists (φ(1, 1) ~ Beta(1/2, (d − 1)/2)), else a gamma distribution matched to
  the mean and variance of ≥ 1,000 draws (:func:`gamma_tail`; a nonnegative statistic's right tail), so that tails
  far beyond the draws' resolution are not guessed from a Gaussian.
- **Many modules.** A claim covering several modules counts a module as holding only after a Holm correction at
  level :data:`P_TAIL` over the modules it covers (:func:`holm`); "partly" needs modules holding after the
  correction, or more raw exceedances than chance predicts (a binomial test at the same level,
  :func:`binomial_excess`), so that a few chance exceedances among many modules never read as "partly".
- **Main case and all layers.** Each claim names its main case before it is computed (the paper's layer analogue:
  the middle layer of the main stack, the paper's rank) and, where the paper's layer is one of many, an all-layer
  claim beside it; Table 7 and the amplification are judged at every layer too.
- **Conditions.** Every record names what bounds it: training steps and the fraction of an epoch, the width d, the
  number of seeds or pairs, the attention layout.

One reading this module adds (2026-12-02): for φ claims the null mean is max(i, j)/d and so depends on the width, so
the ratio rule is applied to φ itself (the measured φ must be at least half of the paper's φ); norm claims
(Table 7) use the ratio to the null's mean, as PAPER.md says.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["Z_MIN", "P_TAIL", "AGGREGATE_SHARE", "RATIO_SHARE", "N_DRAWS", "POWER_MIN", "HISTORY",
           "REPRODUCES", "PARTLY", "NOT_REPRODUCED", "INCONCLUSIVE", "NOT_APPLICABLE", "NOT_COMPUTED", "HOLDS",
           "FAILS", "VERDICTS", "PROTOCOL_VERDICTS", "Assessment", "assess", "reproduces", "reproduces_rows", "judge", "holm", "binomial_excess",
           "gamma_tail", "n_holding", "inherit"]

Z_MIN = 3.0            # "z ≥ 3 against the null"
P_TAIL = 0.0013498980316301035  # the upper tail of a Gaussian at z = 3: what "z ≥ 3" means for a skewed null
AGGREGATE_SHARE = 0.9  # "aggregate claims over many layers: in ≥ 90 % of them"
RATIO_SHARE = 0.5      # "the effect, expressed as a ratio to its null, is at least half of the paper's own ratio"
N_DRAWS = 1000         # "at least 1,000 draws, or the closed form where one exists"
POWER_MIN = 0.8        # amendment: below this power a failed test is "inconclusive"

#: The protocol's history in one line, for the report's pages (PAPER.md).
HISTORY = ("first verdicts computed 2026-11-29; rules written 2026-12-02, after those numbers were known, and not "
           "tuned since; amended 2026-12-06 after an audit (power, tails, Holm correction over modules, main case "
           "and all layers, conditions)")

REPRODUCES, PARTLY, NOT_REPRODUCED = "reproduces", "partly", "does not reproduce"
INCONCLUSIVE = "inconclusive"              # the main case fails but the test could not have seen the paper's effect
NOT_APPLICABLE = "not applicable"          # the adapters have no module the claim is about (e.g. a fused qkv)
NOT_COMPUTED = "not computed"              # the adapters a claim needs were not given
HOLDS, FAILS = "check holds", "check FAILS"  # closed-form checks of the computation, not claims of the paper
PROTOCOL_VERDICTS = (REPRODUCES, PARTLY, NOT_REPRODUCED, INCONCLUSIVE)
VERDICTS = frozenset(PROTOCOL_VERDICTS + (NOT_APPLICABLE, NOT_COMPUTED, HOLDS, FAILS))


def holm(p: ArrayLike, *, level: float = P_TAIL) -> np.ndarray:
    """Which p-values are significant after a Holm step-down correction at ``level`` (family-wise).

    Parameters
    ----------
    p : (n,) array_like of float
        One-sided p-values (NaN: not measurable, never significant).
    level : float

    Returns
    -------
    (n,) ndarray of bool

    Examples
    --------
    >>> holm([0.0001, 0.0002, 0.5], level=0.001).tolist()
    [True, True, False]
    >>> holm([0.0005, 0.0006], level=0.001).tolist()  # the first step compares 0.0005 with 0.001 / 2
    [True, True]
    >>> holm([0.0006, 0.0006], level=0.001).tolist()
    [False, False]
    """
    return _holm_rows(np.asarray(p, dtype=float).ravel()[None, :], level)[0]


def _holm_rows(p, level):
    """:func:`holm` of each row of ``p`` (n_draws, m): the sorted p against level / (m − rank), a module holding
    up to the first failure."""
    q = np.where(np.isfinite(p), p, np.inf)
    m = q.shape[1]
    order = np.argsort(q, axis=1, kind="stable")
    passes = np.take_along_axis(q, order, axis=1) <= level / (m - np.arange(m)) * (1 + 1e-12)
    holds = np.zeros(q.shape, dtype=bool)
    np.put_along_axis(holds, order, np.cumprod(passes, axis=1).astype(bool), axis=1)
    return holds


def binomial_excess(p: ArrayLike, *, level: float = P_TAIL) -> tuple[int, float]:
    """More raw exceedances (p ≤ ``level``) than chance predicts? The binomial upper tail P(X ≥ count).

    Parameters
    ----------
    p : (n,) array_like of float
    level : float

    Returns
    -------
    count : int
        Modules with p ≤ ``level`` (uncorrected).
    p_binomial : float
        P(Binomial(n, level) ≥ count); 1.0 when count is 0.
    """
    from scipy.stats import binom

    p = np.asarray(p, dtype=float).ravel()
    count = int(np.sum(np.nan_to_num(p, nan=np.inf) <= level))
    if count == 0:
        return 0, 1.0
    return count, float(binom.sf(count - 1, p.size, level))


def gamma_tail(x: float, mean: float, sd: float) -> float:
    """Upper tail P(X ≥ x) of a gamma distribution with this mean and sd (the null of a nonnegative statistic).

    Parameters
    ----------
    x, mean, sd : float

    Returns
    -------
    float
        NaN when the null has no spread or a nonpositive mean.

    Examples
    --------
    >>> round(gamma_tail(1.0, 1.0, 1.0), 4)  # exponential(1): P(X >= 1) = e^-1
    0.3679
    """
    from scipy.stats import gamma

    if not (np.isfinite(x) and np.isfinite(mean) and np.isfinite(sd)) or sd <= 0 or mean <= 0:
        return math.nan
    k = (mean / sd) ** 2
    return float(gamma.sf(x, k, scale=sd * sd / mean))


class Assessment:
    """The outcome of one claim's test (:func:`assess`): per-module holding, counts and the verdict.

    Attributes
    ----------
    verdict : str
    holds : (n,) ndarray of bool
        Modules holding after the correction.
    n_exceed : int
        Modules with p ≤ :data:`P_TAIL` before the correction.
    p_binomial : float
        Chance of that many raw exceedances (:func:`binomial_excess`).
    correction : str
        ``"none"`` (one module) or ``"Holm over n modules"``.
    """

    def __init__(self, verdict: str, holds: np.ndarray, n_exceed: int, p_binomial: float, correction: str) -> None:
        self.verdict, self.holds, self.n_exceed = verdict, holds, n_exceed
        self.p_binomial, self.correction = p_binomial, correction

    @property
    def n_holding(self) -> int:
        return int(self.holds.sum())


def assess(p: ArrayLike, *, p_low: ArrayLike | None = None, aggregate: bool = False, main: int | None = None,
           ratio: float | None = None, paper_ratio: float | None = None, power: float | None = None) -> Assessment:
    """Judge one claim by the amended protocol.

    Parameters
    ----------
    p : (n_modules,) array_like of float
        One-sided p-value of the effect in the paper's direction, per covered module (NaN: not measurable).
    p_low : (n_modules,) array_like of float, optional
        One-sided p-value in the opposite direction; the claim is refuted ("does not reproduce", whatever the
        power and however many other modules hold) when the main case (or, without one, the module of median
        ``p_low``) has ``p_low ≤ P_TAIL``. Default: never refuted that way.
    aggregate : bool
        A claim over many layers: :data:`AGGREGATE_SHARE` of the modules suffice.
    main : int, optional
        Index of the main case among the modules: when it does not hold, the claim does not reproduce (or is
        inconclusive at low power).
    ratio, paper_ratio : float, optional
        The effect as a ratio to its null (or φ itself), ours and the paper's; not applied when either is None.
    power : float or None
        The test's power against the paper's effect (None: unknown, no planted effect exists).

    Returns
    -------
    Assessment
    """
    p = np.asarray(p, dtype=float).ravel()
    if p.size == 0:
        return Assessment(NOT_COMPUTED, np.zeros(0, bool), 0, 1.0, "none")
    holds = _holding(p[None, :])[0]
    n_exceed, p_bin = binomial_excess(p)
    correction = "none" if p.size == 1 else f"Holm over {p.size} modules at {P_TAIL:.5f}"
    if p_low is not None:
        pl = np.asarray(p_low, dtype=float).ravel()
        at = main if main is not None else int(np.argsort(np.nan_to_num(pl, nan=1.0))[pl.size // 2])
        refuted = bool(np.isfinite(pl[at]) and pl[at] <= P_TAIL)
    else:
        refuted = False
    if main is not None and not holds[main]:  # the main case decides
        verdict = _failed(refuted, power)
    elif _enough(holds[None, :], aggregate=aggregate, ratio=None if ratio is None else [ratio],
                 paper_ratio=paper_ratio)[0]:
        verdict = REPRODUCES
    elif refuted:  # the typical module lies significantly the other way: a few that hold do not make it "partly"
        verdict = NOT_REPRODUCED
    elif holds.any() or (p.size > 1 and p_bin <= P_TAIL):
        verdict = PARTLY
    else:
        verdict = _failed(refuted, power)
    return Assessment(verdict, holds, n_exceed, p_bin, correction)


def reproduces(p: ArrayLike, *, aggregate: bool = False, main: int | None = None, ratio: float | None = None,
               paper_ratio: float | None = None) -> bool:
    """Whether :func:`assess` would say "reproduces" (without the counts it also reports): the power's inner test.

    Parameters
    ----------
    p : (n_modules,) array_like of float
    aggregate, main, ratio, paper_ratio
        As in :func:`assess`.

    Returns
    -------
    bool
    """
    return bool(reproduces_rows(np.asarray(p, dtype=float).ravel()[None, :], aggregate=aggregate, main=main,
                                ratio=None if ratio is None else [ratio], paper_ratio=paper_ratio)[0])


def reproduces_rows(p: ArrayLike, *, aggregate: bool = False, main: int | None = None,
                    ratio: ArrayLike | None = None, paper_ratio: float | None = None) -> np.ndarray:
    """:func:`reproduces` for many draws at once (each row one draw of every module's p), vectorised.

    Parameters
    ----------
    p : (n_draws, n_modules) array_like of float
    aggregate, main, paper_ratio
        As in :func:`assess`.
    ratio : (n_draws,) array_like of float, optional
        Our effect's ratio in each draw.

    Returns
    -------
    (n_draws,) ndarray of bool
    """
    p = np.asarray(p, dtype=float)
    if p.shape[1] == 0:
        return np.zeros(p.shape[0], dtype=bool)
    holds = _holding(p)
    ok = _enough(holds, aggregate=aggregate, ratio=ratio, paper_ratio=paper_ratio)
    return ok & holds[:, main] if main is not None else ok


def _holding(p):
    """Modules holding, per row of ``p`` (n_draws, m): p ≤ P_TAIL after the Holm correction over them (one
    module: uncorrected)."""
    return _holm_rows(p, P_TAIL) if p.shape[1] > 1 else np.nan_to_num(p, nan=np.inf) <= P_TAIL


def _enough(holds, *, aggregate, ratio, paper_ratio):
    """Per row: enough modules hold (all, or AGGREGATE_SHARE of them) and the effect is big enough against the
    paper's (``ratio``: one per row, or None)."""
    m = holds.shape[1]
    ok = holds.sum(axis=1) >= (math.ceil(AGGREGATE_SHARE * m - 1e-9) if aggregate else m)
    if ratio is not None and paper_ratio is not None:
        ok &= np.asarray(ratio, dtype=float) >= RATIO_SHARE * paper_ratio
    return ok


def _failed(refuted, power):
    if refuted:
        return NOT_REPRODUCED
    if power is None or not math.isfinite(power) or power < POWER_MIN:
        return INCONCLUSIVE
    return NOT_REPRODUCED


def n_holding(z: ArrayLike) -> int:
    """Number of z-scores at or above :data:`Z_MIN` (NaN counts as not holding)."""
    z = np.asarray(z, dtype=float).ravel()
    return int(np.sum(np.nan_to_num(z, nan=-np.inf) >= Z_MIN))


def judge(z: ArrayLike, *, aggregate: bool = False, main: int | None = None, ratio: float | None = None,
          paper_ratio: float | None = None) -> str:
    """The rules of 2026-12-02 alone, on Gaussian z-scores (no power, no correction): kept for comparison.

    Parameters
    ----------
    z : (n_modules,) array_like of float
    aggregate, main, ratio, paper_ratio
        As in :func:`assess`.

    Returns
    -------
    str

    Examples
    --------
    >>> judge([5.0, 4.0])
    'reproduces'
    >>> judge([5.0, 1.0])
    'partly'
    >>> judge([1.0, 5.0], main=0)
    'does not reproduce'
    """
    z = np.asarray(z, dtype=float).ravel()
    if z.size == 0:
        return NOT_COMPUTED
    held = np.nan_to_num(z, nan=-np.inf) >= Z_MIN
    if not (held[main] if main is not None else held.any()):
        return NOT_REPRODUCED
    need = math.ceil(AGGREGATE_SHARE * z.size - 1e-9) if aggregate else z.size
    big = ratio is None or paper_ratio is None or ratio >= RATIO_SHARE * paper_ratio
    return REPRODUCES if held.sum() >= need and big else PARTLY


def inherit(parent_verdict: str) -> str:
    """A derived quantity's verdict: its parent's (PAPER.md: "A derived quantity inherits its parent's verdict")."""
    return parent_verdict
