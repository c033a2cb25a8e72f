"""Safe reading of tensor files: safetensors, and ``.pt`` / ``.bin`` pickles.

Pickles are loaded only with ``torch.load(..., weights_only=True)``, never
with full unpickling, and only on torch ≥ 2.10 (older releases had ways around
``weights_only``); a zip archive whose records declare more than
:data:`MAX_EXPANSION` times its size is refused before torch reads it, and a
refusal names what the pickle would have called. Every tensor is checked for NaN / Inf and upcast from
fp16 / bf16 to float32. Every failure is an :class:`~analysis.errors.AdapterError`
naming the file and, where there is one, the key.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import AdapterError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

__all__ = ["read_tensors", "read_pickle", "check_finite", "safetensors_errors", "TENSOR_SUFFIXES", "MIN_TORCH",
           "MAX_EXPANSION"]

TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MIN_TORCH = (2, 10)
_NESTED_KEYS = ("model_state_dict", "state_dict", "model", "module")


def _to_numpy(t, path, key):
    """Torch tensor -> numpy, upcasting half precision to float32 (an array read without torch: as it is)."""
    if isinstance(t, np.ndarray) and t.dtype.kind == "f" and t.dtype.itemsize >= 4:
        return t
    import torch  # local: torch only for files that need it (+1.5 s, +190 MB when imported)

    if not isinstance(t, torch.Tensor):
        raise AdapterError(f"expected a tensor, got {type(t).__name__}", path=path, key=key)
    if t.is_complex():
        raise AdapterError(f"expected a real tensor, got {t.dtype}", path=path, key=key)
    if t.is_meta or t.layout != torch.strided:
        what = "a meta tensor (shape only, no values)" if t.is_meta else f"a {t.layout} tensor"
        raise AdapterError(f"expected a dense tensor with values, got {what}", path=path, key=key)
    if t.is_floating_point() and t.element_size() < 4:  # fp16, bf16, fp8
        t = t.to(torch.float32)
    return t.detach().cpu().numpy()


def check_finite(x: np.ndarray, path: str | os.PathLike[str] | None, key: str | None) -> np.ndarray:
    """Raise if a floating tensor holds NaN or Inf.

    Parameters
    ----------
    x : ndarray
    path : str
        File named in the message.
    key : str
        Tensor key named in the message.
    """
    # one pass with no temporary: a NaN or Inf makes the sum non-finite (finite values that overflow it are
    # then cleared by the element check)
    if x.dtype.kind != "f":
        return x
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(x)
    if not np.isfinite(total) and not np.isfinite(x).all():
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        raise AdapterError(
            f"expected finite values, got {n_nan} NaN and {n_inf} Inf in a tensor of shape {tuple(x.shape)}",
            path=path, key=key)
    return x


def _torch_version_ok():
    import torch

    parts = []
    for p in torch.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= MIN_TORCH


def _flatten(obj, path, prefix="", _seen=None):
    """Flatten nested dicts of tensors (e.g. ``{"model_state_dict": {...}}``)."""
    import torch

    _seen = set() if _seen is None else _seen
    if isinstance(obj, dict):
        if id(obj) in _seen:
            raise AdapterError(f"expected a tree of tensors, got a dict that contains itself at '{prefix}'",
                               path=path)
        if prefix.count(".") > 64:
            raise AdapterError(f"expected a state dict, got dicts nested more than 64 levels deep at "
                               f"'{prefix[:80]}…'", path=path)
        _seen = _seen | {id(obj)}
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
        return out
    if isinstance(obj, dict):
        # A checkpoint dict whose weights sit under a conventional key.
        for k in _NESTED_KEYS:
            if k in obj and isinstance(obj[k], dict) and not prefix:
                return _flatten(obj[k], path, _seen=_seen)
        for k, v in obj.items():
            if isinstance(v, (dict, torch.Tensor)):
                out.update(_flatten(v, path, f"{prefix}{k}.", _seen))
    return out


#: What a ``.pt`` zip archive may declare it holds, uncompressed, relative to its size (``torch.save`` stores its
#: records uncompressed: about 1x); beyond it the file is refused before torch reads it.
MAX_EXPANSION = 4
_EXPANSION_SLACK = 16 << 20


def _check_archive(path):
    """Refuse a zip ``.pt`` whose records declare more bytes than the file can hold (a zip bomb), before
    ``torch.load`` allocates them."""
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError, struct.error) as e:
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise AdapterError(f"cannot read as a torch checkpoint (a damaged zip archive): {msg}", path=path) from None
    declared = sum(max(int(i.file_size), 0) for i in infos)
    bound = MAX_EXPANSION * size + _EXPANSION_SLACK
    if declared > bound:
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        raise AdapterError(f"refused to load: its records declare {_size(declared)} of data in a file of "
                           f"{_size(size)} (more than {MAX_EXPANSION}x its size"
                           + (f"; {len(packed)} compressed, e.g. {packed[0]!r}" if packed else "")
                           + "): a zip bomb? torch.save writes records uncompressed", path=path)


def _size(n):
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def _refusal(e):
    """What ``weights_only`` refused, in a few words (the global or operand named), from torch's message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"the pickle calls {m.group(1)}, which a state dict never does"
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    reasons = [p for p in paragraphs if not p.startswith(("Weights only load failed", "Check the documentation"))
               and "weights_only" not in p[:80]]
    reason = (reasons[0] if reasons else (paragraphs[0] if paragraphs else type(e).__name__))[:160]
    return f"the pickle holds more than tensors and containers ({reason})"


