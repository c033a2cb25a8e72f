"""The one per-module loop every sweep runs on, and the one rule for the modules two adapters share.

:func:`sweep_modules` runs a per-module function over items (module names, or ``(name, payload)`` pairs such as
the base weights a reader streams): up to ``jobs`` modules at once in threads with BLAS pinned to one thread
each (:func:`~analysis.core.threads.map_ordered`), results in input order as a generator (memory bounded by
``jobs`` modules), counted on standard error (:func:`~analysis.sweeps.common.progress`), and each module's cached
SVD dropped once its function has returned unless ``keep_cache``.

:func:`pair_modules` splits the modules of two adapters for every sweep that compares them (pair similarity,
rank advice): the names both have after the ``modules`` / ``layers`` filters are compared when their ΔW shapes
agree; a shared name whose shapes differ is *mismatched*: recorded and skipped, never silently (the commands
name them, ``shape differs, not compared (n): …``), never an error by itself; names in one adapter only are
listed in ``only_a`` / ``only_b``.

>>> import numpy as np
>>> from analysis import Adapter, LowRank
>>> lr = LowRank(np.eye(2, 4), np.eye(3, 2), scale=1.0, name="model.layers.0.q_proj")
>>> ad = Adapter({lr.name: lr}, path="-", format="peft")
>>> list(sweep_modules(lambda name, m: (name, m.rank), ad, modules=[ad], jobs=1))
[('model.layers.0.q_proj', 2)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from analysis.core.adapter import natural_key, select_modules
from analysis.core.threads import map_ordered
from analysis.sweeps.common import progress as progress_bar
from analysis.sweeps.progress import Progress

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from analysis.core.adapter import Adapter, Layers
    from analysis.core.lowrank import LowRank

__all__ = ["ProgressCounter", "ModulePairs", "item_name", "pair_modules", "sweep_modules"]

R = TypeVar("R")


class ProgressCounter(Protocol):
    """A count already open (a :class:`~analysis.sweeps.progress.Task`, a tqdm bar): several sweeps share it."""

    def update(self, n: int = 1) -> Any:
        """``n`` more steps done."""


def item_name(item: Any) -> str:
    """The module an item of :func:`sweep_modules` is about: the item itself, or the first element of a pair.

    Parameters
    ----------
    item : str or sequence
        A module name, or ``(name, payload, …)``.

    Returns
    -------
    str
    """
    return item if isinstance(item, str) else item[0]


def _lookup(modules):
    """``item -> [LowRank, …]``: the modules the per-module function gets after its item."""
    if callable(modules):
        return lambda item: list(modules(item))
    maps = list(modules)
    return lambda item: [m[item_name(item)] for m in maps]


def sweep_modules(fn: Callable[..., R], items: Iterable[Any], *,
                  modules: Sequence[Mapping[str, LowRank]] | Callable[[Any], Iterable[LowRank]] = (),
                  keep_cache: bool = False, jobs: int | None = None,
                  progress: bool | Progress | ProgressCounter | None = False, total: int | None = None,
                  desc: str = "modules", steps: Callable[[R], int] | None = None,
                  alone_threads: int | None = 1) -> Iterator[R]:
    """``fn(item, *its modules)`` for every item, ``jobs`` at a time, results in input order, lazily.

    Parameters
    ----------
    fn : callable
        The per-module function, called as ``fn(item, *lrs)`` in a worker thread (in the caller's with one
        job), ``lrs`` the item's modules (see ``modules``; none when ``modules`` is empty). An exception is
        raised when its result is reached, the calls in flight awaited first.
    items : iterable
        Module names, or ``(name, payload)`` pairs (e.g. ``(name, W)`` from a base reader: read in the caller's
        thread, the next one only when a worker is free). Read lazily.
    modules : sequence of Mapping[str, LowRank], or callable
        The modules each item uses, looked up in the worker (a lazy adapter reads a module's factors then):
        ``m[item_name(item)]`` of each mapping, or ``modules(item)`` (several modules per item, e.g. every
        adapter's module on one base weight).
    keep_cache : bool
        Keep those modules' cached SVDs; default: drop them once ``fn`` has returned (or raised), so that
        memory stays bounded by ``jobs`` modules. The one place the sweeps drop them.
    jobs : int, optional
        Items worked on at once (threads, BLAS pinned to one thread in each; see :mod:`analysis.core.threads`);
        ``None``: the cores available to the process; 1: no thread.
    progress : bool, Progress, ProgressCounter or None
        ``False``: nothing; ``True``: a tqdm bar; a :class:`~analysis.sweeps.progress.Progress`: the command's
        reporter; ``None``: the running command's reporter, if any (see
        :func:`~analysis.sweeps.common.progress`); a :class:`ProgressCounter` already open: advanced by
        ``steps`` per result and left open (several sweeps sharing one count).
    total : int, optional
        Number of items, shown with the count (default ``len(items)`` where it has one).
    desc : str
        What is counted.
    steps : callable, optional
        ``result -> int``: steps of a :class:`ProgressCounter` a result is worth (default 1).
    alone_threads : int or None
        BLAS threads with one job (:func:`~analysis.core.threads.map_ordered`): 1 pins it; ``None`` leaves the
        library's own setting (loops that run inside a Dask task, or alone).

    Yields
    ------
    fn(item, *lrs) for each item, in input order.
    """
    lookup = _lookup(modules)

    def one(item):
        lrs = lookup(item)
        try:
            return fn(item, *lrs)
        finally:
            if not keep_cache:
                for lr in lrs:
                    lr.clear_cache()

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]  # Sized, by the check
    results = map_ordered(one, items, jobs=jobs, alone_threads=alone_threads)
    if progress is None or isinstance(progress, (bool, Progress)):
        yield from progress_bar(results, enabled=progress, total=total, desc=desc)
        return
    for res in results:  # a count someone else opened and closes
        yield res
        progress.update(1 if steps is None else steps(res))


@dataclass(frozen=True)
class ModulePairs:
    """The modules of two adapters, split by the one rule of the sweeps that compare them.

    Attributes
    ----------
    names : list of str
        Compared: in both adapters, kept by the filters, ΔW of one shape (natural order).
    only_a, only_b : list of str
        In one adapter only (natural order; every such module, whatever the filters): not compared.
    mismatched : list of str
        In both and kept by the filters, but with ΔW shapes that differ (natural order): recorded, not compared.
    a, b : Mapping[str, LowRank]
        The two adapters' modules (:meth:`~analysis.core.adapter.Adapter.expanded`), for the per-module function.
    """

    names: list[str]
    only_a: list[str]
    only_b: list[str]
    mismatched: list[str]
    a: Mapping[str, LowRank] = field(repr=False)
    b: Mapping[str, LowRank] = field(repr=False)


def _shapes(adapter, ex, names):
    """``{name: (d_out, d_in)}`` of ΔW: from a lazy reader's header where it has them (no factor read)."""
    known = getattr(adapter, "shapes", None)
    known = known if isinstance(known, dict) else {}
    return {n: tuple(known[n]) if n in known else tuple(ex[n].shape) for n in names}


def pair_modules(a: Adapter, b: Adapter, *, modules: Sequence[str] | None = None,
                 layers: set[int] | str | Layers | None = None) -> ModulePairs:
    """Split the modules of two adapters into compared, one-sided and mismatched names.

    Parameters
    ----------
    a, b : Adapter
    modules, layers
        Filters of the shared names, see :func:`~analysis.core.adapter.select_modules`.

    Returns
    -------
    ModulePairs
    """
    ea, eb = a.expanded(), b.expanded()
    shared = select_modules(set(ea) & set(eb), modules=modules, layers=layers)
    sa, sb = _shapes(a, ea, shared), _shapes(b, eb, shared)
    return ModulePairs(names=[n for n in shared if sa[n] == sb[n]],
                       only_a=sorted(set(ea) - set(eb), key=natural_key),
                       only_b=sorted(set(eb) - set(ea), key=natural_key),
                       mismatched=[n for n in shared if sa[n] != sb[n]], a=ea, b=eb)
