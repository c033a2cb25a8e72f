"""Exceptions raised on bad input, and on failures of the environment.

Every message is one line that names the file, the key (when there is one) and
what was expected, so that the command-line tools can print it as is:
:class:`AdapterError` (the input's fault) becomes exit code 2,
:class:`EnvironmentFault` (the machine's: a lost Dask scheduler, a missing optional
package, no memory left) exit code 3 (see :mod:`analysis.cli.common`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

__all__ = ["AdapterError", "MissingAlphaError", "UnsupportedAdapterError", "EnvironmentFault", "format_error"]


def format_error(path: str | os.PathLike[str] | None, key: str | None = None, message: str = "") -> str:
    """Build the one-line message ``"<path>: key '<key>': <message>"``.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file or folder the problem was found in.
    key : str, optional
        The tensor or configuration key concerned.
    message : str
        What was expected and what was found.

    Returns
    -------
    str
        A single line (newlines in ``message`` are replaced by spaces).
    """
    parts = []
    if path is not None:
        parts.append(str(path))
    if key is not None:
        parts.append(f"key '{key}'")
    parts.append(" ".join(str(message).split()))
    return ": ".join(parts)


class AdapterError(ValueError):
    """A checkpoint or base model cannot be read or analysed as asked.

    Parameters
    ----------
    message : str
        What was expected and what was found.
    path : str or os.PathLike, optional
        The file concerned; prefixed to the message.
    key : str, optional
        The tensor or configuration key concerned; named in the message.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None,
                 key: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.key = key
        super().__init__(format_error(path, key, message) if (path or key) else " ".join(str(message).split()))


class MissingAlphaError(AdapterError):
    """The scale numerator α is not stored in the checkpoint and was not given."""


class UnsupportedAdapterError(AdapterError):
    """The checkpoint is a recognised variant whose update is not ``s · B A``."""


class EnvironmentFault(RuntimeError):
    """The environment failed, not the input: a Dask scheduler lost or not answering, an optional package
    missing, memory exhausted. The message names what failed and how to fix it; commands exit with code 3.

    Parameters
    ----------
    message : str
        What failed.
    fix : str, optional
        What to do about it (appended after a semicolon).
    what : str, optional
        The option or file concerned (prefixed to the message).
    """

    def __init__(self, message: str, *, fix: str | None = None, what: str | None = None) -> None:
        self.fix, self.what = fix, what
        text = " ".join(str(message).split())
        if fix:
            text = f"{text}; {' '.join(str(fix).split())}"
        super().__init__(f"{what}: {text}" if what else text)
