"""Stability-based rank advice: how many directions of ΔW two trainings agree on.

Given two adapters of the same base model (two seeds, or rank r and a larger
rank), a module's advised rank is the number of leading directions of ΔW the
two runs reproduce beyond chance, from
:func:`~analysis.metrics.stability.prefix_stability`: the principal angles
between the top-i singular directions of the two updates, counted when their
squared cosine exceeds the mean + n·sd of what random i-dimensional subspaces
reach (seeded Monte Carlo). ``shared`` is the largest such count over the
prefixes, ``needed`` the smallest prefix (rank) holding them all. Directions
beyond look no more alike across runs than random subspaces: training them
again would give something else, so a rank at the advice keeps what is
reproducible. (A diagonal test φ(i, i) > null + n·sd would not do: one
shared top direction keeps φ(i, i) ≈ 1/i + i/d above it for every
i < d / (n√2).)

Which basis (``side``):

- ``"both"`` (default): the smaller advice of ΔW's input side (right singular
  vectors) and output side (left singular vectors), both ordered by ΔW's own
  singular values. A direction of ΔW is a rank-1 term σ u vᵀ; it is
  reproduced only if both u and v are. ΔW's order is also the one rank
  reduction keeps (Eckart–Young, ``python -m analysis.resize``), so "advised
  k" means "the top k directions of ΔW", what a rank-k LoRA can hold.
- ``"input"`` / ``"output"``: one side only. ``"output"`` is the lenient
  one: A starts random and keeps a large part of its initialisation after
  short training, so ΔW ≈ G·P_A for the gradient G, whose output directions
  survive a different random A better than its input directions.
- ``"A"`` / ``"B"``: the LoRA paper's bases (singular vectors of lora_A /
  lora_B ordered by *their own* singular values). Not the default: A's
  singular values mix the random init with the update, so its order is not
  ΔW's and a prefix of it is not what truncation keeps.

The advice is capped by the smaller numerical rank of the two updates; a
module at the cap (``capped``) may need more (compare with a larger rank).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import split_name
from analysis.errors import InputError
from analysis.io.outputs import json_ready
from analysis.io.peft_writer import pattern_keys
from analysis.metrics.stability import prefix_stability
from analysis.sweeps.common import require_adapter
from analysis.sweeps.driver import pair_modules, sweep_modules

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    import pandas as pd

    from analysis.core.adapter import Adapter, Layers
    from analysis.core.lowrank import LowRank
    from analysis.sweeps.progress import Progress

__all__ = ["ADVICE_SIDES", "RankAdvice", "advise_ranks", "check_min_rank"]

ADVICE_SIDES = ("both", "input", "output", "A", "B")  # FACTOR_SIDES and "both" (analysis.core.sides)


@dataclass(frozen=True)
class RankAdvice:
    """Per-module advised ranks from two adapters.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per shared module: ``name, layer, module, d_out, d_in, r_a,
        r_b, rank_a, rank_b, zero``, per basis s ∈ {input, output, A, B}
        ``shared_s`` (directions shared) and ``needed_s`` (smallest prefix
        holding them), then for the chosen side: ``basis`` (for ``"both"``,
        the ΔW side with the smaller need), ``shared``, ``needed``, ``cap``
        (the smaller rank), ``advised`` = max(needed, min_rank), ``capped``
        (every direction up to the cap shared: the need may be higher) and
        ``top_cos2`` (squared cosine between the two top directions).
    side : str
    n_std : float
    min_rank : int
        Floor of ``advised`` (PEFT cannot hold r = 0).
    a_path, b_path : str
    only_a, only_b : list of str
        Modules present in one adapter only (not advised on).
    target_modules : list of str
        For :meth:`lora_config`.
    mismatched : list of str
        Shared names whose ΔW shapes differ (not advised on; see :func:`~analysis.sweeps.driver.pair_modules`).
    """

    frame: pd.DataFrame
    side: str
    n_std: float
    min_rank: int
    a_path: str = ""
    b_path: str = ""
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    target_modules: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """The per-module table (a copy)."""
        return self.frame.copy()

    def rank_pattern(self) -> tuple[int, dict[str, int]]:
        """``(r, rank_pattern)`` in PEFT's syntax.

        ``r`` is the most common advised rank; ``rank_pattern`` maps a key
        matching each other module (PEFT's ``get_pattern_key`` rule, see
        :func:`~analysis.io.peft_writer.pattern_keys`) to its rank.
        """
        adv = dict(zip(self.frame["name"], (int(x) for x in self.frame["advised"])))
        if not adv:
            return self.min_rank, {}
        counts = Counter(adv.values())
        r0 = max(counts, key=lambda k: (counts[k], k))
        keys = pattern_keys(adv)
        return r0, {keys[n]: k for n, k in adv.items() if k != r0}

    def lora_config(self) -> dict[str, Any]:
        """Keyword arguments for ``peft.LoraConfig``: ``r``, ``rank_pattern``, ``target_modules``."""
        r0, pat = self.rank_pattern()
        return {"r": r0, "rank_pattern": pat, "target_modules": list(self.target_modules)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: settings, ``lora_config``, the modules not advised on (``only_a``, ``only_b``, and
        ``mismatched`` when there are any) and one record per module."""
        differ = {"mismatched": self.mismatched} if self.mismatched else {}
        return json_ready({"a": self.a_path, "b": self.b_path, "side": self.side, "n_std": self.n_std,
                           "min_rank": self.min_rank, "lora_config": self.lora_config(),
                           "only_a": self.only_a, "only_b": self.only_b, **differ,
                           "modules": self.frame.to_dict(orient="records")})


