"""A base weight as it is stored (bf16 / fp16 / float32 / float64 bits), widened only where it is used.

A warm SVD cache leaves the base-weight analyses one product with each W (W @ X with a few columns), so
upcasting the whole of W to float32 first — a fresh array twice the size of the stored bf16, a second pass to
check it for NaN / Inf — would cost several times the read itself. :class:`StoredMatrix` keeps W's stored
bits (or only where they are: :meth:`StoredMatrix.from_file`) and computes ``W @ X`` by row blocks of about
1 MiB: each block is read (from a file: one positioned read into a reused buffer, so several module jobs
read at once with no page faults) and widened into a reused buffer that stays in cache, and multiplied at
once. The NaN / Inf check rides along: a column of ones is appended to X, so
a row of W holding NaN or Inf gives a non-finite row sum (IEEE: any product or sum with NaN or ±Inf is NaN or
±Inf), and only then is W checked element by element (raising with the file, the key and the counts).
:meth:`StoredMatrix.array` widens the whole matrix when an analysis needs it (a randomized SVD on a cache
miss).

Orientation (``.T``), row slices and reshapes return views of the same bits, so the one orientation rule of
:func:`analysis.io.base.base_matrix` applies unchanged.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import AdapterError, InputError
from analysis.io.tensors import check_finite

if TYPE_CHECKING:
    from typing import Any

__all__ = ["StoredMatrix", "FORMATS"]

#: Stored formats -> numpy dtype of the bits (bf16 kept as its 16-bit words).
FORMATS = {"bf16": np.uint16, "f16": np.float16, "f32": np.float32, "f64": np.float64}
_BLOCK_BYTES = 1 << 20  # widened rows per block: about 1 MiB, so a block stays in cache


class StoredMatrix:
    """A matrix held as its stored bits, widened to float32 (float64 for ``f64``) block by block.

    Parameters
    ----------
    bits : ndarray
        The stored values: ``uint16`` words for ``bf16``, else ``float16`` / ``float32`` / ``float64``.
    fmt : {"bf16", "f16", "f32", "f64"}
    path, key : str, optional
        The file and tensor key, named in errors.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
        The working precision: float64 for ``f64``, else float32.
    """

    __array_priority__ = 100  # ndarray @ StoredMatrix defers to __rmatmul__

    def __init__(self, bits: np.ndarray | None, fmt: str, *, path: str | None = None,
                 key: str | None = None) -> None:
        if fmt not in FORMATS:
            raise InputError(f"fmt must be one of {sorted(FORMATS)}, got {fmt!r}")
        if bits is not None:
            bits = np.asarray(bits)
            if bits.dtype != np.dtype(FORMATS[fmt]).newbyteorder("="):
                raise TypeError(f"{fmt} bits must have dtype {np.dtype(FORMATS[fmt])}, got {bits.dtype}")
            self._shape: tuple[int, ...] = bits.shape
        self._bits, self.fmt, self.path, self.key = bits, fmt, path, key
        self.dtype = np.dtype(np.float64 if fmt == "f64" else np.float32)
        self._dense: np.ndarray | None = None
        self._region: int | None = None  # (offset,) of the little-endian bits in ``path`` when not yet read

    @classmethod
    def from_file(cls, path: str, offset: int, shape: tuple[int, ...], fmt: str, *,
                  key: str | None = None) -> StoredMatrix:
        """A matrix whose little-endian bits start at byte ``offset`` of ``path``, read only when used.

        Products stream it by row blocks (one positioned read each into a reused buffer); :meth:`array` and
        the views read it whole.
        """
        out = cls(None, fmt, path=path, key=key)
        out._shape = tuple(int(s) for s in shape)
        out._region = int(offset)
        return out

    @property
    def bits(self) -> np.ndarray:
        """The stored values (read from the file on first use)."""
        if self._bits is None:
            stored = np.dtype(FORMATS[self.fmt]).newbyteorder("<")
            count = int(np.prod(self._shape))
            try:
                with open(self.path, "rb") as fh:  # type: ignore[arg-type]  # from_file: path and region set
                    fh.seek(self._region)  # type: ignore[arg-type]
                    raw = np.fromfile(fh, dtype=stored, count=count)
            except OSError as e:
                raise AdapterError(f"cannot read the tensor: {e}", path=self.path, key=self.key) from None
            if raw.size != count:
                raise AdapterError(f"expected {count} values, got {raw.size} (truncated file?)", path=self.path,
                                   key=self.key)
            self._bits = raw.astype(stored.newbyteorder("="), copy=False).reshape(self._shape)
        return self._bits

    @classmethod
    def from_array(cls, x: np.ndarray, *, path: str | None = None, key: str | None = None) -> StoredMatrix:
        """Wrap a floating ndarray (float16 / float32 / float64) without copying it."""
        x = np.asarray(x)
        fmt = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}.get(
            x.dtype.newbyteorder("="))
        if fmt is None:
            raise TypeError(f"expected a float16, float32 or float64 array, got dtype {x.dtype}")
        return cls(x.astype(x.dtype.newbyteorder("="), copy=False), fmt, path=path, key=key)

    # -- views ---------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return int(np.prod(self._shape))

    def _view(self, bits):
        return StoredMatrix(bits, self.fmt, path=self.path, key=self.key)

    @property
    def T(self) -> StoredMatrix:
        return self._view(self.bits.T)

    def reshape(self, *shape: Any) -> StoredMatrix:
        return self._view(self.bits.reshape(*shape))

    def __getitem__(self, index: Any) -> StoredMatrix:
        return self._view(self.bits[index])

    # -- values --------------------------------------------------------------------------------------------
    def _widen(self, bits, out):
        """Widen ``bits`` into ``out`` (same shape, ``self.dtype``); returns ``out``."""
        if self.fmt == "bf16":
            np.left_shift(bits, 16, out=out.view(np.uint32), dtype=np.uint32)  # bf16 = the high half of a float32
        else:
            out[...] = bits
        return out

    def array(self) -> np.ndarray:
        """The whole matrix in working precision, checked for NaN / Inf (memoised).

        Returns
        -------
        ndarray of ``self.dtype``, shape ``self.shape``

        Raises
        ------
        AdapterError
            NaN or Inf, naming the file and the key.
        """
        if self._dense is None:
            if self.bits.dtype == self.dtype:
                x = self.bits
            else:
                x = self._widen(self.bits, np.empty(self.shape, dtype=self.dtype))
            self._dense = check_finite(x, self.path, self.key)
        return self._dense

    def __array__(self, dtype=None, copy=None):
        x = self.array()
        return x if dtype is None else x.astype(dtype, copy=False)

    def __matmul__(self, X):
        """``W @ X`` in working precision, by row blocks widened in a reused buffer; W checked on the way.

        Parameters
        ----------
        X : (n, p) array_like

        Returns
        -------
        (m, p) ndarray of ``self.dtype``

        Raises
        ------
        AdapterError
            W holds NaN or Inf (naming the file and the key).
        """
        if self.ndim != 2:
            raise InputError(f"W @ X needs a matrix, got shape {self.shape}")
        X = np.asarray(X, dtype=self.dtype)
        one = X.ndim == 1
        X = X.reshape(X.shape[0], -1)
        m, n = self.shape
        if X.shape[0] != n:
            raise InputError(f"W @ X: W is {self.shape} but X has {X.shape[0]} rows")
        p = X.shape[1]  # always from the bits, whether or not W was widened: one result for cold and warm runs
        Xc = np.empty((n, p + 1), dtype=self.dtype)  # X and a column of ones: the row sums flag NaN / Inf
        Xc[:, :p] = X
        Xc[:, p] = 1
        out = np.empty((m, p + 1), dtype=self.dtype)
        rows = max(1, min(m, _BLOCK_BYTES // (self.dtype.itemsize * max(n, 1))))
        with np.errstate(invalid="ignore", over="ignore"):  # NaN / Inf are looked for below, by the row sums
            if self._bits is None and sys.byteorder == "little":  # the file's little-endian bits read as they are
                self._stream(Xc, out, rows)
            else:  # the same row blocks as the stream (the same BLAS calls): one result either way
                bits = self.bits
                buf = None if bits.dtype == self.dtype else np.empty((rows, n), dtype=self.dtype)
                for i in range(0, m, rows):
                    blk = bits[i:i + rows]
                    wide = blk if buf is None else self._widen(blk, buf[:blk.shape[0]])
                    np.matmul(wide, Xc, out=out[i:i + blk.shape[0]])
        if not np.isfinite(out[:, p]).all():
            self.array()  # raises if W holds NaN / Inf; otherwise finite rows whose sum overflowed
        out = out[:, :p]
        return out[:, 0] if one else out

    def _stream(self, Xc, out, rows):
        """``out = W @ Xc`` from the file, row block by row block: read into one buffer, widened into another."""
        m, n = self._shape
        stored = np.dtype(FORMATS[self.fmt]).newbyteorder("=")
        raw = np.empty((rows, n), dtype=stored)
        buf = raw if stored == self.dtype else np.empty((rows, n), dtype=self.dtype)
        try:
            with open(self.path, "rb", buffering=0) as fh:
                for i in range(0, m, rows):
                    h = min(rows, m - i)
                    blk = raw[:h]
                    want = blk.nbytes
                    got = os.preadv(fh.fileno(), [memoryview(blk).cast("B")], self._region + i * n * stored.itemsize)
                    if got != want:
                        raise AdapterError(f"expected {want} bytes at row {i}, got {got} (truncated file?)",
                                           path=self.path, key=self.key)
                    wide = blk if buf is raw else self._widen(blk, buf[:h])
                    np.matmul(wide, Xc, out=out[i:i + h])
        except OSError as e:
            raise AdapterError(f"cannot read the tensor: {e}", path=self.path, key=self.key) from None

    def __rmatmul__(self, Y):
        """``Y @ W`` = (Wᵀ Yᵀ)ᵀ, blocked the same way."""
        Y = np.asarray(Y)
        return (self.T @ Y.T).T

    def __repr__(self):
        return f"StoredMatrix({self.fmt}, shape={self.shape}, key={self.key!r})"
