"""Shared helpers of the plotting functions (no computation of metrics here).

:class:`PlotArtists` is what every ``plot_*`` function returns, after
scikit-learn's Display objects: the Axes drawn on, its Figure, and the artists
drawn, by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import InputError
from analysis.io.roles import module_role

if TYPE_CHECKING:
    from collections.abc import Iterable, KeysView
    from typing import Any

    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = ["PlotArtists", "check_columns", "get_ax", "index_ticks", "module_label", "MODULE_LABELS"]

#: Short labels of some module names, in the paper's notation (every role is labelled by :func:`module_label`).
MODULE_LABELS = {"q_proj": "ΔW_q", "v_proj": "ΔW_v", "k_proj": "ΔW_k", "o_proj": "ΔW_o",
                 "c_attn:q": "ΔW_q", "c_attn:v": "ΔW_v"}


@dataclass(frozen=True, eq=False)
class PlotArtists:
    """What a ``plot_*`` function drew: its Axes and its artists, by name.

    Every key a function documents is present; an artist that was not drawn
    (a colour bar with ``colorbar=False``, a legend with ``legend=False``)
    is None, a group of artists is a list (possibly empty).

    Attributes
    ----------
    ax : matplotlib.axes.Axes
        The Axes drawn on.
    artists : dict of str to object
        The artists, e.g. ``{"image": AxesImage, "colorbar": Colorbar, "texts": [Text, ...]}``.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> from analysis.plotting import plot_phi
    >>> art = plot_phi([[1.0, 0.5], [0.5, 0.25]], ax=Figure().add_subplot())
    >>> sorted(art.keys())
    ['colorbar', 'image', 'texts']
    >>> art["image"] is art.image and art.fig is art.ax.figure
    True
    """

    ax: Axes
    artists: dict

    @property
    def fig(self) -> Figure | SubFigure:
        """The Figure (or SubFigure) holding :attr:`ax`."""
        return self.ax.figure

    def keys(self) -> KeysView[str]:
        """Names of the artists."""
        return self.artists.keys()

    def __getitem__(self, key: str) -> Any:
        try:
            return self.artists[key]
        except KeyError:
            raise KeyError(f"no artist {key!r}; this plot drew {sorted(self.artists)}") from None

    def __contains__(self, key: object) -> bool:
        return key in self.artists

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: ``art.image`` is ``art["image"]``
        if name.startswith("_") or name == "artists":
            raise AttributeError(name)
        artists = object.__getattribute__(self, "artists")
        if name in artists:
            return artists[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or artist {name!r}; "
                             f"artists: {sorted(artists)}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.artists))

    def __repr__(self):
        def short(v):
            if isinstance(v, list):
                kinds = sorted({type(x).__name__ for x in v})
                return f"[{len(v)} × {'/'.join(kinds)}]" if v else "[]"
            return "None" if v is None else type(v).__name__

        inner = ", ".join(f"{k}={short(v)}" for k, v in self.artists.items())
        return f"PlotArtists(ax={self.ax!r}, {inner})"


def check_columns(frame: pd.DataFrame, cols: Iterable[str], what: str) -> None:
    """Raise ValueError naming the missing columns when ``frame`` lacks any of ``cols`` (``what``: its source)."""
    missing = set(cols) - set(getattr(frame, "columns", ()))
    if missing:
        raise InputError(f"expected a DataFrame with columns {sorted(cols)} ({what}); missing {sorted(missing)}")


def get_ax(ax: Axes | None) -> Axes:
    """Return ``ax``, or a new Axes on a new Figure (object API: no pyplot state)."""
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=(5, 4), layout="constrained").add_subplot()


_ROLE_SUB = {"q": "q", "k": "k", "v": "v", "o": "o", "qkv": "qkv", "cross_q": "q", "cross_k": "k", "cross_v": "v",
             "cross_o": "o", "up": "up", "gate": "gate", "gate_up": "gate,up", "down": "down"}


def module_label(module: str, *, plain: bool = False, stack: bool = False) -> str:
    """ΔW of a module by its role: ``self_attn.q_proj`` (or any name / kind of role q) -> ``ΔW_q``.

    Parameters
    ----------
    module : str
        A module name, module part or kind (``"decoder/self_attn.q_proj"``).
    plain : bool
        Plain text (``"ΔWq"``) instead of mathtext (``"$\\Delta W_q$"``), for tables and CSV files.
    stack : bool
        Append the stack (``"ΔWq (encoder)"``) when the name carries one.

    Returns
    -------
    str
        Cross-attention projections get ``" (cross)"``; modules of role ``other`` their last name component.
    """
    text = str(module)
    stack_name, _, part = text.rpartition("/") if "/" in text else ("", "", text)
    role = module_role(part).role if part else "other"
    if role == "other" or role == "embedding":
        lab = part.rsplit(".", 1)[-1]
    else:
        sub = _ROLE_SUB[role]
        lab = ("ΔW" + sub) if plain else ("$\\Delta W_{\\mathrm{" + sub + "}}$" if len(sub) > 1 else
                                           "$\\Delta W_" + sub + "$")
        if role.startswith("cross_"):
            lab += " (cross)"
    if stack and stack_name:
        lab += f" ({stack_name})"
    return lab


def index_ticks(k: int, *, max_ticks: int = 9) -> np.ndarray:
    """1-based tick positions for an axis of k entries: 1 and round steps after it."""
    if k <= max_ticks:
        return np.arange(1, k + 1)
    for step in (2, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, 128, 200, 256, 500, 1000):
        if k / step <= max_ticks - 1:
            break
    return np.concatenate([[1], np.arange(step, k + 1, step)])
