"""Where an output may go: never over an input, the working directory or the home folder; with ``--force``, only
over what the toolkit itself wrote there (see :mod:`analysis.io.outputs` for the whole contract).

- :func:`protect` registers the paths no output may be, hold or lie above (the commands register every
  argument that names an existing path); the working directory and the home folder are always protected.
  Paths are compared as resolved paths and as file identities (device, inode), so symbolic links, bind mounts
  and hard links do not get round it; an existing file inside an input folder is protected too.
- :func:`check_target` refuses, before any work, a target that is protected, is a mount point, exists without
  ``--force``, or with ``--force`` is not something the toolkit writes: a file of another kind (judged by its
  first bytes: JSON, CSV, PNG, PDF, SVG, safetensors …), a folder holding files its manifest does not list.
- A folder output's manifest lists the files it wrote: an extended attribute of the folder
  (:data:`MANIFEST_XATTR`), or where the filesystem has none a hidden :data:`MANIFEST_FILE` inside it; the
  report keeps its own ``MANIFEST``.
- :func:`target_type` tells the targets that are no path to replace: ``-`` (standard output), the null device
  and other character devices or FIFOs (streams). They are written without ``--force`` (nothing there can be
  lost) and never replaced; ``-`` takes a file's data only (text, or binary data when standard output is not a
  terminal), a stream other than the null device takes no folder (the null device discards one).
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
import zlib
from typing import TYPE_CHECKING, TextIO

from analysis.errors import AdapterError
from analysis.io.durable import tidy

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["kind_of", "protect", "check_target", "target_type", "stream_label", "stdout_is_terminal", "standard_output",
           "data_stream", "is_text_kind", "write_manifest", "MANIFEST_FILE", "MANIFEST_XATTR", "STDOUT"]

#: The target naming standard output.
STDOUT = "-"

#: Hidden file listing a folder output's files, where the filesystem has no extended attributes.
MANIFEST_FILE = ".lora-subspace-manifest"
#: Extended attribute of a folder output listing its files (zlib-compressed, one name per line).
MANIFEST_XATTR = "user.lora-subspace-analysis.manifest"

_PROTECTED: list[tuple[str, str, bool]] = []  # (path, what, contents_too) registered by protect(), newest last
_PROTECTED_LOCK = threading.Lock()


@contextlib.contextmanager
def protect(paths: Iterable[str | os.PathLike[str] | None], *,
            what: str = "an input of this command") -> Iterator[None]:
    """Refuse, while inside, any output that is, holds or lies above one of ``paths``, or replaces a file inside
    one of them.

    The commands protect their inputs (every argument that names an existing path); the working directory
    and the home folder are always protected (as a whole: files inside them may be replaced with ``--force``).

    Parameters
    ----------
    paths : iterable of str or os.PathLike
    what : str
        How the refusal names them.
    """
    items = [(os.path.abspath(os.fspath(p)), what, True) for p in paths if p is not None]
    with _PROTECTED_LOCK:
        _PROTECTED.extend(items)
    try:
        yield
    finally:
        with _PROTECTED_LOCK:
            for it in items:
                with contextlib.suppress(ValueError):
                    _PROTECTED.remove(it)


def _protected():
    """``[(path, what, contents_too)]``: the registered inputs (their contents protected too), the working
    directory and the home folder."""
    with _PROTECTED_LOCK:
        out = list(_PROTECTED)
    with contextlib.suppress(OSError):
        out.append((os.getcwd(), "the working directory", False))
    home = os.path.expanduser("~")
    if home and home != "~":
        out.append((home, "your home folder", False))
    return out


def _ids_up(path):
    """(st_dev, st_ino) of ``path`` and of every folder above it."""
    ids, p = set(), os.path.realpath(path)
    while True:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            ids.add((st.st_dev, st.st_ino))
        up = os.path.dirname(p)
        if up == p:
            return ids
        p = up


def _inside(inner, outer):
    try:
        return os.path.commonpath([inner, outer]) == outer
    except ValueError:
        return False


def _file_id(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_or_holds(real, protected, target_id):
    """``"is"`` / ``"holds"`` when the target ``real`` is / lies above ``protected`` (by path or identity)."""
    if protected == real:
        return "is"
    if _inside(protected, real):
        return "holds"
    if target_id is not None and target_id in _ids_up(protected):  # a link or a bind mount of it, or above it
        return "is" if _same_file(real, protected) else "holds"
    return None


def _replaces_inside(real, protected, target_id, up):
    """Why replacing the existing target ``real`` would touch the contents of input ``protected``, or None."""
    pid = _file_id(protected)
    if pid is not None and os.path.isdir(protected) and (_inside(real, protected) or pid in up):
        return "lies inside {} and exists: replacing it could destroy the input"
    if os.path.isfile(real) and os.stat(real).st_nlink > 1 and _holds_inode(protected, target_id):
        return "is a hard link to a file of {}; an output there would destroy it"
    return None


def _refuse_protected(real, label):
    """Raise if ``real`` is, holds or lies above a protected path, or (existing) replaces a file inside an input."""
    target_id = _file_id(real)  # None: nothing there, it cannot hold anything
    up = _ids_up(real) if target_id is not None else set()  # the target and the folders above it
    for p, what, contents in _protected():
        pr = os.path.realpath(p)
        named = f"{what} ({p})" if contents else what
        verb = _is_or_holds(real, pr, target_id)
        if verb:
            raise AdapterError(f"{verb} {named}; an output there would destroy it: choose another path "
                               "(--force does not change this)", path=label)
        why = _replaces_inside(real, pr, target_id, up) if contents and target_id is not None else None
        if why:
            raise AdapterError(why.format(named) + "; choose another path (--force does not change this)",
                               path=label)


def _holds_inode(path, ident, limit=20_000):
    """Whether ``path`` (a file, or a folder searched to ``limit`` entries) is or holds the file ``ident``."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if (st.st_dev, st.st_ino) == ident:
        return True
    if not stat.S_ISDIR(st.st_mode):
        return False
    seen = 0
    for root, dirs, files in os.walk(path):
        for f in files:
            seen += 1
            with contextlib.suppress(OSError):
                s = os.stat(os.path.join(root, f))
                if (s.st_dev, s.st_ino) == ident:
                    return True
        if seen > limit:
            return False
    return False


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ---------------------------------------------------------------------------- targets that are no path

