"""A GGUF file's metadata and tensor table, read without decoding the tokenizer's vocabulary.

``gguf.GGUFReader`` builds a field object for every element of every metadata array; a model's vocabulary
(``tokenizer.ggml.tokens``, ``tokenizer.ggml.merges``: 10⁵ strings) costs seconds to parse before the first
weight is read. :func:`read_gguf` walks the same header but steps over long string arrays (their length is all
it keeps), and memory-maps the tensors exactly as ``GGUFReader`` does (the same bytes, shapes and dtypes, which
``gguf.quants.dequantize`` takes). Little-endian files (what llama.cpp writes); a byte-swapped file is read
through ``GGUFReader``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import os

__all__ = ["GGUFTensor", "GGUFContents", "SkippedArray", "read_gguf", "MAX_DECODED_STRINGS"]

#: String arrays with more elements than this are skipped (kept as a :class:`SkippedArray`).
MAX_DECODED_STRINGS = 1024

_MAGIC = 0x46554747  # b"GGUF" read little-endian
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
          12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array of strings that was stepped over: its element count only."""

    count: int


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table.

    Attributes
    ----------
    name : str
    tensor_type : gguf.GGMLQuantizationType
    shape : tuple of int
        ggml's ``ne`` order (``ne0`` first: the reverse of numpy's).
    data : ndarray
        The memory-mapped bytes as ``GGUFReader`` gives them: typed for float and integer types, ``uint8`` blocks
        for quantised ones.
    """

    name: str
    tensor_type: Any
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass
class GGUFContents:
    """What :func:`read_gguf` returns.

    Attributes
    ----------
    fields : dict[str, object]
        Metadata values: scalars as Python values, strings as ``str``, arrays as lists (string arrays longer
        than :data:`MAX_DECODED_STRINGS` as :class:`SkippedArray`).
    tensors : list of GGUFTensor
        In file order.
    """

    fields: dict[str, Any]
    tensors: list[GGUFTensor]


class _Cursor:
    def __init__(self, buf: np.ndarray) -> None:
        self.buf: memoryview = buf.data  # the bytes, without a copy (a memory map stays one)
        self.off = 0

    def unpack(self, fmt: str) -> Any:
        v = struct.unpack_from(fmt, self.buf, self.off)[0]
        self.off += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.unpack("<Q")
        s = bytes(self.buf[self.off:self.off + n]).decode("utf-8", errors="replace")
        self.off += n
        return s

    def skip_strings(self, count: int) -> None:
        buf, off, unpack = self.buf, self.off, struct.unpack_from
        for _ in range(count):
            off += 8 + unpack("<Q", buf, off)[0]
        self.off = off

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype])
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.off)
                self.off += dt.itemsize * count
                return arr.tolist()
            if etype == _STRING and count > MAX_DECODED_STRINGS:
                self.skip_strings(count)
                return SkippedArray(count)
            return [self.value(etype) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf(path: str | os.PathLike[str]) -> GGUFContents:
    """Read a GGUF file's metadata and tensor table (the tensors memory-mapped, not read).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    GGUFContents

    Raises
    ------
    ValueError
        Not a GGUF file (magic), an unsupported version, a truncated or inconsistent header (what
        ``GGUFReader`` raises on such files, or ``struct.error``, a subclass of Exception, on a truncated one).
    """
    import gguf

    mm = np.memmap(path, mode="r")
    cur = _Cursor(mm)
    if len(mm) < 24 or cur.unpack("<I") != _MAGIC:
        raise ValueError("GGUF magic invalid")
    version = cur.unpack("<I")
    if version & 0xFFFF == 0:  # written on a big-endian machine: gguf's own reader swaps
        reader = gguf.GGUFReader(path)
        return GGUFContents({k: f.contents() for k, f in reader.fields.items()},
                            [GGUFTensor(t.name, t.tensor_type, tuple(int(s) for s in t.shape), t.data)
                             for t in reader.tensors])
    if version not in (2, 3):
        raise ValueError(f"Sorry, file appears to be version {version} which we cannot handle")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        fields[key] = cur.value(cur.unpack("<I"))
    table = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
        table.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
    align = fields.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ValueError("Invalid alignment: must be a non-zero power of two")
    start = -(-cur.off // align) * align
    tensors, seen = [], set()
    for name, dims, raw_type, offset in table:
        if name in seen:
            raise ValueError(f"Found duplicated tensor with name {name}")
        seen.add(name)
        qtype = gguf.GGMLQuantizationType(raw_type)
        n_elems = int(np.prod(dims, dtype=np.int64)) if dims else 1
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        np_dims = tuple(reversed(dims))
        item = _TYPED.get(qtype.name)
        if item is not None:
            count, dtype = n_elems, np.dtype(item)
        else:
            count, dtype = n_elems * type_size // block, np.dtype(np.uint8)
            np_dims = gguf.quant_shape_to_byte_shape(np_dims, qtype)
        begin = start + int(offset)
        end = begin + count * dtype.itemsize
        if end > len(mm):
            raise ValueError(f"tensor {name} lies past the end of the file ({end} > {len(mm)} bytes)")
        data = mm[begin:end].view(dtype)[:count].reshape(np_dims)
        tensors.append(GGUFTensor(name, qtype, dims, data))
    return GGUFContents(fields, tensors)


#: ggml types stored as plain numpy items (what ``GGUFReader`` views them as).
_TYPED = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}
