"""Rank measures of a singular-value spectrum: how much rank an update really uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError

if TYPE_CHECKING:
    from typing import Any

    from numpy.typing import ArrayLike

__all__ = ["SpectrumSummary", "spectrum_summary", "energy_retained", "relative_error", "rank_for_energy",
           "rank_for_error", "effective_rank", "stable_rank", "NEAR_TIE_GAP", "near_tie", "top_ratio"]

#: Top two singular values within this gap, relative to σ₁, count as a near tie: the top singular direction
#: is then ill-defined (any rotation inside the top-2 plane is almost as good), so φ(1, 1) between two
#: updates may dip while their top-2 subspaces agree. A marker, not a verdict.
NEAR_TIE_GAP = 0.1


def _check_s(s: ArrayLike) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1:
        raise InputError(f"singular values must be a 1-D (k,) array, got shape {s.shape}")
    if s.size and (not np.isfinite(s).all() or (s < 0).any()):
        raise InputError("singular values must be finite and non-negative")
    if s.size > 1 and (np.diff(s) > 1e-12 * s[0]).any():
        raise InputError("singular values must be in descending order")
    return s


def energy_retained(s: ArrayLike, *, total: float | None = None) -> np.ndarray:
    """Fraction of ‖ΔW‖_F² kept by the best rank-k approximation, for k = 1 … len(s).

    Parameters
    ----------
    s : (k,) ndarray
        Singular values, descending.
    total : float, optional
        ‖ΔW‖_F², when ``s`` holds only the top singular values (default ``sum(s²)``).

    Returns
    -------
    (k,) ndarray of float64
        ``cumsum(s²) / total``; empty for a zero update.
    """
    s = _check_s(s)
    tot = float(np.sum(s * s)) if total is None else float(total)
    if tot == 0:
        return np.zeros(0)
    return np.cumsum(s * s) / tot


def relative_error(energy: float | np.ndarray) -> float | np.ndarray:
    """Relative Frobenius error of the truncation that keeps ``energy``: ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = √(1 − energy).

    Parameters
    ----------
    energy : float or ndarray
        Fractions of ‖ΔW‖_F² kept (rounding above 1 is clipped).

    Returns
    -------
    float or ndarray
    """
    return np.sqrt(np.clip(1.0 - np.asarray(energy, dtype=np.float64), 0.0, None))[()]


def rank_for_energy(s: ArrayLike, energy: float) -> int:
    """Smallest k whose best rank-k approximation keeps at least ``energy`` of ‖ΔW‖_F².

    Parameters
    ----------
    s : (k,) ndarray
    energy : float in (0, 1]

    Returns
    -------
    int
        0 for a zero update.
    """
    if not 0 < energy <= 1:
        raise InputError(f"energy must be in (0, 1], got {energy}")
    e = energy_retained(s)
    if e.size == 0:
        return 0
    return int(min(np.searchsorted(e, energy - 1e-12) + 1, e.size))


def rank_for_error(s: ArrayLike, rel_error: float) -> int:
    """Smallest k with ‖ΔW − ΔW_k‖_F ≤ rel_error · ‖ΔW‖_F (Eckart–Young).

    Parameters
    ----------
    s : (k,) ndarray
    rel_error : float in [0, 1)

    Returns
    -------
    int
    """
    if not 0 <= rel_error < 1:
        raise InputError(f"rel_error must be in [0, 1), got {rel_error}")
    return rank_for_energy(s, 1.0 - rel_error ** 2)


def effective_rank(s: ArrayLike) -> float:
    """Entropy effective rank exp(H(p)), p = s / Σ s (Roy & Vetterli, 2007).

    Parameters
    ----------
    s : (k,) array_like
        Singular values, non-negative.

    Returns
    -------
    float
        0 for a zero update; between 1 and len(s) otherwise.
    """
    s = _check_s(s)
    tot = s.sum()
    if tot == 0:
        return 0.0
    p = s[s > 0] / tot
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(s: ArrayLike) -> float:
    """Stable rank ‖ΔW‖_F² / ‖ΔW‖_2² = Σ s² / s₁²; 0 for a zero update."""
    s = _check_s(s)
    if s.size == 0 or s[0] == 0:
        return 0.0
    return float(np.sum(s * s) / (s[0] * s[0]))


def top_ratio(sigma: ArrayLike) -> float:
    """σ₂ / σ₁ of a spectrum: how close its top two singular values are.

    Parameters
    ----------
    sigma : (k,) ndarray
        Singular values, descending (any positive scale: the ratio does not see it).

    Returns
    -------
    float
        In [0, 1]; NaN when there is no second value or σ₁ = 0 (a zero update).

    Examples
    --------
    >>> top_ratio([2.0, 1.0, 0.5])
    0.5
    """
    s = _check_s(sigma)
    if s.size < 2 or s[0] == 0:
        return float("nan")
    return float(min(s[1] / s[0], 1.0))


def near_tie(sigma: ArrayLike, *, gap: float = NEAR_TIE_GAP) -> bool:
    """Whether the top two singular values nearly tie: (σ₁ − σ₂) / σ₁ < ``gap``.

    When they do, the top singular direction is ill-defined: a small perturbation rotates it inside the
    top-2 plane, so φ(1, 1) against another update can be anywhere in [0, 1] while the top-2 subspaces
    agree. Mark such modules; do not read their φ(1, 1) alone.

    Parameters
    ----------
    sigma : (k,) ndarray
        Singular values, descending (``LowRank.side_singular_values(side)``, ``LowRank.svd().S``).
    gap : float in (0, 1)
        Relative gap below which the two count as tied (default :data:`NEAR_TIE_GAP`, 10 %).

    Returns
    -------
    bool
        False with fewer than two values or a zero spectrum (nothing to tie).

    Examples
    --------
    >>> near_tie([1.0, 0.95, 0.1])   # σ₂ / σ₁ = 0.95: within 10 %
    True
    >>> near_tie([1.0, 0.85])
    False
    >>> near_tie([1.0, 0.85], gap=0.2)
    True
    >>> near_tie([3.0])              # rank 1: one direction, no tie
    False
    """
    if not 0 < gap < 1:
        raise InputError(f"gap must be a relative gap in (0, 1), got {gap!r}")
    s = _check_s(sigma)
    if s.size < 2 or s[0] == 0:
        return False
    return bool((s[0] - s[1]) / s[0] < gap)


@dataclass(frozen=True)
class SpectrumSummary:
    """Rank measures of one update's spectrum.

    Attributes
    ----------
    rank : int
        Numerical rank.
    sigma1 : float
        Largest singular value.
    fro : float
        ‖ΔW‖_F.
    effective_rank, stable_rank : float
    rank90, rank99 : int
        Smallest k keeping 90 % / 99 % of ‖ΔW‖_F².
    top1_energy : float
        Share of ‖ΔW‖_F² in the top direction.
    """

    rank: int
    sigma1: float
    fro: float
    effective_rank: float
    stable_rank: float
    rank90: int
    rank99: int
    top1_energy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spectrum_summary(s: ArrayLike) -> SpectrumSummary:
    """All rank measures of a spectrum at once.

    Parameters
    ----------
    s : (k,) ndarray
        Singular values, descending (e.g. ``LowRank.svd().S``).

    Returns
    -------
    SpectrumSummary

    Examples
    --------
    >>> spectrum_summary([2.0, 1.0, 0.0]).rank90
    2
    """
    s = _check_s(s)
    e = energy_retained(s)
    return SpectrumSummary(
        rank=int(np.count_nonzero(s > 0)), sigma1=float(s[0]) if s.size else 0.0,
        fro=float(np.sqrt(np.sum(s * s))), effective_rank=effective_rank(s),
        stable_rank=stable_rank(s), rank90=rank_for_energy(s, 0.9) if e.size else 0,
        rank99=rank_for_energy(s, 0.99) if e.size else 0,
        top1_energy=float(e[0]) if e.size else 0.0)
