"""Shared plumbing of the command-line tools: one-line errors and exit codes.

Exit codes: 0 on success, 2 on bad input (one line on standard error naming
the file and the problem, no traceback), 1 on an internal error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from analysis.errors import AdapterError

__all__ = ["Parser", "run", "json_ready", "write_json", "layer_str"]


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors are one line and exit with code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run(body, args):
    """Call ``body(args)`` and map failures to exit codes.

    Parameters
    ----------
    body : callable
        Takes the parsed arguments and returns ``None`` or an exit code.
    args : argparse.Namespace
        Needs a ``debug`` attribute.

    Returns
    -------
    int
        0 on success; 2 for :class:`~analysis.errors.AdapterError`,
        ``ValueError``, ``OSError`` (bad input: one line on stderr);
        1 for anything else.
    """
    try:
        code = body(args)
    except (AdapterError, ValueError, OSError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split())
        if isinstance(e, OSError) and getattr(e, "filename", None) and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # pragma: no cover - only on bugs
        if args.debug:
            raise
        print(f"internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
              "(rerun with --debug for a traceback)", file=sys.stderr)
        return 1
    return 0 if code is None else int(code)


def json_ready(obj):
    """Recursively turn numpy scalars / arrays and NaN into JSON-safe values."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "tolist"):
        return json_ready(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj):
    """Write ``obj`` as indented JSON (numpy values converted)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(json_ready(obj), fh, indent=1)
        fh.write("\n")


def layer_str(layer):
    """Layer index as text, ``-`` when there is none."""
    if layer is None or (isinstance(layer, float) and math.isnan(layer)):
        return "-"
    return str(int(layer))
