"""Rank measures of a singular-value spectrum: how much rank an update really uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["SpectrumSummary", "spectrum_summary", "energy_retained", "relative_error", "rank_for_energy",
           "rank_for_error", "effective_rank", "stable_rank"]


def _check_s(s):
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"singular values must be a 1-D (k,) array, got shape {s.shape}")
    if s.size and (not np.isfinite(s).all() or (s < 0).any()):
        raise ValueError("singular values must be finite and non-negative")
    if s.size > 1 and (np.diff(s) > 1e-12 * s[0]).any():
        raise ValueError("singular values must be in descending order")
    return s


def energy_retained(s, *, total=None):
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


def relative_error(energy):
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


def rank_for_energy(s, energy):
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
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    e = energy_retained(s)
    if e.size == 0:
        return 0
    return int(min(np.searchsorted(e, energy - 1e-12) + 1, e.size))


def rank_for_error(s, rel_error):
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
        raise ValueError(f"rel_error must be in [0, 1), got {rel_error}")
    return rank_for_energy(s, 1.0 - rel_error ** 2)


def effective_rank(s):
    """Entropy effective rank exp(H(p)), p = s / Σ s (Roy & Vetterli, 2007).

    Returns 0 for a zero update; between 1 and len(s) otherwise.
    """
    s = _check_s(s)
    tot = s.sum()
    if tot == 0:
        return 0.0
    p = s[s > 0] / tot
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(s):
    """Stable rank ‖ΔW‖_F² / ‖ΔW‖_2² = Σ s² / s₁²; 0 for a zero update."""
    s = _check_s(s)
    if s.size == 0 or s[0] == 0:
        return 0.0
    return float(np.sum(s * s) / (s[0] * s[0]))


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

    def to_dict(self):
        return asdict(self)


def spectrum_summary(s) -> SpectrumSummary:
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
