"""``Adapter``: the modules of one checkpoint, by their name in the base model."""

from __future__ import annotations

import re
from collections.abc import Mapping

from analysis.core.lowrank import LowRank

__all__ = ["Adapter", "split_name"]

_LAYER_RE = re.compile(r"^(?P<prefix>.*?)(?:^|[._])(?P<layer>\d+)[._](?P<module>.+)$")


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


class Adapter(Mapping):
    """A LoRA checkpoint: a read-only mapping ``module name -> LowRank``.

    Parameters
    ----------
    modules : Mapping[str, LowRank]
        The updates, keyed by the module's name in the base model.
    path : str
        The file or folder it was read from.
    format : str
        ``"peft"``, ``"loralib"`` or ``"kohya"``.
    config : Mapping, optional
        The parsed configuration (PEFT's ``adapter_config.json``), if any.
    notes : tuple of str
        Things the reader settled that a user may want to know.
    """

    def __init__(self, modules, *, path, format, config=None, notes=()):
        self._modules = dict(modules)
        self.path = str(path)
        self.format = format
        self.config = dict(config) if config else {}
        self.notes = tuple(notes)

    def __getitem__(self, name) -> LowRank:
        return self._modules[name]

    def __iter__(self):
        return iter(self._modules)

    def __len__(self):
        return len(self._modules)

    def expanded(self) -> dict:
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

    def with_alpha(self, alpha) -> "Adapter":
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
