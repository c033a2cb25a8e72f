"""A DataFrame rendered as a table on an Axes (Table 7)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from analysis.errors import InputError
from analysis.plotting.common import PlotArtists, get_ax

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from matplotlib.axes import Axes

__all__ = ["plot_table"]


def _fmt(v, fmt):
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt.format(v)
    return str(v)


def plot_table(frame: pd.DataFrame, *, ax: Axes | None = None, columns: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, fmt: str | Mapping[str, str] = "{:.3g}",
               title: str | None = None, fontsize: float = 9,
               col_widths: Sequence[float] | None = None) -> PlotArtists:
    """Draw the rows of ``frame`` as a table; the Axes itself is hidden.

    Parameters
    ----------
    frame : pandas.DataFrame
    ax : matplotlib.axes.Axes, optional
    columns : sequence of str, optional
        Columns shown, in order; default all.
    col_labels : sequence of str, optional
        Header labels (mathtext allowed); default the column names.
    fmt : str or Mapping[str, str]
        ``str.format`` pattern for numbers, or one per column.
    title : str, optional
    fontsize : float
    col_widths : sequence of float, optional
        Relative widths.

    Returns
    -------
    PlotArtists
        ``"table"`` (the matplotlib Table; its cells by (row, column) from
        ``get_celld()``, row 0 the header).
    """
    columns = list(frame.columns) if columns is None else list(columns)
    missing = set(columns) - set(frame.columns)
    if missing:
        raise InputError(f"frame has no column(s) {sorted(missing)}")
    col_labels = columns if col_labels is None else list(col_labels)
    if len(col_labels) != len(columns):
        raise InputError(f"got {len(col_labels)} col_labels for {len(columns)} columns")
    ax = get_ax(ax)
    cells = [[_fmt(v, fmt.get(c, "{:.3g}") if hasattr(fmt, "get") else fmt) for c, v in zip(columns, row)]
             for row in frame[columns].itertuples(index=False)]
    table = ax.table(cellText=cells, colLabels=col_labels, loc="center", cellLoc="center",
                     colWidths=col_widths)
    table.auto_set_font_size(False)
    table.set_fontsize(fontsize)
    table.scale(1.0, 1.5)
    for (r, _), cell in table.get_celld().items():
        if r == 0:
            cell.set_facecolor("#e8e8e8")
            cell.set_text_props(weight="bold")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=fontsize + 1)
    return PlotArtists(ax, {"table": table})