def target_type(path: str | os.PathLike[str]) -> str:
    """What kind of target ``path`` is.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        ``"stdout"`` for ``-``; ``"null"`` for the null device (``/dev/null`` or a link to it); ``"stream"``
        for another character device or a FIFO (links followed); ``"path"`` for everything else (a file, a
        folder, nothing yet).
    """
    text = os.fspath(path)
    if text in (STDOUT, os.fsencode(STDOUT)):
        return "stdout"
    try:
        st = os.stat(text)
    except (OSError, ValueError):
        return "path"
    if stat.S_ISCHR(st.st_mode):
        return "null" if _is_null(st) else "stream"
    if stat.S_ISFIFO(st.st_mode):
        return "stream"
    return "path"


def _is_null(st):
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(null.st_mode) and st.st_rdev == null.st_rdev


#: Kinds of file whose data is text (safe on a terminal).
_TEXT_DATA = {"json", "csv", "tsv", "txt", "md", "html", "svg", "pgf", "ps", "eps"}


def is_text_kind(kind: str | None) -> bool:
    """Whether a file of ``kind`` (``json``, ``png`` …) is text; None (unknown) counts as binary."""
    return kind in _TEXT_DATA


_DATA: list[TextIO] = []  # the standard outputs ``-`` writes to, innermost last (see standard_output)


@contextlib.contextmanager
def standard_output(stream: TextIO) -> Iterator[TextIO]:
    """Inside the block, ``-`` writes to ``stream``: the standard output a command started with, while its
    messages go to standard error (the commands' runner does this when an output is ``-``)."""
    _DATA.append(stream)
    try:
        yield stream
    finally:
        _DATA.remove(stream)


def data_stream() -> TextIO:
    """Where ``-`` writes now: the stream of :func:`standard_output`, else ``sys.stdout``."""
    import sys

    return _DATA[-1] if _DATA else sys.stdout


