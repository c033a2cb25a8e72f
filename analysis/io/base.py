"""Lazy reader of frozen base-model weights (safetensors or GGUF).

``open_base(path)`` accepts

* an HF model folder with ``model.safetensors``, or with shards listed in
  ``model.safetensors.index.json``;
* a single ``.safetensors`` file;
* a ``.gguf`` file of a Llama-architecture model (llama.cpp): tensors are
  dequantised with the ``gguf`` package, renamed to HF Llama names, and the
  row permutation llama.cpp's converter applies to Wq and Wk for its rotary
  embedding is undone, so that the weights line up with adapters trained on
  the HF model.

Module names are HF names without the ``.weight`` suffix (e.g.
``model.layers.0.self_attn.q_proj``); kohya / LyCORIS names (``lora_unet_…``)
are resolved against them (:mod:`analysis.io.kohya_names`); ``weight(name)`` returns float32 in the
``nn.Linear`` orientation, shape (d_out, d_in), read one tensor at a time and
checked for NaN / Inf.

Example
-------
>>> with open_base("SmolLM2-135M-Instruct.Q4_1.gguf") as base:  # doctest: +SKIP
...     W = base.weight("model.layers.15.self_attn.q_proj")    # (576, 576) float32
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from analysis.core.lowrank import require_float
from analysis.errors import AdapterError
from analysis.io.kohya_names import kohya_prefix, resolve_kohya_name, underscore_index
from analysis.io.safetensors_file import FLOAT_DTYPES, SafetensorsFile
from analysis.io.stored import StoredMatrix
from analysis.io.tensors import check_finite

__all__ = [
    "BaseWeights",
    "base_matrix",
    "base_tensor_name",
    "read_base",
    "SafetensorsBase",
    "GGUFBase",
    "open_base",
    "gguf_to_hf_name",
    "unpermute_rope_rows",
]

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


class BaseWeights:
    """Common interface of the base-weight readers; use through :func:`open_base`.

    A context manager; ``names()`` lists module names, ``weight(name)`` reads one
    tensor, ``weights(names)`` iterates efficiently over several.
    """

    path: str

    def names(self, *, matrices_only=False):
        """List module names (HF naming, without ``.weight``).

        Parameters
        ----------
        matrices_only : bool
            Keep only 2-D weights (linear layers and embeddings).

        Returns
        -------
        list of str
        """
        return [n for n, ndim in self._index().items() if not matrices_only or ndim == 2]

    def __contains__(self, name):
        if name in self._index():
            return True
        try:
            self.resolve(name)
        except AdapterError:
            return False
        return True

    def resolve(self, name):
        """The base's own name for a module: ``name`` itself, or a kohya / LyCORIS name resolved.

        Parameters
        ----------
        name : str
            A module name as an adapter keys it (``model.layers.0.self_attn.q_proj``, or kohya's
            ``lora_unet_down_blocks_0_…_to_q``).

        Returns
        -------
        str

        Raises
        ------
        AdapterError
            No base tensor, or an ambiguous kohya name (see :mod:`analysis.io.kohya_names`).
        """
        index = self._index()
        if name in index:
            return name
        if kohya_prefix(name) is None:
            self._require(name)
        under = getattr(self, "_underscore", None)
        if under is None:
            under = self._underscore = underscore_index(index)
        return resolve_kohya_name(name, index, index=under, path=self.path)

    def weight(self, name):
        """Read one weight.

        Parameters
        ----------
        name : str
            Module name; ``name + ".weight"`` is the HF tensor key.

        Returns
        -------
        W : (d_out, d_in) ndarray of float32 (float64 for a float64 tensor)
            ``nn.Linear`` orientation (1-D for norms).

        Raises
        ------
        AdapterError
            If the key is missing or the tensor holds NaN / Inf.
        """
        return self._read(self.resolve(name))

    def weights(self, names=None, *, stored=False):
        """Yield ``(name, W)`` for several modules, one at a time (each file's header parsed once).

        Parameters
        ----------
        names : iterable of str, optional
            Default: all names.
        stored : bool
            Yield each W as a :class:`~analysis.io.stored.StoredMatrix` (its stored bits, widened and
            checked for NaN / Inf only where it is used) instead of a checked float32 array.

        Yields
        ------
        name : str
        W : (d_out, d_in) ndarray of float32 (float64 for a float64 tensor), or StoredMatrix
        """
        names = self.names() if names is None else list(names)
        asked = {}  # the base's name -> the names it was asked by (kohya names resolved)
        for name in names:
            asked.setdefault(self.resolve(name), []).append(name)
        for real, W in self._read_many(list(asked), stored=stored):
            for name in asked[real]:
                yield name, W

    def _require(self, name):
        if name not in self._index():
            some = ", ".join(list(self._index())[:3])
            raise AdapterError(f"expected a tensor for module '{name}', got no such key "
                               f"({len(self._index())} weights, e.g. {some})", path=self.path, key=name + ".weight")

    def _read_many(self, names, stored=False):
        for name in names:
            W = self._read(name)
            yield name, StoredMatrix.from_array(W, path=self.path, key=name + ".weight") if stored else W

    def close(self):
        """Release open files."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, {len(self._index())} weights)"


class SafetensorsBase(BaseWeights):
    """Base weights in one safetensors file or in shards listed by an index.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file, or a folder with ``model.safetensors`` or
        ``model.safetensors.index.json``.
    """

    def __init__(self, path):
        from safetensors import safe_open

        self._safe_open = safe_open
        path = os.fspath(path)
        self.path = path
        if os.path.isdir(path):
            index = os.path.join(path, _INDEX)
            single = os.path.join(path, _SINGLE)
            if os.path.exists(index):
                shard_of = self._read_index(index)
            elif os.path.exists(single):
                shard_of = None
                files = [single]
            else:
                raise AdapterError(f"expected {_SINGLE} or {_INDEX} in the folder, got neither", path=path)
        else:
            shard_of = None
            files = [path]
        if shard_of is not None:
            files = sorted(set(shard_of.values()))
        self._files = {}  # shard file -> SafetensorsFile (header parsed once)
        self._keys = {}  # tensor key -> file
        self._ndim = {}  # module name -> ndim
        for f in files:
            if not os.path.exists(f):
                raise AdapterError(f"expected shard file {os.path.basename(f)} listed in {_INDEX}, got a missing file",
                                   path=f)
            try:
                with safe_open(f, framework="numpy") as fh:
                    for key in fh.keys():
                        if shard_of is not None and shard_of.get(key) != f:
                            continue
                        if key.endswith(".weight"):
                            self._keys[key] = f
                            self._ndim[key[: -len(".weight")]] = len(fh.get_slice(key).get_shape())
            except AdapterError:
                raise
            except Exception as err:  # safetensors raises its own error types on bad headers
                raise AdapterError(f"expected a valid safetensors file, got {type(err).__name__}: {err}",
                                   path=f) from None
        if shard_of is not None:
            missing = sorted(k for k in shard_of if k.endswith(".weight") and k not in self._keys)
            if missing:
                raise AdapterError(f"expected it in shard {os.path.basename(shard_of[missing[0]])} as listed in "
                                   f"{_INDEX}, got no such tensor", path=shard_of[missing[0]], key=missing[0])

    def _read_index(self, index):
        try:
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AdapterError(f"expected JSON with a 'weight_map' object, got {type(err).__name__}: {err}",
                               path=index, key="weight_map") from None
        if not isinstance(weight_map, dict):
            raise AdapterError(f"expected an object, got {type(weight_map).__name__}", path=index, key="weight_map")
        folder = os.path.realpath(os.path.dirname(index))
        out = {}
        for k, v in weight_map.items():
            if not isinstance(v, str) or not v:
                raise AdapterError(f"expected a shard file name, got {v!r}", path=index, key=k)
            f = os.path.realpath(os.path.join(folder, v))
            if os.path.dirname(f) != folder:  # checked before anything is opened
                raise AdapterError(f"expected a shard file inside the model folder, got {v!r}, which leaves it",
                                   path=index, key=k)
            out[k] = f
        return out

    def _index(self):
        return self._ndim

    def _file(self, f):
        """The torch-free reader of shard ``f`` (header parsed once)."""
        if f not in self._files:
            self._files[f] = SafetensorsFile(f)
        return self._files[f]

    def _get(self, f, key, lazy=False):
        """Tensor ``key`` of file ``f`` as a :class:`StoredMatrix` (not yet widened or checked; with ``lazy``,
        not yet read)."""
        sf = self._file(f)
        if sf.dtypes[key] in FLOAT_DTYPES:  # bf16 / fp16 / float32 / float64: as stored, no torch
            return sf.read_stored(key, lazy=lazy)
        with self._safe_open(f, framework="numpy") as fh:
            sl = fh.get_slice(key)
            if sl.get_dtype() in ("F8_E4M3", "F8_E5M2"):  # numpy has no such dtype: go through torch
                import torch  # noqa: F401  (needed by framework="pt")

                with self._safe_open(f, framework="pt") as pt:
                    W = np.ascontiguousarray(pt.get_tensor(key).float().numpy())
                return StoredMatrix.from_array(W, path=f, key=key)
            W = require_float(fh.get_tensor(key), path=f, key=key, what="base weight values")
        return StoredMatrix.from_array(W, path=f, key=key)

    def _read(self, name, stored=False):
        key = name + ".weight"
        W = self._get(self._keys[key], key, lazy=stored)
        return W if stored else W.array()

    def _read_many(self, names, stored=False):
        for name in names:
            yield name, self._read(name, stored=stored)


# GGUF (llama.cpp) -> HF Llama names, per block and global.
_GGUF_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def gguf_to_hf_name(gguf_name):
    """Map a llama.cpp tensor name to an HF Llama module name.

    Parameters
    ----------
    gguf_name : str
        E.g. ``"blk.3.attn_q.weight"``.

    Returns
    -------
    str or None
        E.g. ``"model.layers.3.self_attn.q_proj"``; None if unknown (or not a weight).

    Examples
    --------
    >>> gguf_to_hf_name("blk.3.attn_q.weight")
    'model.layers.3.self_attn.q_proj'
    >>> gguf_to_hf_name("token_embd.weight")
    'model.embed_tokens'
    """
    m = _BLK.match(gguf_name)
    if m:
        part = _GGUF_BLOCK.get(m.group(2))
        return None if part is None else f"model.layers.{m.group(1)}.{part}"
    if gguf_name.endswith(".weight"):
        return _GGUF_GLOBAL.get(gguf_name[: -len(".weight")])
    return None


def unpermute_rope_rows(W, n_head):
    """Undo llama.cpp's rotary row permutation of Wq / Wk.

    ``convert_hf_to_gguf.py`` stores ``W.reshape(n_head, 2, hd/2, d_in).swapaxes(1, 2)``
    (interleaving the two rotary halves of each head); this applies the inverse.

    Parameters
    ----------
    W : (n_head * head_dim, d_in) ndarray
        The weight as stored in the GGUF file (rows permuted).
    n_head : int
        Number of heads of this projection (``head_count`` for Wq,
        ``head_count_kv`` for Wk).

    Returns
    -------
    (n_head * head_dim, d_in) ndarray
        The HF row order.

    Raises
    ------
    ValueError
        If the row count is not a multiple of ``2 * n_head``.
    """
    rows = W.shape[0]
    if n_head < 1 or rows % (2 * n_head):
        raise ValueError(f"W has {rows} rows, not a multiple of 2 * n_head = {2 * n_head}: "
                         f"got W of shape {W.shape}")
    half = rows // n_head // 2
    return W.reshape(n_head, half, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


class GGUFBase(BaseWeights):
    """Base weights of a Llama-architecture GGUF file, dequantised to float32.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.gguf`` file.
    """

    def __init__(self, path):
        try:
            import gguf
        except ImportError:
            raise AdapterError("expected the 'gguf' package to read GGUF files, got ImportError "
                               "(pip install gguf)", path=path) from None
        self._gguf = gguf
        self.path = os.fspath(path)
        try:
            self._reader = gguf.GGUFReader(self.path)
        except Exception as err:
            raise AdapterError(f"expected a valid GGUF file, got {type(err).__name__}: {err}", path=path) from None
        arch = self._field("general.architecture")
        if arch != "llama":
            raise AdapterError(f"expected architecture 'llama', got {arch!r}", path=path, key="general.architecture")
        self.n_head = int(self._field("llama.attention.head_count"))
        kv = self._field("llama.attention.head_count_kv", required=False)
        self.n_head_kv = self.n_head if kv is None else int(kv)
        self._tensors = {}
        self._ndim = {}
        for t in self._reader.tensors:
            hf = gguf_to_hf_name(t.name)
            if hf is not None:
                self._tensors[hf] = t
                self._ndim[hf] = len(t.shape)

    def _field(self, key, *, required=True):
        field = self._reader.fields.get(key)
        if field is None:
            if required:
                raise AdapterError("expected this metadata key, got none", path=self.path, key=key)
            return None
        return field.contents()

    def _index(self):
        return self._ndim

    def _read(self, name):
        t = self._tensors[name]
        W = np.asarray(self._gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists ne0 (d_in) first
        if W.shape != shape:
            raise AdapterError(f"expected shape {shape} after dequantisation, got {W.shape}",
                               path=self.path, key=t.name)
        if name.endswith("self_attn.q_proj"):
            W = unpermute_rope_rows(W, self.n_head)
        elif name.endswith("self_attn.k_proj"):
            W = unpermute_rope_rows(W, self.n_head_kv)
        return check_finite(np.ascontiguousarray(W), self.path, t.name)

    def close(self):
        """Drop the memory map."""
        self._reader = None
        self._tensors = {}
        self._ndim = {}


def open_base(path):
    """Open base-model weights for lazy, one-tensor-at-a-time reading.

    Parameters
    ----------
    path : str or os.PathLike
        HF folder (``model.safetensors`` or sharded with
        ``model.safetensors.index.json``), a ``.safetensors`` file, a
        Llama ``.gguf`` file, or a Hugging Face repo id ``org/name`` in the
        local cache.

    Returns
    -------
    BaseWeights
        A context manager with ``names()``, ``weight(name)`` and ``weights(names)``.

    Raises
    ------
    AdapterError
        If the path does not exist or is not one of the supported layouts.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        from analysis.io.hub import is_repo_id, resolve_repo

        if is_repo_id(path):  # org/name: the local Hugging Face cache, offline
            return open_base(resolve_repo(path))
        raise AdapterError("expected a base-model folder, .safetensors or .gguf file, got a missing path",
                           path=path)
    if os.path.isdir(path):
        return SafetensorsBase(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return GGUFBase(path)
    if path.endswith(".safetensors"):
        return SafetensorsBase(path)
    raise AdapterError(f"expected a .safetensors file or a GGUF file (magic b'GGUF'), got magic {magic!r}",
                       path=path)


# ---------------------------------------------------------------------------- a module's base weight

def base_tensor_name(name, lr):
    """Name of the base tensor a module's update applies to (a MergedLinear part's: its parent's).

    Parameters
    ----------
    name : str
        Module name in the adapter (``…c_attn:q`` for a part).
    lr : LowRank

    Returns
    -------
    str
        ``name`` without ``.weight``.
    """
    return lr.meta.get("parent") or name


def read_base(base, names, *, stored=False):
    """Yield ``(name, W)`` for the named base tensors, one at a time.

    Parameters
    ----------
    base : BaseWeights or Mapping[str, ndarray]
        An open reader (:func:`open_base`), or a mapping ``name -> weight``.
    names : sequence of str
    stored : bool
        From a reader: :class:`~analysis.io.stored.StoredMatrix` values (see :meth:`BaseWeights.weights`);
        a mapping's values are yielded as they are.

    Yields
    ------
    (str, ndarray or StoredMatrix)
    """
    if hasattr(base, "weights"):
        yield from (base.weights(names, stored=True) if stored and isinstance(base, BaseWeights)
                    else base.weights(names))
        return
    under = None
    for n in names:
        if n not in base:
            if kohya_prefix(n) is None:
                raise AdapterError(f"expected a base weight for module '{n}', got none", key=n + ".weight")
            under = underscore_index(base) if under is None else under
            yield n, base[resolve_kohya_name(n, base, index=under)]
            continue
        yield n, base[n]


def base_matrix(W, lr, *, name=None, path=None):
    """The base weight of a module in ΔW's (d_out, d_in) orientation: one rule for every command.

    - A convolution kernel (out, in, kh, kw) is flattened to (out, in·kh·kw), as ΔW is.
    - A loralib MergedLinear part (``…:q``) gets its rows of the fused weight.
    - A weight is read as stored (d_in, d_out) and transposed when the adapter says its layer stores it so
      (``fan_in_fan_out``: GPT-2's Conv1D); as (d_out, d_in) when the adapter says it is an ``nn.Linear``;
      when the adapter does not say (loralib without a base, kohya), either orientation is accepted where the
      shape tells them apart (a square weight is taken as (d_out, d_in)).
    - Any other shape is refused: the base is not the one the adapter was trained on.

    Parameters
    ----------
    W : ndarray or StoredMatrix
        The base tensor as read (``name + ".weight"``, or the parent's for a part); a
        :class:`~analysis.io.stored.StoredMatrix` stays one (a view of its bits).
    lr : LowRank
    name : str, optional
        Module name, for messages (default ``lr.name``).
    path : str, optional
        The base model's path, for messages.

    Returns
    -------
    (d_out, d_in) ndarray or StoredMatrix
    """
    name = name or lr.name
    d_out, d_in = lr.shape
    key = base_tensor_name(name, lr) + ".weight"
    if not isinstance(W, StoredMatrix):  # a StoredMatrix is floating point by construction, kept unwidened
        W = require_float(W, path=path, key=key, what="base weight values")
    if W.ndim > 2:
        W = W.reshape(W.shape[0], -1)  # (out, in, kh, kw) -> (out, in·kh·kw)
    if W.ndim != 2:
        raise AdapterError(f"expected a matrix, got a base weight of shape {W.shape}", path=path, key=key)
    fifo = lr.meta.get("fan_in_fan_out")
    rows = lr.meta.get("rows") if lr.meta.get("parent") else None
    if rows is not None:
        if W.shape[1] != d_in and W.shape[0] == d_in:
            W = W.T  # a fused Conv1D weight (in, out_total) -> (out_total, in)
        lo, hi = rows
        W = W[lo:hi]  # (d_out, d_in): this part's rows of the fused weight
    elif fifo and W.shape == (d_in, d_out):
        return W.T
    elif fifo is None and d_in != d_out and W.shape == (d_in, d_out):
        return W.T
    if W.shape == (d_out, d_in) and not (fifo and rows is None):
        return W
    stored = f"({d_in}, {d_out}), as its fan_in_fan_out layer stores it" if fifo else f"({d_out}, {d_in})"
    raise AdapterError(f"base weight has shape {W.shape} but ΔW is {lr.shape} (d_out, d_in): expected {stored}; "
                       "is this the adapter's base model?", path=path, key=key)