def check_min_rank(min_rank: int, ea: Mapping[str, LowRank], eb: Mapping[str, LowRank], names: Sequence[str], *,
                   what: str = "min_rank") -> None:
    """Refuse a floor of the advice outside [1, r]: r, the smallest LoRA rank of the compared modules (a floor
    above it would advise more directions than the adapters hold).

    Parameters
    ----------
    min_rank : int
    ea, eb : Mapping[str, LowRank]
        The two adapters' modules.
    names : list of str
        The modules compared.
    what : str
        The option or argument named in the message (``--min-rank``).

    Raises
    ------
    ValueError
    """
    if min_rank < 1:
        raise InputError(f"{what} must be at least 1 (PEFT cannot hold r = 0), got {min_rank}")
    if not names:
        return
    r, name = min((min(ea[n].r, eb[n].r), n) for n in names)
    if min_rank > r:
        raise InputError(f"{what} must be at most r = {r}, the smallest rank of the modules compared (module "
                         f"{name!r}), got {min_rank}")


def _targets(a, names):
    t = a.config.get("target_modules") if a.format == "peft" else None
    if isinstance(t, list) and t:
        return sorted(t)
    if isinstance(t, str) and t:
        return t  # a regex in PEFT: kept as is
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def advise_ranks(a: Adapter, b: Adapter, *, side: str = "both", n_std: float = 3.0, min_rank: int = 1,
                 modules: Sequence[str] | None = None, layers: set[int] | str | Layers | None = None,
                 trials: int = 200, seed: int = 0, progress: bool | Progress = False, keep_cache: bool = False,
                 jobs: int | None = None) -> RankAdvice:
    """Advised rank per module: the leading directions two adapters share.

    Parameters
    ----------
    a, b : Adapter
        Two adapters of the same base model (two seeds, or r and a larger r).
    side : {"both", "input", "output", "A", "B"}
        Basis compared (see the module docstring); ``"both"`` = min of the
        input and output sides of ΔW.
    n_std : float
        A squared principal cosine counts as shared above the random mean +
        n_std · sd.
    min_rank : int
        Floor of the advice, in [1, r] (r: the smallest LoRA rank of the modules compared; PEFT cannot hold
        r = 0); modules sharing nothing get it.
    modules, layers
        Filters, see :func:`analysis.core.adapter.select_modules`.
    trials, seed
        Of the Monte-Carlo null (:func:`~analysis.metrics.stability.random_max_cos2`).
    progress : bool
        Progress bar on standard error.
    keep_cache : bool
        Keep each module's SVDs cached after use.
    jobs : int, optional
        Modules worked on at once (threads, BLAS pinned to one thread in each; see
        :mod:`analysis.core.threads`); default: the cores available to the process. Memory is bounded by
        ``jobs`` modules of each adapter; the result does not depend on it.

    Returns
    -------
    RankAdvice
        Modules both adapters have with ΔW shapes that differ are not advised on: listed in its ``mismatched``
        (:func:`~analysis.sweeps.driver.pair_modules`, the rule of every sweep comparing two adapters).
    """
    import pandas as pd

    if side not in ADVICE_SIDES:
        raise InputError(f"side must be one of {ADVICE_SIDES}, got {side!r}")
    if not (np.isfinite(n_std) and n_std >= 0):
        raise InputError(f"n_std must be a non-negative number, got {n_std!r}")
    if isinstance(min_rank, bool) or int(min_rank) != min_rank or min_rank < 1:
        raise InputError(f"min_rank must be a positive integer (PEFT cannot hold r = 0), got {min_rank!r}")
    for x, y in ((a, b), (b, a)):
        require_adapter(x, base_names=f"comparing with a {y.format} adapter" if x.format != y.format else None)
    pairs = pair_modules(a, b, modules=modules, layers=layers)
    check_min_rank(min_rank, pairs.a, pairs.b, pairs.names, what="min_rank")

    def one(name, la, lb):
        zero = la.is_zero or lb.is_zero
        st = {}
        for s in ("input", "output", "A", "B"):
            st[s] = None if zero else prefix_stability(la.basis(s), lb.basis(s), n_std=n_std, trials=trials,
                                                       seed=seed)
        shared = {s: (0 if v is None else v.shared) for s, v in st.items()}
        needed = {s: (0 if v is None else v.needed) for s, v in st.items()}
        caps = {s: (0 if v is None else v.cap) for s, v in st.items()}
        if side == "both":
            pick = min(("input", "output"), key=lambda s: (needed[s], shared[s]))
        else:
            pick = side
        layer, module = split_name(name)
        row = {"name": name, "layer": layer, "module": module, "d_out": la.shape[0], "d_in": la.shape[1],
               "r_a": la.r, "r_b": lb.r, "rank_a": la.rank, "rank_b": lb.rank, "zero": zero,
               **{f"shared_{s}": v for s, v in shared.items()},
               **{f"needed_{s}": v for s, v in needed.items()},
               "basis": pick, "shared": shared[pick], "needed": needed[pick], "cap": caps[pick],
               "advised": max(needed[pick], int(min_rank)),
               "capped": bool(st[pick] is not None and st[pick].at_cap),
               "top_cos2": float(st[pick].cos2[0, 0]) if st[pick] is not None else np.nan}
        return row

    # in order, whatever ``jobs``: at most ``jobs`` modules in flight, the first error raised as a serial run would
    rows = list(sweep_modules(one, pairs.names, modules=(pairs.a, pairs.b), keep_cache=keep_cache, jobs=jobs,
                              progress=progress))
    frame = pd.DataFrame(rows)
    return RankAdvice(frame=frame, side=side, n_std=float(n_std), min_rank=int(min_rank), a_path=a.path,
                      b_path=b.path, only_a=pairs.only_a, only_b=pairs.only_b,
                      target_modules=_targets(a, frame["name"] if len(frame) else []), mismatched=pairs.mismatched)