def stdout_is_terminal(stream: TextIO | None = None) -> bool:
    """Whether the standard output ``-`` writes to (``stream``, default :func:`data_stream`) is a terminal."""
    stream = stream if stream is not None else data_stream()
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _check_stream(shown, where, *, folder, kind, label):
    """Refuse what a target that is no path cannot take (see :func:`target_type`)."""
    if where == "null":
        return  # discards anything, a folder included
    if where == "stdout":
        if folder:
            raise AdapterError("standard output takes a file's data, and this output is a folder; give a folder "
                               "path", path=label)
        if not is_text_kind(kind) and stdout_is_terminal():
            what = f"{kind.upper()} data" if kind else "binary data"
            raise AdapterError(f"would write {what} to the terminal; redirect standard output (> file, | program) "
                               "or give a file name", path=label)
        return
    _refuse_protected(os.path.realpath(shown), label)
    if folder:
        what = "a FIFO" if stat.S_ISFIFO(os.stat(shown).st_mode) else "a character device"
        raise AdapterError(f"is {what}, and this output is a folder; give a folder path ({os.devnull} discards "
                           "it)", path=label)


# ---------------------------------------------------------------------------- what the toolkit wrote

_FIGURE_MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "pdf": (b"%PDF",), "ps": (b"%!PS",), "eps": (b"%!PS", b"\xc5\xd0\xd3\xc6"),
                 "jpg": (b"\xff\xd8\xff",), "jpeg": (b"\xff\xd8\xff",), "tif": (b"II*\x00", b"MM\x00*"),
                 "tiff": (b"II*\x00", b"MM\x00*"), "svgz": (b"\x1f\x8b",)}
_TEXT_KINDS = {"csv", "md", "txt", "html", "pgf", "tsv"}


def kind_of(path: str | os.PathLike[str]) -> str | None:
    """The kind of file a name's suffix says: ``json``, ``csv``, ``png`` …, or None."""
    ext = os.path.splitext(str(path))[1].lower().lstrip(".")
    return ext or None


def _is_text(head):
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a character cut at the end of the sample
    return True


def _looks_like(path, kind):
    """Whether the existing regular file ``path`` is a file of ``kind`` (empty files are of every kind)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if size == 0 or kind is None:
        return True
    if kind == "json":
        return _is_text(head) and head.lstrip()[:1] in (b"{", b"[")
    if kind in _TEXT_KINDS:
        return _is_text(head)
    if kind == "svg":
        return _is_text(head) and (b"<svg" in head or head.lstrip().startswith(b"<?xml"))
    if kind == "webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if kind == "safetensors":
        if len(head) < 9:
            return False
        (n,) = struct.unpack("<Q", head[:8])
        return 0 < n <= size - 8 and head[8:9] == b"{"
    if kind in _FIGURE_MAGIC:
        return head.startswith(_FIGURE_MAGIC[kind])
    return True  # a kind with no signature checked here (raw, rgba …)


def _manifest(folder, manifest=None):
    """The names a folder output's manifest lists, or None when it has none."""
    if manifest:
        try:
            with open(os.path.join(folder, manifest), encoding="utf-8") as fh:
                return {line.strip() for line in fh if line.strip()} | {manifest}
        except (OSError, UnicodeDecodeError):
            return None
    try:
        raw = os.getxattr(folder, MANIFEST_XATTR)
        return set(zlib.decompress(raw).decode("utf-8").splitlines())
    except (OSError, AttributeError, zlib.error, UnicodeDecodeError):
        pass
    try:
        with open(os.path.join(folder, MANIFEST_FILE), encoding="utf-8") as fh:
            return {line.strip() for line in fh if line.strip()} | {MANIFEST_FILE}
    except (OSError, UnicodeDecodeError):
        return None


def write_manifest(folder: str | os.PathLike[str], manifest: str | None = None) -> None:
    """Record the names in ``folder`` (a finished temporary) as what this output wrote."""
    names = sorted(n for n in os.listdir(folder) if n != MANIFEST_FILE)
    if manifest:
        if manifest not in names:  # the caller keeps its own list (the report's MANIFEST)
            with open(os.path.join(folder, manifest), "w", encoding="utf-8") as fh:
                fh.write("".join(f"{n}\n" for n in names))
        return
    data = zlib.compress("\n".join(names).encode("utf-8"))
    try:
        os.setxattr(folder, MANIFEST_XATTR, data)
        return
    except (OSError, AttributeError):
        pass
    with open(os.path.join(folder, MANIFEST_FILE), "w", encoding="utf-8") as fh:
        fh.write("".join(f"{n}\n" for n in names))


def _names(items, limit=4):
    items = sorted(items)
    return ", ".join(items[:limit]) + (" …" if len(items) > limit else "")


def _real(path):
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def stream_label(shown: str, where: str, option: str | None = None) -> str:
    """How messages name a target that is no path: ``--json - (standard output)``, ``--json /dev/null``."""
    text = f"{shown} (standard output)" if where == "stdout" else shown
    return f"{option} {text}" if option else text


