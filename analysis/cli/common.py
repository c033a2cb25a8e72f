"""What every command shares: the parser, the runner (one-line errors, exit codes) and the printer.

Exit codes: 0 on success, 2 on bad input (one line on standard error naming
the file and the problem, no traceback), 1 on an internal error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from analysis.errors import AdapterError
from analysis.io.outputs import json_ready, provenance, write_json

__all__ = ["Parser", "run", "json_ready", "write_json", "layer_str", "fit", "describe", "wants_progress",
           "alpha_b", "print_only", "provenance", "check_outputs", "write_csv", "save_figure", "tolerance_setting"]


def _prog(module):
    """The command as the user typed it: the console script's name, or ``python -m analysis.X``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name.startswith("lora-"):
        return name
    return f"python -m {module}"


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors are one line and exit with code 2; shared options.

    Parameters
    ----------
    module : str
        The documented ``python -m`` module (``analysis.subspace``); ``prog`` is the console script
        instead when the user ran one.
    **kwargs
        For ``argparse.ArgumentParser``.
    """

    def __init__(self, module, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("prog", _prog(module))
        super().__init__(**kwargs)
        self.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def add_alpha(self, *, pair=False, needed="Needed for norms, not for subspaces."):
        """``--alpha`` (and with ``pair`` ``--alpha-b``): α for formats that do not store it (loralib)."""
        both = "; applies to both adapters unless --alpha-b is given" if pair else ""
        self.add_argument("--alpha", type=float, default=None,
                          help=f"scale numerator alpha for formats that do not store it (loralib){both}. {needed}")
        if pair:
            self.add_argument("--alpha-b", type=float, default=None,
                              help="alpha for the second adapter if it differs from --alpha")

    def add_filters(self):
        """``--modules REGEX …`` and ``--layers SPEC``."""
        self.add_argument("--modules", nargs="+", metavar="REGEX", default=None,
                          help="only modules whose name matches one of these regular expressions (e.g. q_proj)")
        self.add_argument("--layers", default=None, metavar="SPEC",
                          help="only these layers, e.g. '0,15,29' or '10-19'")

    def add_force(self):
        """``--force``: replace outputs that already exist (without it they are refused before any work)."""
        self.add_argument("--force", action="store_true",
                          help="replace output files or folders that already exist (default: refuse them)")

    def add_jobs(self):
        """``--jobs N``: modules worked on at once (default: the cores available to the process)."""
        self.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                          help="modules worked on at once (N >= 1), in threads with BLAS pinned to one thread each "
                               "(default: the cores this process may use: CPU affinity and cgroup quota)")

    def add_cache(self):
        """``--no-cache``: neither read nor write the persistent cache of base-weight SVDs."""
        self.add_argument("--no-cache", action="store_true",
                          help="do not use the persistent cache of the base weights' top singular triplets "
                               "($XDG_CACHE_HOME/lora-subspace-analysis or ~/.cache/lora-subspace-analysis; "
                               "LORA_SUBSPACE_CACHE overrides the folder)")

    def add_tolerance(self):
        """``--tolerance T``: accuracy of the base weights' top singular triplets (see :func:`tolerance_setting`)."""
        from analysis.core.randomized import DEFAULT_TOLERANCE, TOLERANCES

        ladder = ", ".join(f"{_sci(t)} ({n} iterations)" for t, n in TOLERANCES)
        self.add_argument("--tolerance", type=_tolerance, default=None, metavar="T",
                          help="accuracy of the top singular triplets of each base weight W (randomized block "
                               "Krylov SVD): each singular value within T * sigma_1 of the exact one, and each "
                               "top-j singular subspace within T * sigma_1 / (sigma_j - sigma_j+1) (sine of its "
                               "largest principal angle), as measured on flat-spectrum matrices up to 2048 x 2048 "
                               "(README, Performance); larger is faster. Settings: "
                               f"{ladder}; below {_sci(TOLERANCES[-1][0])}, or 'exact': LAPACK's full SVD in "
                               f"float64. A value in (0, 0.5]; default: {_sci(DEFAULT_TOLERANCE)} (8 iterations)")

    def add_progress(self):
        """``--progress auto|on|off`` (see :func:`wants_progress`)."""
        self.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                          help="progress bar on standard error (auto: only on a terminal)")


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _tolerance(text):
    """``--tolerance``: a float in (0, 0.5] or ``exact``, checked by :func:`~analysis.core.krylov_settings`."""
    from analysis.core.randomized import EXACT, krylov_settings

    value = EXACT if str(text).strip().lower() == EXACT else None
    try:
        if value is None:
            value = float(text)
        krylov_settings(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a relative error in (0, 0.5] (e.g. 1e-4) or '{EXACT}', "
                                         f"got {text!r}") from None
    return value


