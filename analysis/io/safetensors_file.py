"""Torch-free, one-tensor-at-a-time reading of a safetensors file.

The header and the data offsets are validated by ``safetensors.safe_open``
(framework ``"numpy"``: it parses the header without needing torch, even for
bf16 files); each tensor is then read on request with one positioned read into
a fresh numpy array (no memory map stays open, so the resident set holds only
the tensors in use), upcast from fp16 / bf16 to float32 and checked for
NaN / Inf. bf16 is widened exactly by shifting its 16 bits into the high half
of a float32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import AdapterError
from analysis.io.stored import StoredMatrix
from analysis.io.tensors import safetensors_errors

if TYPE_CHECKING:
    import os

__all__ = ["SafetensorsFile", "FLOAT_DTYPES"]

#: safetensors dtype -> numpy dtype of the stored bytes (bf16 read as uint16).
_STORED = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
#: safetensors dtype -> :class:`~analysis.io.stored.StoredMatrix` format.
_FORMAT = {"F64": "f64", "F32": "f32", "F16": "f16", "BF16": "bf16"}
#: Floating dtypes this reader returns (as float32, or float64 for F64).
FLOAT_DTYPES = frozenset(_STORED)


class SafetensorsFile:
    """Header of a safetensors file, and per-tensor reads on request.

    Parameters
    ----------
    path : str or os.PathLike

    Attributes
    ----------
    path : str
    shapes : dict[str, tuple of int]
        Tensor key -> shape, from the header (no data read).
    dtypes : dict[str, str]
        Tensor key -> safetensors dtype name (``"BF16"``, ``"F32"``, …).

    Raises
    ------
    AdapterError
        Missing, empty, truncated or corrupt file (naming the file).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from safetensors import safe_open

        p = Path(path)
        self.path = str(p)
        if not p.is_file():
            raise AdapterError("no such file", path=p)
        size = p.stat().st_size
        if size == 0:
            raise AdapterError("the file is empty (0 bytes)", path=p)
        with safetensors_errors(p):  # the official parser validates the header, dtypes and offsets
            with safe_open(self.path, framework="numpy") as f:
                keys = list(f.keys())
        with open(self.path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        self._data_start = 8 + n
        self._offsets = {}
        self.shapes = {}
        self.dtypes = {}
        for k in keys:
            info = header[k]
            self.shapes[k] = tuple(int(s) for s in info["shape"])
            self.dtypes[k] = str(info["dtype"])
            self._offsets[k] = tuple(int(o) for o in info["data_offsets"])

    def keys(self) -> list[str]:
        """Tensor keys in header order."""
        return list(self.shapes)

    @property
    def all_float(self) -> bool:
        """True when every tensor is F64, F32, F16 or BF16 (what :meth:`read` handles)."""
        return all(d in FLOAT_DTYPES for d in self.dtypes.values())

    def read(self, key: str) -> np.ndarray:
        """Read one tensor: float32 (float64 for F64), validated finite.

        Parameters
        ----------
        key : str

        Returns
        -------
        ndarray
            With the header's shape.

        Raises
        ------
        AdapterError
            Unknown key, unsupported dtype, short read, or NaN / Inf (naming
            the file and the key).
        """
        return self.read_stored(key).array()

    def read_stored(self, key: str, *, lazy: bool = False) -> StoredMatrix:
        """Read one tensor's stored bits (bf16 as 16-bit words), not yet widened or checked.

        Parameters
        ----------
        key : str
        lazy : bool
            Read nothing yet: the matrix knows where its bytes are, its products stream them by row blocks
            (:meth:`~analysis.io.stored.StoredMatrix.from_file`).

        Returns
        -------
        StoredMatrix
            With the header's shape; :meth:`~analysis.io.stored.StoredMatrix.array` widens and checks it.

        Raises
        ------
        AdapterError
            Unknown key, unsupported dtype or short read (naming the file and the key).
        """
        if key not in self.shapes:
            raise AdapterError("no such tensor in the file", path=self.path, key=key)
        dt = self.dtypes[key]
        if dt not in _STORED:
            raise AdapterError(f"expected a floating tensor (F64, F32, F16, BF16), got {dt}", path=self.path,
                               key=key)
        begin, _ = self._offsets[key]
        out = StoredMatrix.from_file(self.path, self._data_start + begin, self.shapes[key], _FORMAT[dt], key=key)
        if not lazy:
            out.bits  # one positioned read now (AdapterError on a short read)
        return out

    def __repr__(self):
        return f"SafetensorsFile({self.path!r}, {len(self.shapes)} tensors)"
