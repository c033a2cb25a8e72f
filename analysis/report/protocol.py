"""How a finding is judged: the protocol of PAPER.md ("How a finding is judged"), its constants in one place.

Quoted from PAPER.md, fixed before looking at any data and never tuned to it:

- Null draws: Haar-random orthonormal bases of the same sizes (subspace claims) or random directions
  carrying the same ‖ΔW‖_F (norm claims); at least 1,000 draws (:data:`N_DRAWS`), or the closed form.
- **reproduces**: the paper's direction holds with z ≥ 3 (:data:`Z_MIN`) against the null in every module
  the claim covers (aggregate claims over many layers: in ≥ 90 % of them, :data:`AGGREGATE_SHARE`), and the
  effect, expressed as a ratio to its null, is at least half (:data:`RATIO_SHARE`) of the paper's own ratio.
- **partly**: z ≥ 3 in some but not all covered modules, or the effect holds but is below half the paper's
  ratio.
- **does not reproduce**: z < 3 in the main case, or the opposite direction.
- A derived quantity (the amplification factor) inherits its parent's verdict.

One reading this module has to add, stated here before any number is seen: for subspace claims (φ) the
null mean is max(i, j)/d and so depends on the width d, which is 12,288 in GPT-3 and 576 in SmolLM2; the
same geometry gives a 21× smaller ratio to the null here. The ratio rule is therefore applied to φ itself,
which is already a dimension-free fraction (of the smaller subspace that the other contains): the measured φ
must be at least half of the paper's φ. Norm claims (Table 7) use the ratio to the null's mean, as PAPER.md
says.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Z_MIN", "AGGREGATE_SHARE", "RATIO_SHARE", "N_DRAWS", "REPRODUCES", "PARTLY", "NOT_REPRODUCED",
           "NOT_COMPUTED", "HOLDS", "FAILS", "VERDICTS", "PROTOCOL_VERDICTS", "judge", "n_holding", "inherit"]

Z_MIN = 3.0            # "z ≥ 3 against the null"
AGGREGATE_SHARE = 0.9  # "aggregate claims over many layers: in ≥ 90 % of them"
RATIO_SHARE = 0.5      # "the effect, expressed as a ratio to its null, is at least half of the paper's own ratio"
N_DRAWS = 1000         # "at least 1,000 draws, or the closed form where one exists"

REPRODUCES, PARTLY, NOT_REPRODUCED = "reproduces", "partly", "does not reproduce"
NOT_COMPUTED = "not computed"              # the adapters a claim needs were not given
HOLDS, FAILS = "check holds", "check FAILS"  # closed-form checks of the computation, not claims of the paper
PROTOCOL_VERDICTS = (REPRODUCES, PARTLY, NOT_REPRODUCED)
VERDICTS = frozenset(PROTOCOL_VERDICTS + (NOT_COMPUTED, HOLDS, FAILS))


def n_holding(z):
    """Number of z-scores at or above :data:`Z_MIN` (NaN counts as not holding)."""
    z = np.asarray(z, dtype=float).ravel()
    return int(np.sum(np.nan_to_num(z, nan=-np.inf) >= Z_MIN))


def judge(z, *, aggregate=False, main=None, ratio=None, paper_ratio=None):
    """The verdict of one claim.

    Parameters
    ----------
    z : (n_modules,) array_like of float
        z-score of the effect against its null in each module the claim covers, signed so that the paper's
        direction is positive (NaN: not measurable, counts as not holding).
    aggregate : bool
        The claim is over many layers: :data:`AGGREGATE_SHARE` of the modules suffice.
    main : int, optional
        Index into ``z`` of the main case (the paper's own setting): if it does not hold, the claim does not
        reproduce. Without it, the claim does not reproduce when no module holds.
    ratio, paper_ratio : float, optional
        The effect as a ratio to its null (or φ itself, see the module docstring), ours and the paper's. When
        either is None (the paper gives no number) the ratio rule is not applied.

    Returns
    -------
    str
        :data:`REPRODUCES`, :data:`PARTLY` or :data:`NOT_REPRODUCED`; :data:`NOT_COMPUTED` for an empty ``z``.

    Examples
    --------
    >>> judge([5.0, 4.0])
    'reproduces'
    >>> judge([5.0, 1.0])
    'partly'
    >>> judge([5.0, 4.0], ratio=2.0, paper_ratio=16.0)
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


def inherit(parent_verdict):
    """A derived quantity's verdict: its parent's (PAPER.md: "A derived quantity inherits its parent's verdict")."""
    return parent_verdict