def check_target(path: str | os.PathLike[str], *, force: bool = False, folder: bool | None = None,
                 kind: str | None = None, option: str | None = None, manifest: str | None = None,
                 owned: bool = False) -> None:
    """Refuse, before any work, a target that would lose something.

    ``-`` (standard output), the null device, FIFOs and other character devices lose nothing: they are
    accepted without ``force`` (see :func:`target_type`), but ``-`` takes no folder nor binary data for a
    terminal, and a FIFO or character device other than the null device takes no folder.

    Parameters
    ----------
    path : str or os.PathLike
    force : bool
        Allow replacing an existing output of the toolkit's (see below).
    folder : bool, optional
        The output is a folder (True) or a file (False); None: judged by what is there.
    kind : str, optional
        The kind of file written (``json``, ``csv``, ``png`` …); default: from the suffix.
    option : str, optional
        The command-line option naming the target (``--json``), named in the refusal.
    manifest : str, optional
        A folder output's own list of its files (the report's ``MANIFEST``): a folder holding only those is
        replaced without ``force``.
    owned : bool
        The caller owns the folder whole, whatever it holds (a training run's folder, see
        :func:`~analysis.io.outputs.replace_folder`): an existing folder is accepted without ``force`` and
        without a manifest; the other refusals hold.

    Raises
    ------
    AdapterError
        The target is, holds or lies above an input, the working directory or the home folder; is a mount
        point; exists without ``force``; or, with ``force``, is not something the toolkit writes (a file of
        another kind, a folder with files its manifest does not list, a file where a folder goes or the other
        way round); is a folder (or ends in ``/``) where a file goes; is ``-``, a FIFO or a character device
        (other than the null device) where a folder goes; is ``-`` for binary data on a terminal.
    """
    where = target_type(path)
    if where != "path":
        shown = STDOUT if where == "stdout" else os.path.abspath(os.fspath(path))
        label = stream_label(shown, where, option)
        _check_stream(shown, where, folder=folder, kind=kind or kind_of(shown), label=label)
        return
    shown = os.path.abspath(os.fspath(path))
    label = f"{option} {shown}" if option else shown
    if folder is False and str(os.fspath(path)).endswith(("/", os.sep)):
        raise AdapterError("names a folder (it ends in /), and this output is a file; choose a file name",
                           path=label)
    real = _real(shown)
    _refuse_protected(real, label)
    tidy(shown, label)  # a dead writer's pieces: its replacement finished or undone, its temporaries removed
    if not os.path.lexists(real):
        return
    try:
        st = os.stat(real)
    except OSError as e:
        raise AdapterError(f"cannot look at it: {e.strerror}", path=label) from None
    if os.path.ismount(real):
        raise AdapterError("is a mount point, which cannot be replaced; write into a folder inside it", path=label)
    isdir = stat.S_ISDIR(st.st_mode)
    if folder is True and not isdir:
        raise AdapterError("is a file, and this output is a folder; choose another path", path=label)
    if folder is False and isdir:
        raise AdapterError("is a folder, and this output is a file; choose a file name", path=label)
    if isdir:
        if owned:
            return  # its owner replaces it whole (what it keeps is carried over by the writer)
        present = set(os.listdir(real))
        if not present:
            return  # an empty folder holds nothing to lose
        own = _manifest(real, manifest)
        foreign = present - own if own is not None else present
        if manifest and not foreign:
            return  # the command's own earlier output: replaced without asking
        if not force:
            raise AdapterError("already exists; choose another path or pass --force to replace it", path=label)
        if foreign:
            raise AdapterError(f"holds files this toolkit did not write there ({_names(foreign)}); --force replaces "
                               "only a folder the toolkit wrote: move them or choose another path", path=label)
        return
    if not stat.S_ISREG(st.st_mode):
        raise AdapterError("is neither a regular file, a folder, a FIFO nor a character device (a socket, a block "
                           "device?); choose another path", path=label)
    if not force:
        raise AdapterError("already exists; choose another path or pass --force to replace it", path=label)
    kind = kind or kind_of(shown)
    if not _looks_like(real, kind):
        what = f"a {kind.upper()} file" if kind else "a file of the kind this command writes"
        raise AdapterError(f"is not {what}; --force replaces only a file of the kind this command "
                           "writes: choose another path", path=label)