def _sci(t):
    """``1e-2`` rather than ``0.01`` or ``1e-02``."""
    return f"{t:.0e}".replace("e-0", "e-")


def tolerance_setting(args):
    """The ``--tolerance`` in effect, as recorded in a JSON output's settings: the given one, else the default.

    Returns
    -------
    float or str
        A float, or ``"exact"``.
    """
    from analysis.core.randomized import DEFAULT_TOLERANCE

    t = getattr(args, "tolerance", None)
    return DEFAULT_TOLERANCE if t is None else t


def wants_progress(args):
    """Whether to draw a progress bar: ``--progress on``, or ``auto`` on a terminal."""
    setting = getattr(args, "progress", "auto")
    return sys.stderr.isatty() if setting == "auto" else setting == "on"


def alpha_b(args):
    """α of the second adapter: ``--alpha-b``, else ``--alpha``."""
    return args.alpha_b if args.alpha_b is not None else args.alpha


#: Thread-count variables the commands set to 1 unless the user set them (see :func:`run`).
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run(body, args):
    """Call ``body(args)`` with BLAS on one thread, and map failures to exit codes.

    The commands get their parallelism from module jobs (:mod:`analysis.core.threads`), so BLAS and OpenMP
    stay on one thread throughout, as with ``OMP_NUM_THREADS=1``: the libraries already loaded through
    ``threadpoolctl``, those loaded later through the thread-count variables (set only where the user has
    not set them; child processes such as Dask workers inherit them).

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
        130 on Ctrl-C (outputs being written are removed by their writers);
        1 for anything else.
    """
    from analysis.core.allocator import reuse_freed_memory
    from analysis.core.threads import blas_threads

    reuse_freed_memory()  # each module's arrays reuse the last module's pages (no page faults per module)
    for var in _THREAD_VARS:  # BLAS / OpenMP libraries loaded from here on (scipy's, torch's) start with one thread
        os.environ.setdefault(var, "1")
    try:
        with blas_threads(1):  # and the ones already loaded (numpy's): parallelism comes from module jobs
            code = body(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted: nothing half-written was left behind", file=sys.stderr)
        return 130
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


def check_outputs(args, *names):
    """Refuse, before any work, every output option in ``names`` whose target exists, unless ``--force``."""
    from analysis.io.outputs import check_target

    for n in names:
        target = getattr(args, n, None)
        if target:
            check_target(target, force=getattr(args, "force", False))


def write_csv(frame, path, *, force):
    """A DataFrame as CSV, whole or not at all."""
    from analysis.io.outputs import atomic_output

    with atomic_output(path, force=force) as tmp:
        frame.to_csv(tmp, index=False)


def save_figure(fig, path, *, force, dpi=150):
    """Save a Figure whole or not at all; the format from the suffix, checked first."""
    from analysis.io.outputs import atomic_output

    ext = os.path.splitext(str(path))[1].lstrip(".").lower()
    formats = fig.canvas.get_supported_filetypes()
    if ext not in formats:
        raise AdapterError(f"expected a figure file name ending in one of .{', .'.join(sorted(formats))}, "
                           f"got {'.' + ext if ext else 'no suffix'}", path=path)
    with atomic_output(path, force=force) as tmp:
        fig.savefig(tmp, dpi=dpi)


def layer_str(layer):
    """Layer index as text, ``-`` when there is none."""
    if layer is None or (isinstance(layer, float) and math.isnan(layer)):
        return "-"
    return str(int(layer))


def fit(text, width=24):
    """``text`` cut to ``width`` characters from the left (``…q_proj``), for table columns."""
    text = str(text)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def describe(adapter, tag):
    """Header lines naming an adapter: ``A: path (format, n modules)`` and its reader's notes."""
    lines = [f"{tag}: {adapter.path} ({adapter.format}, {len(adapter)} modules)"]
    lines += [f"note ({tag}): {note}" for note in adapter.notes]
    return "\n".join(lines)


def print_only(only_a, only_b, *, what="not compared", limit=8, out=None):
    """Print the modules present in one adapter only, a few names each."""
    out = out or sys.stdout
    for tag, names in (("A", only_a), ("B", only_b)):
        if names:
            print(f"only in {tag} ({len(names)}, {what}): {', '.join(names[:limit])}"
                  + (" …" if len(names) > limit else ""), file=out)
