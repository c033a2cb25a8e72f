"""``Adapter``: the modules of one checkpoint, by their name in the base model; module names and their order."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from analysis.core.lowrank import LowRank
from analysis.core.patterns import compile_pattern
from analysis.errors import InputError

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Any

__all__ = ["Adapter", "Layers", "is_embedding_name", "natural_key", "parse_layers", "ranges_text", "select_modules",
           "split_name"]

_EMBED_RE = re.compile(r"(^|_)(wte|wpe|shared|emb|embed|embeds|embedding|embeddings|embed_tokens|embed_positions|"
                       r"embed_in|token_type_embeddings)$", re.IGNORECASE)
_LAYER_RE = re.compile(r"^(?P<prefix>.*?)(?:^|[._])(?P<layer>\d+)[._](?P<module>.+)$")


def is_embedding_name(name: object) -> bool:
    """True for the module names of embedding tables (``wte``, ``embed_tokens``, ``word_embeddings`` …).

    >>> is_embedding_name("model.embed_tokens"), is_embedding_name("bert.embeddings.word_embeddings")
    (True, True)
    >>> is_embedding_name("lm_head")
    False
    """
    return _EMBED_RE.search(str(name).rsplit(".", 1)[-1]) is not None


def split_name(name: str) -> tuple:
    """Split a module name into ``(layer, module)``.

    The layer is the first integer component of the name; the module is what
    follows it. Names without one give ``(None, name)``.

    Examples
    --------
    >>> split_name("model.layers.3.self_attn.q_proj")
    (3, 'self_attn.q_proj')
    >>> split_name("transformer.h.11.attn.c_attn:q")
    (11, 'attn.c_attn:q')
    >>> split_name("lm_head")
    (None, 'lm_head')
    """
    m = _LAYER_RE.match(name)
    if m is None:
        return None, name
    return int(m.group("layer")), m.group("module")


class Layers:
    """A layer selection as ranges, never expanded (``"0-999999999999"`` costs nothing).

    Parameters
    ----------
    ranges : sequence of (int, int)
        Inclusive ``(lo, hi)`` pairs.
    spec : str
        The text it was parsed from, for messages.
    """

    def __init__(self, ranges: Iterable[tuple[int, int]], spec: str = "") -> None:
        self.ranges = tuple((int(lo), int(hi)) for lo, hi in ranges)
        self.spec = spec

    def __contains__(self, layer: int | None) -> bool:
        return layer is not None and any(lo <= layer <= hi for lo, hi in self.ranges)

    def size(self) -> int:
        """Number of layers named, counting overlaps twice (an upper bound, computed without expanding)."""
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def __iter__(self) -> Iterator[int]:
        if self.size() > 1 << 20:
            raise InputError(f"layer selection {self.spec!r} is too large to list")
        return iter(sorted(set().union(*(range(lo, hi + 1) for lo, hi in self.ranges))))

    def __eq__(self, other):
        if isinstance(other, Layers):
            return set(self) == set(other)
        if isinstance(other, (set, frozenset)):
            return self.size() <= 1 << 20 and set(self) == other
        return NotImplemented

    def missing(self, existing: Iterable[int]) -> str:
        """The requested layers that are not in ``existing``, as text (``"30-99"``), or ``""``.

        Parameters
        ----------
        existing : iterable of int
        """
        have = sorted(set(existing))
        gaps = []
        for lo, hi in self.ranges:
            inside = [x for x in have if lo <= x <= hi]
            if len(inside) == hi - lo + 1:
                continue
            # the missing part, named compactly: the range's ends outside what exists, and holes inside
            cur = lo
            for x in inside + [hi + 1]:
                if x > cur:
                    gaps.append(str(cur) if x - 1 == cur else f"{cur}-{x - 1}")
                cur = x + 1
        return ",".join(gaps)

    def __repr__(self):
        return f"Layers({self.spec!r})"


def ranges_text(layers: Iterable[int], *, sep: str = ", ") -> str:
    """Layer indices as runs: ``[0, 1, 2, 5]`` -> ``"0-2, 5"`` (``sep`` between the runs).

    >>> ranges_text([5, 0, 2, 1]), ranges_text([3, 4, 9], sep=",")
    ('0-2, 5', '3-4,9')
    """
    layers, out, i = sorted(layers), [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        out.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return sep.join(out)


def parse_layers(spec: str) -> Layers:
    """Parse a layer selection such as ``"0,5,10-15"``; ranges stay ranges.

    Parameters
    ----------
    spec : str

    Returns
    -------
    Layers
        Supports ``in``, iteration and ``==`` with a set.

    Examples
    --------
    >>> 12 in parse_layers("0,5,10-15"), 10**11 in parse_layers("0-999999999999")
    (True, True)
    """
    ranges = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise InputError(f"bad layer selection {spec!r}: expected integers and ranges like '0,5,10-15'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise InputError(f"bad layer range {part!r} in {spec!r}: end before start")
        ranges.append((lo, hi))
    return Layers(ranges, str(spec))


def select_modules(names: Iterable[str], *, modules: Sequence[str] | None = None,
                   layers: set[int] | str | Layers | None = None) -> list[str]:
    """Filter module names by regular expressions and layer indices.

    Parameters
    ----------
    names : iterable of str
    modules : sequence of str, optional
        Keep a name if any pattern matches it (``re.search``), e.g. ``q_proj``.
    layers : set of int, str or Layers, optional
        Keep names whose layer (see :func:`split_name`) is in it. A text or :class:`Layers` selection that
        names layers the modules do not have is refused, naming the layers there are.

    Returns
    -------
    list of str
        Sorted by :func:`natural_key` (layer 2 before layer 10).
    """
    names = list(names)
    if isinstance(layers, str):
        layers = parse_layers(layers)
    if isinstance(layers, Layers):
        existing = {split_name(n)[0] for n in names} - {None}
        gone = layers.missing(existing)
        if gone and existing:
            raise InputError(f"--layers {layers.spec}: no layer {gone} here; the modules have layers "
                             f"{ranges_text(existing)}")

    pats = []
    for p in modules or ():
        try:
            pats.append(compile_pattern(p, "--modules"))  # matched with a time bound: no pattern hangs
        except ValueError as e:
            raise InputError(f"bad module pattern {p!r}: {str(e).split(': ', 1)[-1]}") from None
    out = []
    for n in sorted(names, key=natural_key):
        if pats and not any(p.search(n) for p in pats):
            continue
        if layers is not None and split_name(n)[0] not in layers:
            continue
        out.append(n)
    return out


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders the numbers inside a name numerically (layer 2 before layer 10).

    >>> sorted(["h.10.q", "h.2.q", "h.1.v"], key=natural_key)
    ['h.1.v', 'h.2.q', 'h.10.q']
    """
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Adapter(Mapping):
    """A LoRA checkpoint: a read-only mapping ``module name -> LowRank``.

    Parameters
    ----------
    modules : Mapping[str, LowRank]
        The updates, keyed by the module's name in the base model.
    path : str
        The file or folder it was read from.
    format : str
        The reader: ``"peft"`` (LoRA and PEFT's LoHa / LoKr / VeRA / AdaLoRA / DoRA), ``"loralib"``,
        ``"kohya"`` (kohya and LyCORIS files, names as written), ``"kohya-resolved"`` (the same keyed by the
        base's names) or ``"diffusers"``.
    config : Mapping, optional
        The parsed configuration (PEFT's ``adapter_config.json``), if any.
    notes : tuple of str
        Things the reader settled that a user may want to know.
    """

    def __init__(self, modules: Mapping[str, LowRank], *, path: str | os.PathLike[str], format: str,
                 config: Mapping[str, Any] | None = None, notes: Iterable[str] = ()) -> None:
        self._modules = dict(modules)
        self.path = str(path)
        self.format = format
        self.config = dict(config) if config else {}
        self.notes = tuple(notes)

    def __getitem__(self, name: str) -> LowRank:
        return self._modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def expanded(self) -> Mapping[str, LowRank]:
        """Modules with merged projections split into their parts.

        A loralib ``MergedLinear`` named ``…c_attn`` becomes ``…c_attn:q`` and
        ``…c_attn:v``; every other module is kept as is.

        Returns
        -------
        dict[str, LowRank]
        """
        out = {}
        for name, lr in self._modules.items():
            if lr.parts:
                for part, sub in lr.parts.items():
                    out[f"{name}:{part}"] = sub
            else:
                out[name] = lr
        return out

    @property
    def ranks(self) -> dict:
        """Stored rank per module."""
        return {k: v.r for k, v in self._modules.items()}

    def with_alpha(self, alpha: float) -> "Adapter":
        """A copy with scale α / r on every module (for formats without α)."""
        mods = {k: v.with_scale(float(alpha) / v.meta.get("r", v.r)) for k, v in self._modules.items()}
        return Adapter(mods, path=self.path, format=self.format, config=self.config, notes=self.notes)

    def clear_cache(self) -> None:
        """Drop every module's cached SVD."""
        for v in self._modules.values():
            v.clear_cache()

    def __repr__(self):
        ranks = sorted(set(self.ranks.values()))
        return (f"Adapter(format={self.format!r}, path={self.path!r}, modules={len(self)}, "
                f"ranks={ranks})")
