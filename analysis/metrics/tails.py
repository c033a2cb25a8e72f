"""One module's null distribution as an object: its mean and sd, its tail probabilities, and draws from it.

The report's claims (:mod:`analysis.report.findings`) test an effect against its null in every module they cover,
correct the p-values over modules, and plant the paper's effect into draws of the same geometry (power). Each null
here answers the three questions the same way, whatever its origin:

- :class:`BetaNull`: a closed form (φ(1, 1) between random lines is Beta(1/2, (d − 1)/2); a random direction's share
  in a fixed j-subspace is Beta(j/2, (d − j)/2)).
- :class:`DrawsNull`: seeded Monte Carlo draws; tails are Monte Carlo p-values (1 + #{draws ≥ x}) / (1 + n), valid
  for any n, with more draws made where a value lies beyond all of them and a smaller p is needed
  (:meth:`DrawsNull.resolve`).
- :class:`SquareGaussianNull`: a nonnegative statistic s whose square X = s² has an exact mean and variance and is a
  sum of many weakly dependent terms (‖UᵀWV‖ with k ≥ :data:`GAUSSIAN_K` random directions: k² terms); tails are the
  Gaussian tails of X standardised.
- :class:`GaussianNull`: a statistic with an exact mean and variance that is a sum of many weakly dependent terms
  (φ(k, k) of a random k-frame against a fixed k-subspace, k ≥ :data:`GAUSSIAN_K`, :func:`overlap_moments`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike

__all__ = ["NullModel", "BetaNull", "DrawsNull", "GaussianNull", "SquareGaussianNull", "GAUSSIAN_K", "median_null",
           "overlap_moments"]

#: From this many random directions on, the null of ‖UᵀWV‖² is taken as Gaussian (a sum of k² ≥ 289 terms).
GAUSSIAN_K = 17


class NullModel:
    """Interface: ``mean``, ``sd``, ``tail(x)`` = P(X ≥ x), ``lower(x)`` = P(X ≤ x), ``sample(n, rng)``, ``describe()``."""

    mean: float
    sd: float

    def tail(self, x: ArrayLike) -> float | np.ndarray:
        raise NotImplementedError

    def lower(self, x: ArrayLike) -> float | np.ndarray:
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def resolve(self, x: float, need: float) -> NullModel:
        """Make sure ``tail(x)`` can show a p as small as ``need`` (only draws-based nulls need to do anything)."""
        return self


class BetaNull(NullModel):
    """X = scale · Beta(a, b): a closed form.

    Parameters
    ----------
    a, b : float
        Beta parameters (> 0).
    what : str
        How it arises, for :meth:`describe`.
    """

    def __init__(self, a: float, b: float, *, what: str = "Beta") -> None:
        from scipy.stats import beta

        self._dist = beta(a, b)
        self.a, self.b, self.what = float(a), float(b), what
        self.mean = float(self._dist.mean())
        self.sd = float(self._dist.std())

    def tail(self, x: ArrayLike) -> float | np.ndarray:
        return self._dist.sf(x)

    def lower(self, x: ArrayLike) -> float | np.ndarray:
        return self._dist.cdf(x)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.beta(self.a, self.b, size=n)

    def describe(self) -> str:
        return f"{self.what}: Beta({self.a:g}, {self.b:g}), closed form"


class DrawsNull(NullModel):
    """Seeded Monte Carlo draws of a statistic, with more drawn on demand.

    Parameters
    ----------
    draw : callable
        ``draw(n, seed) -> (n,) ndarray``.
    n : int
        First draws (the protocol's 1,000).
    seed : int
    what : str
    n_max : int
        The most draws :meth:`resolve` makes.
    """

    def __init__(self, draw: Callable[[int, int], ArrayLike], *, n: int = 1000, seed: int = 0, what: str = "draws",
                 n_max: int = 200_000) -> None:
        self._draw, self._seed, self.what, self.n_max = draw, int(seed), what, int(n_max)
        self._extra = 0
        self.draws = np.sort(np.asarray(draw(int(n), self._seed), dtype=float))
        self.mean = float(self.draws.mean())
        self.sd = float(self.draws.std(ddof=1)) if self.draws.size > 1 else math.nan

    @classmethod
    def of(cls, draws: ArrayLike, *, what: str = "draws") -> DrawsNull:
        """A fixed set of draws (never extended)."""
        d = np.asarray(draws, dtype=float)
        return cls(lambda n, seed: d, n=d.size, what=what, n_max=d.size)

    def tail(self, x: ArrayLike) -> float | np.ndarray:
        x = np.asarray(x, dtype=float)
        above = self.draws.size - np.searchsorted(self.draws, x, side="left")
        out = (1.0 + above) / (1.0 + self.draws.size)
        return np.where(np.isfinite(x), out, np.nan) if out.ndim else (float(out) if np.isfinite(x) else math.nan)

    def lower(self, x: ArrayLike) -> float | np.ndarray:
        x = np.asarray(x, dtype=float)
        below = np.searchsorted(self.draws, x, side="right")
        out = (1.0 + below) / (1.0 + self.draws.size)
        return np.where(np.isfinite(x), out, np.nan) if out.ndim else (float(out) if np.isfinite(x) else math.nan)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.draws, size=n, replace=True)

    def resolve(self, x: float, need: float) -> DrawsNull:
        """Draw more (new seeds) while ``x`` lies beyond every draw and 1 / (n + 1) > ``need``, up to ``n_max``."""
        while (np.isfinite(x) and need > 0 and self.draws.size < self.n_max and self.draws[-1] < x
               and 1.0 / (self.draws.size + 1) > need):
            more = min(self.n_max - self.draws.size, max(self.draws.size, int(math.ceil(1.0 / need)) - self.draws.size))
            self._extra += 1
            new = np.asarray(self._draw(more, self._seed + 7919 * self._extra), dtype=float)
            self.draws = np.sort(np.concatenate([self.draws, new]))
        return self

    def describe(self) -> str:
        return f"{self.what}: {self.draws.size:,} seeded draws, Monte Carlo p-values"


class SquareGaussianNull(NullModel):
    """s ≥ 0 whose square X = s² has exact mean ``ex`` and variance ``vx``; X taken as Gaussian.

    ``mean`` and ``sd`` are those of s under that model (E s ≈ √(E X) − Var X / (8 E X^{3/2}), to second order).
    """

    def __init__(self, ex: float, vx: float, *, what: str = "Gaussian") -> None:
        self.ex, self.vx, self.what = float(ex), float(vx), what
        self.mean = math.sqrt(max(self.ex, 0.0)) - self.vx / (8 * max(self.ex, 1e-300) ** 1.5)
        self.sd = math.sqrt(max(self.ex - self.mean ** 2, 0.0)) if self.ex > 0 else math.nan

    def _z(self, x):
        x = np.asarray(x, dtype=float)
        return (np.sign(x) * x * x - self.ex) / math.sqrt(self.vx) if self.vx > 0 else np.full_like(x, np.nan)

    def tail(self, x: ArrayLike) -> float | np.ndarray:
        from scipy.stats import norm

        return norm.sf(self._z(x))

    def lower(self, x: ArrayLike) -> float | np.ndarray:
        from scipy.stats import norm

        return norm.cdf(self._z(x))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.sqrt(np.maximum(self.ex + math.sqrt(self.vx) * rng.standard_normal(n), 0.0))

    def describe(self) -> str:
        return f"{self.what}: exact mean and variance of the square, Gaussian tails"


class GaussianNull(NullModel):
    """A statistic with exact ``mean`` and ``sd``, taken as Gaussian (a sum of many weakly dependent terms)."""

    def __init__(self, mean: float, sd: float, *, what: str = "Gaussian") -> None:
        self.mean, self.sd, self.what = float(mean), float(sd), what

    def tail(self, x: ArrayLike) -> float | np.ndarray:
        from scipy.stats import norm

        return norm.sf(np.asarray(x, dtype=float), self.mean, self.sd)

    def lower(self, x: ArrayLike) -> float | np.ndarray:
        from scipy.stats import norm

        return norm.cdf(np.asarray(x, dtype=float), self.mean, self.sd)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.mean + self.sd * rng.standard_normal(n)

    def describe(self) -> str:
        return f"{self.what}: exact mean and variance, Gaussian tails"


def overlap_moments(a: int, b: int, n: int) -> tuple[float, float]:
    """Exact mean and variance of T = tr(P_A P_B) for a fixed rank-a projection and a Haar-random rank-b one in R^n.

    From E[P_ij P_kl] = α δ_ij δ_kl + β (δ_ik δ_jl + δ_il δ_jk) of the random projection (α = b(nb + b − 2) /
    ((n − 1) n (n + 2)), β = b(n − b) / ((n − 1) n (n + 2))): E[T] = ab / n, E[T²] = α a² + 2 β a. φ(k, k) of
    Fig. 8 is T / k with a = b = k.

    Parameters
    ----------
    a, b, n : int

    Returns
    -------
    (float, float)
        E[T], Var[T].

    Examples
    --------
    >>> m, v = overlap_moments(1, 1, 3)  # cos² of two random lines in R^3: mean 1/3, variance 4/45
    >>> round(m, 4), round(v, 4)
    (0.3333, 0.0889)
    """
    a, b, n = int(a), int(b), int(n)
    den = (n - 1) * n * (n + 2)
    alpha, beta = b * (n * b + b - 2) / den, b * (n - b) / den
    mean = a * b / n
    return mean, max(alpha * a * a + 2 * beta * a - mean * mean, 0.0)


def median_null(nulls: Sequence[NullModel], *, n: int = 1000, seed: int = 0) -> DrawsNull:
    """Draws of the median over modules of independent draws from each module's null.

    Parameters
    ----------
    nulls : sequence of NullModel
    n : int
    seed : int

    Returns
    -------
    DrawsNull
        Fixed draws of the median (for an aggregate claim's effect, the median over its modules).
    """
    rng = np.random.default_rng(seed)
    cols = np.stack([np.asarray(m.sample(n, rng), dtype=float) for m in nulls], axis=1)  # (n, modules)
    return DrawsNull.of(np.median(cols, axis=1), what=f"median over {len(nulls)} modules of their nulls")