def read_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tensors of a ``.pt`` / ``.bin`` pickle, read only by ``torch.load(weights_only=True)``.

    Refused before loading: torch older than :data:`MIN_TORCH`, a zip archive declaring more than
    :data:`MAX_EXPANSION` × its size; refused by the loader: anything but tensors and containers (the refused
    call named).

    Parameters
    ----------
    path : str

    Returns
    -------
    object
        What the pickle holds (a dict of tensors, possibly nested).
    """
    import pickle

    import torch

    if not _torch_version_ok():
        raise AdapterError(
            f"refusing to read a pickle with torch {torch.__version__}: torch >= "
            f"{MIN_TORCH[0]}.{MIN_TORCH[1]} is required for a safe weights_only load", path=path)
    with open(path, "rb") as fh:
        if fh.read(4) == b"PK\x03\x04":
            _check_archive(path)
    try:
        import warnings

        with warnings.catch_warnings():  # torch's notes on old pickle protocols: not the user's concern here
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        raise AdapterError(f"refused to load: {_refusal(e)} (torch.load with weights_only=True; the file was not "
                           "run)", path=path) from None
    except MemoryError:
        raise AdapterError(f"refused to load: it declares tensors larger than the memory available (file of "
                           f"{_size(os.path.getsize(path))})", path=path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            AttributeError, TypeError, IndexError, struct.error) as e:
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise AdapterError(
            f"cannot read as a torch checkpoint (truncated or corrupt?): {type(e).__name__}: {msg}",
            path=path) from None
    if not isinstance(obj, dict):
        raise AdapterError(f"expected a state dict (mapping of name to tensor), got {type(obj).__name__}",
                           path=path)
    return _flatten(obj, path)


@contextlib.contextmanager
def safetensors_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn what ``safetensors`` raises on a bad file into one-line :class:`AdapterError` s."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        msg = " ".join(str(e).split())[:200]
        raise AdapterError(f"not a valid safetensors file (truncated or corrupt?): {msg}", path=path) from None
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise AdapterError(f"cannot read as safetensors (truncated or corrupt?): {msg}", path=path) from None


def _read_safetensors(path, keys=None):
    from safetensors import safe_open

    out = {}
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:  # safetensors takes UTF-8 paths only: read the bytes here
        from safetensors.torch import load

        with open(path, "rb") as fh, safetensors_errors(path):
            tensors = load(fh.read())
        return {k: v for k, v in tensors.items() if keys is None or k in set(keys)}
    # local: import cycle (safetensors_file checks its reads with this module's functions)
    from analysis.io.safetensors_file import SafetensorsFile

    sf = SafetensorsFile(path)
    if sf.all_float:  # F64 / F32 / F16 / BF16: read without torch, widened exactly as torch does (half to float32)
        wanted = sf.keys() if keys is None else [k for k in keys if k in set(sf.keys())]
        return {k: sf.read(k) for k in wanted}
    with safetensors_errors(path):
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys()) if keys is None else [k for k in keys if k in set(f.keys())]
            for k in names:
                out[k] = f.get_tensor(k)
    return out


def read_tensors(path: str | os.PathLike[str], *, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read the tensors of one file as numpy arrays, validated.

    Parameters
    ----------
    path : str or Path
        A ``.safetensors`` file, or a ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``
        torch pickle (loaded with ``weights_only=True`` only). Nested state
        dicts (``{"model_state_dict": {...}}``) are flattened.
    keys : iterable of str, optional
        Read only these keys (safetensors only; others are read whole).

    Returns
    -------
    dict[str, ndarray]
        Float16 / bfloat16 tensors upcast to float32; all values finite.

    Raises
    ------
    AdapterError
        Missing, truncated, corrupt or unsafe file, or NaN / Inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterError("no such file", path=path)
    if path.stat().st_size == 0:
        raise AdapterError("the file is empty (0 bytes)", path=path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    is_zip = head[:4] == b"PK\x03\x04"
    is_pickle = head[:1] == b"\x80"
    if path.suffix == ".safetensors" or not (is_zip or is_pickle):
        if path.suffix not in (".safetensors",) and path.suffix not in TENSOR_SUFFIXES:
            raise AdapterError(
                f"unknown file format (expected one of {', '.join(TENSOR_SUFFIXES)})", path=path)
        raw = _read_safetensors(path, keys)
    else:
        raw = read_pickle(path)
    out = {}
    for k, t in raw.items():
        out[k] = check_finite(_to_numpy(t, path, k), path, k)
    return out
