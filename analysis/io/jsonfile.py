"""A JSON object read from a file, a damaged file being one clear error naming it (run manifests, states)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from analysis.errors import AdapterError

if TYPE_CHECKING:
    import os

__all__ = ["read_json_object"]


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in ``path``.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict

    Raises
    ------
    AdapterError
        Invalid JSON or text, or JSON that is not an object (naming ``path``).
    OSError
        The file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            out = json.load(fh)
    except (ValueError, RecursionError) as e:  # invalid JSON or text (UnicodeDecodeError is a ValueError)
        raise AdapterError(f"expected a JSON object, got {type(e).__name__}: {' '.join(str(e).split())[:200]}",
                           path=path) from None
    if not isinstance(out, dict):
        raise AdapterError(f"expected a JSON object, got {type(out).__name__}", path=path)
    return out
