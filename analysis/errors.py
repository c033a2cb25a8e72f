"""Exceptions raised on bad input.

Every message is one line that names the file, the key (when there is one) and
what was expected, so that the command-line tools can print it as is.
"""

from __future__ import annotations

__all__ = ["AdapterError", "MissingAlphaError", "UnsupportedAdapterError", "format_error"]


def format_error(path, key=None, message=""):
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

    def __init__(self, message, *, path=None, key=None):
        self.path = None if path is None else str(path)
        self.key = key
        super().__init__(format_error(path, key, message) if (path or key) else " ".join(str(message).split()))


class MissingAlphaError(AdapterError):
    """The scale numerator α is not stored in the checkpoint and was not given."""


class UnsupportedAdapterError(AdapterError):
    """The checkpoint is a recognised variant whose update is not ``s · B A``."""
