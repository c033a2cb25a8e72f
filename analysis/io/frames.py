"""Save and reload the tidy sweep DataFrames with their dtypes.

Two formats, chosen by the file suffix:

* ``.json``: pandas' ``orient="table"`` (a JSON Table Schema next to the
  records), which restores every dtype by itself;
* ``.csv``: plain CSV preceded by one comment line ``# dtypes: {...}``;
  :func:`load_frame` restores the dtypes from it, and any other tool can read
  the file with ``pandas.read_csv(path, comment="#")`` or by skipping one line.

Parquet is not used (no pyarrow dependency).
"""

from __future__ import annotations

import io
import json
import os
from typing import TYPE_CHECKING

from analysis.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["save_frame", "load_frame", "FRAME_FORMATS"]

#: File suffixes understood by :func:`save_frame` / :func:`load_frame`.
FRAME_FORMATS = frozenset({".csv", ".json"})
_HEADER = "# dtypes: "


def _format(path, format):
    fmt = format if format is not None else os.path.splitext(os.fspath(path))[1].lower()
    if not fmt.startswith("."):
        fmt = "." + fmt
    if fmt not in FRAME_FORMATS:
        raise InputError(f"cannot tell the format of {os.fspath(path)!r}: expected a suffix in "
                         f"{sorted(FRAME_FORMATS)} or format='csv' / 'json', got {fmt!r}")
    return fmt


def save_frame(df: pd.DataFrame, path: str | os.PathLike[str], *, format: str | None = None) -> str:
    """Write a DataFrame so that :func:`load_frame` gives it back with the same dtypes.

    Parameters
    ----------
    df : pandas.DataFrame
        Columns of scalar values (numbers, booleans, strings, nullable integers).
    path : str or os.PathLike
    format : {"csv", "json"}, optional
        Default: from the suffix of ``path``.

    Returns
    -------
    str
        The path written.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    fmt = _format(path, format)
    path = os.fspath(path)
    df = df.reset_index(drop=True)
    if fmt == ".json":
        with open(path, "w") as fh:
            fh.write(df.to_json(orient="table", index=False, double_precision=15))
    else:
        dtypes = {str(c): str(t) for c, t in df.dtypes.items()}
        with open(path, "w", newline="") as fh:
            fh.write(_HEADER + json.dumps(dtypes) + "\n")
            df.to_csv(fh, index=False, float_format="%.17g")
    return path


def _restore(series, dtype):
    import pandas as pd

    if dtype == "bool":
        return series.map(lambda v: v if isinstance(v, bool) else str(v).strip().lower() == "true").astype(bool)
    if dtype in ("str", "string", "object"):
        return series.astype(object).where(series.notna(), None) if dtype == "object" else series.astype(dtype)
    try:
        return series.astype(dtype)
    except (TypeError, ValueError):
        return pd.to_numeric(series, errors="coerce").astype(dtype)


def load_frame(path: str | os.PathLike[str], *, format: str | None = None) -> pd.DataFrame:
    """Read a DataFrame written by :func:`save_frame`, dtypes restored.

    Parameters
    ----------
    path : str or os.PathLike
    format : {"csv", "json"}, optional
        Default: from the suffix of ``path``.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> import pandas as pd, tempfile, os
    >>> df = pd.DataFrame({"layer": [0, 1], "phi": [0.5, float("nan")], "zero": [False, True]})
    >>> p = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = save_frame(df, p)
    >>> load_frame(p).dtypes.astype(str).tolist()
    ['int64', 'float64', 'bool']
    """
    import pandas as pd

    fmt = _format(path, format)
    path = os.fspath(path)
    if fmt == ".json":
        with open(path) as fh:
            return pd.read_json(io.StringIO(fh.read()), orient="table")
    with open(path, newline="") as fh:
        first = fh.readline()
        if not first.startswith(_HEADER):
            fh.seek(0)
            return pd.read_csv(fh)
        dtypes = json.loads(first[len(_HEADER):])
        df = pd.read_csv(fh, keep_default_na=True)
    for col, dt in dtypes.items():
        if col in df.columns:
            df[col] = _restore(df[col], dt)
    return df
