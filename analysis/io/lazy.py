"""``LazyAdapter``: an :class:`~analysis.core.adapter.Adapter` that reads a module when it is accessed.

Large adapters (a 70B-shaped r = 64 LoRA on all projections is ~1.7 GB in
bf16, 3.3 GB once upcast to float32) need not be held in memory to be
analysed: a sweep touches one module at a time. ``load_adapter(path,
lazy=True)`` on a PEFT safetensors adapter validates everything the header
tells (keys, pairing, shapes, ranks against the config) when it opens the
file, and reads the two factors of a module — validating their values
(NaN / Inf, naming the file and key) — only when ``adapter[name]`` is
accessed. Nothing is cached: each access reads the file again, so memory is
bounded by the modules the caller holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import Adapter

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

    from numpy.typing import DTypeLike

    from analysis.core.lowrank import LowRank

__all__ = ["LazyAdapter", "placeholder"]


def placeholder(shape: Iterable[int], dtype: DTypeLike = np.float32) -> np.ndarray:
    """A read-only zero-stride array with ``shape``: costs no memory.

    Stands in for a tensor whose values have not been read, so that the
    readers' shape checks run on the header alone.
    """
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(shape))


class _View(Mapping):
    """Read-only lazy mapping over a :class:`LazyAdapter` (its ``expanded()``)."""

    def __init__(self, owner):
        self._owner = owner

    def __getitem__(self, name):
        return self._owner[name]

    def __iter__(self):
        return iter(self._owner)

    def __len__(self):
        return len(self._owner)

    def __contains__(self, name):
        return name in self._owner


class LazyAdapter(Adapter):
    """An adapter whose modules are read from the file on access.

    Parameters
    ----------
    loaders : Mapping[str, callable]
        Module name -> function of no argument returning its
        :class:`~analysis.core.LowRank` (reads and validates the factors).
    ranks : Mapping[str, int]
        Stored rank per module (known from the header).
    shapes : Mapping[str, tuple of int], optional
        ``(d_out, d_in)`` of each module's ΔW (known from the header), see :attr:`shapes`.
    path, format, config, notes
        As for :class:`~analysis.core.adapter.Adapter`.

    Notes
    -----
    ``adapter[name]`` reads the two factors of that module each time it is
    called (nothing is cached); ``expanded()`` is a lazy view, so
    :func:`~analysis.sweeps.pair.compare_adapters` holds one module of each adapter
    at a time. Errors on the values (NaN / Inf) are raised on access, with the
    file and key named.
    """

    def __init__(self, loaders: Mapping[str, Callable[[], LowRank]], ranks: Mapping[str, int], *,
                 path: str | os.PathLike[str], format: str, config: Mapping[str, Any] | None = None,
                 notes: Iterable[str] = (), shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        super().__init__({}, path=path, format=format, config=config, notes=notes)
        self._loaders = dict(loaders)
        self._ranks = {k: int(ranks[k]) for k in self._loaders}
        self._shapes = None if shapes is None else {k: tuple(int(x) for x in shapes[k]) for k in self._loaders}

    def __getitem__(self, name: str) -> LowRank:
        return self._loaders[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __contains__(self, name: object) -> bool:
        return name in self._loaders

    def expanded(self) -> Mapping[str, LowRank]:
        """A lazy view of the modules (PEFT modules have no merged parts)."""
        return _View(self)

    @property
    def ranks(self) -> dict:
        """Stored rank per module (from the header, nothing read)."""
        return dict(self._ranks)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]] | None:
        """``{name: (d_out, d_in)}`` of every module's ΔW, from the header (nothing read); None when the
        reader did not give them."""
        return None if self._shapes is None else dict(self._shapes)

    def with_alpha(self, alpha: float) -> "LazyAdapter":
        """A lazy copy with scale α / r on every module."""
        def wrap(load):
            def loader():
                lr = load()
                return lr.with_scale(float(alpha) / lr.meta.get("r", lr.r))
            return loader

        return LazyAdapter({k: wrap(f) for k, f in self._loaders.items()}, self._ranks, path=self.path,
                           format=self.format, config=self.config, notes=self.notes, shapes=self._shapes)

    def eager(self) -> Adapter:
        """Read every module now: an ordinary in-memory :class:`~analysis.core.adapter.Adapter`."""
        return Adapter({k: f() for k, f in self._loaders.items()}, path=self.path, format=self.format,
                       config=self.config, notes=self.notes)

    def clear_cache(self) -> None:
        """Nothing is cached: every access reads the file."""

    def __repr__(self):
        ranks = sorted(set(self._ranks.values()))
        return (f"LazyAdapter(format={self.format!r}, path={self.path!r}, modules={len(self)}, "
                f"ranks={ranks})")
