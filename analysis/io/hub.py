"""Hugging Face repo ids (``org/name``) resolved through the local Hugging Face cache, offline.

``load_adapter("org/name")`` and ``--base org/name`` look the id up with
``huggingface_hub.snapshot_download(..., local_files_only=True)``: the cache (``HF_HOME`` /
``HF_HUB_CACHE``) is read, the network never used; ``revision`` (a branch, tag or commit) and
``subfolder`` work as in PEFT's ``from_pretrained``. A cache miss is one line that says how to fetch it.
A path that exists is always taken as a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from analysis.errors import AdapterError

__all__ = ["is_repo_id", "resolve_repo"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
#: What a snapshot folder of the cache is named: a commit hash (what ``refs/<revision>`` holds).
_COMMIT = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


def is_repo_id(path: object) -> bool:
    """True for a string shaped like ``org/name`` that is not an existing path.

    >>> is_repo_id("peft-internal-testing/tiny-lora"), is_repo_id("./checkpoints/r8"), is_repo_id("a/b/c")
    (True, False, False)
    """
    s = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    return (s is not None and _REPO_ID.match(s) is not None and ".." not in s and not s.endswith(".")
            and not os.path.exists(s))


def resolve_repo(repo_id: str, *, revision: str | None = None, subfolder: str | None = None,
                 repo_type: str = "model") -> Path:
    """The local folder of a repo id (and subfolder) in the Hugging Face cache.

    Parameters
    ----------
    repo_id : str
        ``org/name``.
    revision : str, optional
        Branch, tag or commit hash (default: ``main``).
    subfolder : str, optional
        A folder inside the repository (as PEFT's ``subfolder=``).
    repo_type : {"model", "dataset"}

    Returns
    -------
    Path

    Raises
    ------
    AdapterError
        ``huggingface_hub`` missing, the id (at that revision) not in the cache, or no such subfolder.
    """
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise AdapterError("a Hugging Face repo id needs the huggingface_hub package (pip install huggingface_hub); "
                           "or pass a local path", path=repo_id) from None
    at = f" at revision {revision!r}" if revision else ""
    if revision is not None and (not isinstance(revision, str) or not revision or ".." in revision
                                 or revision.startswith("/") or "\\" in revision or "\0" in revision):
        raise AdapterError(f"expected a branch, tag or commit as revision, got {revision!r}", path=repo_id)
    try:
        folder = snapshot_download(repo_id, revision=revision, repo_type=repo_type, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
        if isinstance(e, ValueError) and not isinstance(e, LocalEntryNotFoundError):
            raise AdapterError(f"expected a Hugging Face repo id, got an invalid one ({' '.join(str(e).split())[:120]})",
                               path=repo_id) from None
        fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        raise AdapterError(f"not a local path, and not in the local Hugging Face cache{at} "
                           f"({constants.HF_HUB_CACHE}); fetch it first with `{fetch}` (or "
                           f"huggingface_hub.snapshot_download({repo_id!r})), or pass a local path",
                           path=repo_id) from None
    p = _check_snapshot(Path(folder), repo_id, revision)
    if subfolder:
        sub = Path(subfolder)
        if sub.is_absolute() or ".." in sub.parts:
            raise AdapterError(f"expected a subfolder inside the repository, got {subfolder!r}", path=repo_id)
        p = p / sub
        if not p.exists():
            have = sorted(d.name for d in Path(folder).iterdir())[:6]
            raise AdapterError(f"no subfolder {subfolder!r} in the cached snapshot{at}; it holds {', '.join(have)}",
                               path=repo_id)
    return p


def _check_snapshot(folder, repo_id, revision):
    """The snapshot folder ``snapshot_download`` returned, checked to be ``snapshots/<commit>`` of the cache.

    ``refs/<revision>`` is a file in the cache naming the commit; one edited to hold ``../..`` would send the
    reader anywhere on the disk. The folder's name must be a commit hash, directly under ``snapshots/``.
    """
    if not _COMMIT.match(folder.name) or folder.parent.name != "snapshots" or ".." in folder.parts:
        raise AdapterError(f"the local Hugging Face cache gives {str(folder)!r} as the snapshot of revision "
                           f"{revision or 'main'!r}, which is no commit hash under snapshots/ (a damaged or crafted "
                           f"refs/{revision or 'main'} file?); expected 40 hex digits", path=repo_id)
    return folder
