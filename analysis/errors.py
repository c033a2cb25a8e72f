"""Exceptions raised on bad input, and on failures of the environment.

Every message is one line that names the file, the key (when there is one) and
what was expected, so that the command-line tools can print it as is:
:class:`InputError` (the input's fault: a bad argument or option value, a pattern,
and its subclass :class:`AdapterError` for a file that cannot be read or analysed)
becomes exit code 2, :class:`EnvironmentFault` (the machine's: a lost Dask scheduler,
a missing optional package, no memory left) exit code 3, and any other exception,
a plain ``ValueError`` included, is a bug in the toolkit: exit code 1 with its
traceback kept (see :mod:`analysis.cli.common`).

Both :class:`InputError` and :class:`AdapterError` are ``ValueError`` subclasses, so
``except ValueError`` in user code keeps catching them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

__all__ = ["InputError", "AdapterError", "MissingAlphaError", "UnsupportedAdapterError", "EnvironmentFault",
           "format_error"]


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


class InputError(ValueError):
    """An input the toolkit cannot work with that is not an adapter file: a bad argument or option value
    (out of range, not one of the accepted strings, shapes that do not match), a module pattern, a layer
    selection.

    The command-line tools print its message as one line and exit with code 2. A ``ValueError`` that is not
    an ``InputError`` is taken for a bug in the toolkit (exit code 1, traceback kept).

    Parameters
    ----------
    message : str
        What was expected and what was found.

    Examples
    --------
    >>> from analysis.errors import AdapterError, InputError
    >>> issubclass(AdapterError, InputError) and issubclass(InputError, ValueError)
    True
    """


class AdapterError(InputError):
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
