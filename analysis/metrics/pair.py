"""Subspace similarity between the same module of two adapters (Section 7.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.lowrank import LowRank
from analysis.core.sides import FACTOR_SIDES
from analysis.errors import InputError
from analysis.metrics.similarity import basis_columns, phi_and_angles_many, random_null, random_null_std
from analysis.metrics.stability import PrefixStability, stability_from_overlap

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

__all__ = ["SIDES", "TIE_RTOL", "SimilarityResult", "module_similarity", "module_similarities", "near_tied_cuts",
           "gaussian_similarity"]

SIDES = FACTOR_SIDES  # the bases of a LoRA update (analysis.core.sides)
_FACTOR = {"A": "A", "input": "A", "B": "B", "output": "B"}  # the factor whose span a side lives in


#: Singular values closer than this, relative to σ₁, count as tied: equal to within the precision of the
#: float64 factorisation, so that the order inside them (and a cut between them) is not defined.
TIE_RTOL = 1e-9


def near_tied_cuts(s: np.ndarray, *, rtol: float = TIE_RTOL) -> tuple[int, ...]:
    """Prefix cuts that fall inside near-tied singular values.

    A prefix of i singular vectors is not rotation-invariant when
    σ_i and σ_{i+1} are (nearly) equal: any rotation inside their joint space
    is as valid, and φ at that cut is arbitrary.

    Parameters
    ----------
    s : (k,) ndarray
        Singular values in descending order.
    rtol : float
        Gap below ``rtol · σ₁`` counts as a tie.

    Returns
    -------
    tuple of int
        The cuts i (1 ≤ i < k) with σ_i − σ_{i+1} ≤ rtol · σ₁.
    """
    s = np.asarray(s, dtype=np.float64)
    if s.size < 2 or not s[0] > 0:
        return ()
    gaps = s[:-1] - s[1:]
    return tuple(int(i) + 1 for i in np.flatnonzero(gaps <= rtol * s[0]))


@dataclass(frozen=True)
class SimilarityResult:
    """φ grid between one module of two adapters.

    Attributes
    ----------
    name : str
        Module name.
    side : str
        Which basis was compared (see :data:`SIDES`).
    phi : (k1, k2) ndarray of float64
        φ(i, j) at ``[i-1, j-1]``; empty when an update is zero.
    null : (k1, k2) ndarray of float64
        E[φ] for random subspaces, max(i, j) / d.
    null_std : (k1, k2) ndarray of float64
        Its standard deviation (large-d approximation).
    angles : (min(k1, k2),) ndarray of float64
        Principal angles between the full spans, radians, ascending.
    d : int
        Dimension of the space the bases live in.
    r1, r2 : int
        Stored ranks.
    zero1, zero2 : bool
        True when that adapter's ΔW is exactly zero (e.g. untrained, B = 0).
    ties1, ties2 : tuple of int
        Prefix cuts inside near-tied singular values (φ there is not
        rotation-invariant).
    overlap : (k1, k2) ndarray of float64
        U1ᵀ U2, the cosines between the two bases' columns (φ is made of
        their squares); empty when an update is zero.
    """

    name: str
    side: str
    phi: np.ndarray
    null: np.ndarray
    null_std: np.ndarray
    angles: np.ndarray
    d: int
    r1: int
    r2: int
    zero1: bool = False
    zero2: bool = False
    ties1: tuple = field(default_factory=tuple)
    ties2: tuple = field(default_factory=tuple)
    overlap: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def zero(self) -> bool:
        """True if either update is zero (no similarity is defined)."""
        return self.zero1 or self.zero2

    @property
    def phi11(self) -> float | None:
        """φ(1, 1): squared cosine between the two top directions; None if zero."""
        if self.zero or self.phi.size == 0:
            return None
        return float(self.phi[0, 0])

    def stability(self, *, n_std: float = 3.0) -> PrefixStability:
        """Principal cosines between the two top-i prefixes, counted against random subspaces.

        See :func:`analysis.metrics.stability.prefix_stability`.
        """
        return stability_from_overlap(self.overlap, self.d, n_std)

    def shared_dims(self, *, n_std: float = 3.0) -> int:
        """Number of leading directions the two updates share beyond chance.

        The largest count, over prefixes i, of principal cosines² between the
        top-i prefixes above what two random i-dimensional subspaces of R^d
        reach (mean + n_std · sd of their largest cosine²); 0 when an update
        is zero. Not the run of φ(i, i) above its null: φ(i, i) averages over
        the prefix, so a single shared top direction keeps it above the null
        up to i ≈ d / (n_std √2).
        """
        if self.zero or self.overlap.size == 0:
            return 0
        return self.stability(n_std=n_std).shared

    def to_frame(self) -> pd.DataFrame:
        """Tidy DataFrame: one row per (i, j) with φ, the null and its sd."""
        import pandas as pd

        k1, k2 = self.phi.shape
        i, j = np.meshgrid(np.arange(1, k1 + 1), np.arange(1, k2 + 1), indexing="ij")
        return pd.DataFrame({"name": self.name, "side": self.side, "i": i.ravel(), "j": j.ravel(),
                             "phi": self.phi.ravel(), "null": self.null.ravel(),
                             "null_std": self.null_std.ravel()})


def module_similarity(lr1: LowRank, lr2: LowRank, *, side: str = "A", tie_rtol: float = TIE_RTOL,
                      name: str | None = None) -> SimilarityResult:
    """φ(i, j) for every prefix pair between the same module of two adapters.

    Parameters
    ----------
    lr1, lr2 : LowRank
        Two updates of the same base module (same (d_out, d_in)).
    side : {"A", "B", "input", "output"}
        ``"A"``: the paper's basis, right-singular vectors of lora_A ordered by
        A's singular values; ``"B"``: left-singular vectors of lora_B;
        ``"input"`` / ``"output"``: ΔW's right / left singular vectors.
    tie_rtol : float
        Relative gap under which neighbouring singular values count as tied.
    name : str, optional
        Defaults to ``lr1.name``.

    Returns
    -------
    SimilarityResult
    """
    return module_similarities(lr1, lr2, sides=(side,), tie_rtol=tie_rtol, name=name)[side]


def module_similarities(lr1: LowRank, lr2: LowRank, *, sides: Sequence[str] = SIDES, tie_rtol: float = TIE_RTOL,
                        name: str | None = None) -> dict[str, SimilarityResult]:
    """:func:`module_similarity` on several sides at once: one pass over each factor's basis they share.

    The input side and lora_A's share the span of Aᵀ, the output side and lora_B's that of B, so their
    products with the larger adapter's basis are taken together (:func:`~analysis.metrics.similarity.
    phi_and_angles_many`); the results are those of :func:`module_similarity` on each side.

    Parameters
    ----------
    lr1, lr2 : LowRank
    sides : sequence of {"A", "B", "input", "output"}
    tie_rtol : float
    name : str, optional

    Returns
    -------
    dict[str, SimilarityResult]
        One per side, in the order given.
    """
    for side in sides:
        if side not in SIDES:
            raise InputError(f"side must be one of {SIDES}, got {side!r}")
    if lr1.shape != lr2.shape:
        raise InputError(
            f"module {name or lr1.name!r}: ΔW shapes differ, {lr1.shape} vs {lr2.shape}; "
            "compare the same module of adapters on the same base model")
    # the larger adapter's factors meet the smaller one's Q in their own Gram: one pass over each
    lo, hi = (lr1, lr2) if lr1.r <= lr2.r else (lr2, lr1)
    known = {}
    if not lo.is_zero:
        for which, side in {_FACTOR[s]: s for s in reversed(sides)}.items():
            Q = lo.basis_parts(side)[0]  # (d, k_lo): lo's bases in this span are Q Y (or Q itself)
            if Q.shape[1]:
                Q_hi, cross = hi.factor_cross(which, Q)  # (d, r_hi), (k_lo, r_hi) = Qᵀ Q_hi
                known[(id(Q), id(Q_hi))] = cross
    zero1, zero2 = lr1.is_zero, lr2.is_zero
    # the bases as (Q, Y) products: only the smaller one is formed (O(d r1 r2), not O(d r²))
    parts = {}
    for side in sides:
        p1 = None if zero1 else lr1.basis_parts(side)
        p2 = None if zero2 else lr2.basis_parts(side)
        if not (p1 is None or p2 is None or 0 in (basis_columns(p1), basis_columns(p2))):
            parts[side] = (p1, p2)
    done = dict(zip(parts, phi_and_angles_many(list(parts.values()), known=known)))
    out = {}
    for side in sides:
        d = lr1.shape[1] if side in ("A", "input") else lr1.shape[0]
        if side in done:
            phi, angles, overlap = done[side]
        else:
            phi = overlap = np.zeros((0, 0))
            angles = np.zeros(0)
        k1, k2 = phi.shape
        out[side] = SimilarityResult(
            name=name if name is not None else lr1.name, side=side, phi=phi,
            null=random_null(k1, k2, d), null_std=random_null_std(k1, k2, d), angles=angles, d=d,
            r1=lr1.r, r2=lr2.r, zero1=zero1, zero2=zero2, overlap=overlap,
            ties1=near_tied_cuts(lr1.side_singular_values(side), rtol=tie_rtol) if not zero1 else (),
            ties2=near_tied_cuts(lr2.side_singular_values(side), rtol=tie_rtol) if not zero2 else ())
    return out


def gaussian_similarity(r1: int, r2: int, d: int, *, seed: int = 0) -> SimilarityResult:
    """φ between the row spaces of two seeded Gaussian (r, d) matrices: Fig. 4's random panel.

    Parameters
    ----------
    r1, r2 : int
        Ranks (rows of the two matrices).
    d : int
        Ambient dimension (columns), e.g. d_in of the module compared.
    seed : int

    Returns
    -------
    SimilarityResult
        On the ``"A"`` side; φ ≈ max(i, j) / d up to sampling noise.
    """
    if min(r1, r2, d) < 1:
        raise InputError(f"r1, r2 and d must be positive, got {r1}, {r2}, {d}")
    rng = np.random.default_rng(seed)
    a = LowRank(rng.standard_normal((r1, d)), rng.standard_normal((1, r1)))  # (r1, d), (1, r1)
    b = LowRank(rng.standard_normal((r2, d)), rng.standard_normal((1, r2)))
    return module_similarity(a, b, side="A", name=f"gaussian ({r1}, {d}) vs ({r2}, {d})")
