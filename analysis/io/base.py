"""Lazy reader of frozen base-model weights (safetensors or GGUF).

``open_base(path)`` accepts

* an HF model folder with ``model.safetensors``, or with shards listed in
  ``model.safetensors.index.json``;
* a single ``.safetensors`` file;
* a ``.gguf`` file (llama.cpp) of any architecture the ``gguf`` package maps: tensors are
  dequantised with the ``gguf`` package, found under any HF name the package maps to them, and given back
  as the HF model holds them — the row permutation llama.cpp's converter applies to Wq and Wk for its
  rotary embedding (Llama and its kin), the regrouped fused QKV (BLOOM, GPT-NeoX, Falcon) and the norms
  stored as 1 + w (Gemma) are undone (:mod:`analysis.io.gguf_layout`), so that the weights line up with
  adapters trained on the HF model.

Module names are HF names without the ``.weight`` suffix (e.g.
``model.layers.0.self_attn.q_proj``); kohya / LyCORIS names (``lora_unet_…``)
are resolved against them (:mod:`analysis.io.kohya_names`); ``weight(name)`` returns float32, a matrix in
the ``nn.Linear`` orientation (d_out, d_in) as a GGUF file and HF ``nn.Linear`` layers store it (a safetensors
Conv1D weight is returned as stored, (d_in, d_out), and oriented by :func:`base_matrix`), read one tensor at
a time and checked for NaN / Inf.

Example
-------
>>> with open_base("SmolLM2-135M-Instruct.Q4_1.gguf") as base:  # doctest: +SKIP
...     W = base.weight("model.layers.15.self_attn.q_proj")    # (576, 576) float32
"""

from __future__ import annotations

import importlib
import json
import os
import struct
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.lowrank import require_float
from analysis.errors import AdapterError
from analysis.io import gguf_layout
from analysis.io.gguf_file import GGUFContents, read_gguf
from analysis.io.gguf_layout import gguf_to_hf_name, unpermute_rope_rows
from analysis.io.hub import is_repo_id, resolve_repo
from analysis.io.kohya_names import kohya_prefix, resolve_kohya_name, underscore_index
from analysis.io.safetensors_file import FLOAT_DTYPES, SafetensorsFile
from analysis.io.stored import StoredMatrix
from analysis.io.tensors import check_finite

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from analysis.core.lowrank import LowRank

__all__ = [
    "BaseWeights",
    "base_matrix",
    "base_tensor_name",
    "read_base",
    "SafetensorsBase",
    "GGUFBase",
    "LinearOriented",
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
    _index: Callable[[], dict[str, int]]  # module name -> ndim, from the reader
    _read: Callable[..., np.ndarray]  # one tensor, by the reader's own name

    def names(self, *, matrices_only: bool = False) -> list[str]:
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

    def __contains__(self, name: str) -> bool:
        if name in self._index():
            return True
        try:
            self.resolve(name)
        except AdapterError:
            return False
        return True

    def resolve(self, name: str) -> str:
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

    def weight(self, name: str) -> np.ndarray:
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

    def weights(self, names: Iterable[str] | None = None, *,
                stored: bool = False) -> Iterator[tuple[str, np.ndarray | StoredMatrix]]:
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
        asked: dict[str, list[str]] = {}  # the base's name -> the names it was asked by (kohya names resolved)
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
            if stored:
                linear = getattr(W, "nn_linear", False)
                W = StoredMatrix.from_array(W, path=self.path, key=name + ".weight")
                if linear:  # a LinearOriented array: its stored form keeps the mark for base_matrix
                    W.nn_linear = True
            yield name, W

    def close(self) -> None:
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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from safetensors import SafetensorError, safe_open

        self._safe_open = safe_open
        path = os.fspath(path)
        self.path = path
        if os.path.isdir(path):
            # transformers' names, then diffusers' (a UNet / transformer folder of a pipeline)
            for stem in ("model", "diffusion_pytorch_model"):
                index = os.path.join(path, f"{stem}.safetensors.index.json")
                single = os.path.join(path, f"{stem}.safetensors")
                if os.path.exists(index) or os.path.exists(single):
                    break
            if os.path.exists(index):
                shard_of = self._read_index(index)
            elif os.path.exists(single):
                shard_of = None
                files = [single]
            else:
                raise AdapterError(f"expected {_SINGLE} or {_INDEX} (or diffusers' diffusion_pytorch_model.safetensors) "
                                   "in the folder, got neither", path=path)
        else:
            shard_of = None
            files = [path]
        if shard_of is not None:
            files = sorted(set(shard_of.values()))
        self._files: dict[str, SafetensorsFile] = {}  # shard file -> SafetensorsFile (header parsed once)
        self._keys: dict[str, str] = {}  # tensor key -> file
        self._ndim: dict[str, int] = {}  # module name -> ndim
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
            except (SafetensorError, OSError, ValueError, RuntimeError) as err:  # what a bad header makes it raise
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
        # The check is on the names the index gives, not on where the files are: in the Hugging Face cache every
        # shard of snapshots/<rev>/ is a symbolic link to ../../blobs/<sha256>, which is as it should be.
        folder = os.path.abspath(os.path.dirname(index))
        out = {}
        for k, v in weight_map.items():
            if not isinstance(v, str) or not v:
                raise AdapterError(f"expected a shard file name, got {v!r}", path=index, key=k)
            parts = v.replace("\\", "/").split("/")
            if os.path.isabs(v) or any(p in ("", ".", "..") for p in parts) or "\0" in v:
                # checked before anything is opened
                raise AdapterError(f"expected a shard file inside the model folder, got {v!r}, which leaves it",
                                   path=index, key=k)
            out[k] = os.path.join(folder, *parts)
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
                importlib.import_module("torch")  # needed by framework="pt" (imported, not used, here)

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


class LinearOriented(np.ndarray):
    """A base weight already in the ``nn.Linear`` (d_out, d_in) orientation although its HF layer stores it
    transposed (a GPT-2 Conv1D read from a GGUF file): :func:`base_matrix` does not transpose it again for an
    adapter's ``fan_in_fan_out``. A plain view of the same memory otherwise."""

    nn_linear = True


class GGUFBase(BaseWeights):
    """Base weights of a GGUF file (llama.cpp) of any architecture the ``gguf`` package maps, as float32.

    Tensors are dequantised with the ``gguf`` package and given back as the HF model holds them, in the
    ``nn.Linear`` (d_out, d_in) orientation: what llama.cpp's converter changed (rotary row permutation of
    Wq / Wk, regrouped fused QKV, norms stored as 1 + w) is undone per architecture
    (:mod:`analysis.io.gguf_layout`). A GGUF matrix is always stored (d_out, d_in) (ggml's ``ne0`` = d_in);
    GPT-2's Conv1D weights, (d_in, d_out) in HF, are transposed by the converter and returned (d_out, d_in)
    as :class:`LinearOriented` arrays.

    Names: any HF module name the ``gguf`` package maps to a tensor of this architecture
    (``gguf.get_tensor_name_map(arch, block_count)``), the file's own names (``blk.0.attn_q``), or a kohya
    name resolved against :meth:`names`. ``names()`` lists a llama-architecture file under HF Llama names
    (``model.layers.0.self_attn.q_proj``, :data:`~analysis.io.gguf_layout.LLAMA_HF_NAMES`) and any other
    file under its GGUF names without ``.weight``: the package maps many HF spellings to each tensor, and
    none of them is the architecture's own.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.gguf`` file.

    Attributes
    ----------
    arch : str
        ``general.architecture``.
    n_head, n_head_kv : int or list of int or None
        ``<arch>.attention.head_count`` / ``head_count_kv`` (per layer for some architectures).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            import gguf
        except ImportError:
            raise AdapterError("expected the 'gguf' package to read GGUF files, got ImportError "
                               "(pip install gguf)", path=path) from None
        self._gguf = gguf
        self.path = os.fspath(path)
        try:
            self._contents = read_gguf(self.path)
        except (ValueError, OSError, struct.error) as err:  # not GGUF, truncated, inconsistent
            raise AdapterError(f"expected a valid GGUF file, got {type(err).__name__}: {err}", path=path) from None
        self.arch = arch = str(self._field("general.architecture"))
        if gguf_layout.tensor_name_map(arch, 0) is None:
            known = sorted(gguf.MODEL_ARCH_NAMES.values())
            raise AdapterError(f"expected an architecture the gguf package maps ({len(known)} of them, e.g. llama, "
                               f"qwen2, gpt2, falcon), got {arch!r}", path=path, key="general.architecture")
        self._map = gguf_layout.tensor_name_map(arch, int(self._field(f"{arch}.block_count")))
        needs_heads = arch in gguf_layout.ROPE_PERMUTED | gguf_layout.ROPE_PERMUTED_K_GROUPS | \
            gguf_layout.QKV_PER_HEAD | gguf_layout.QKV_KV_GROUPS
        self.n_head = _heads(self._field(f"{arch}.attention.head_count", required=needs_heads))
        kv = _heads(self._field(f"{arch}.attention.head_count_kv", required=False))
        self.n_head_kv = self.n_head if kv is None else kv
        self._index_tensors()

    def _index_tensors(self):
        self._tensors = {}  # listed name -> ReaderTensor
        self._ndim = {}  # listed name -> ndim
        self._kinds = {}  # listed name -> (MODEL_TENSOR member name, block)
        self._listed = {}  # GGUF name without .weight -> listed name
        for t in self._contents.tensors:
            if not t.name.endswith(".weight"):
                continue
            stem = t.name[: -len(".weight")]
            listed = gguf_layout.listed_name(self._map, self.arch, stem)
            if listed is None:
                continue
            self._tensors[listed] = t
            self._ndim[listed] = len(t.shape)
            self._kinds[listed] = gguf_layout.tensor_kind(self._map, stem)
            self._listed[stem] = listed

    def _field(self, key, *, required=True):
        if key not in self._contents.fields:
            if required:
                raise AdapterError("expected this metadata key, got none", path=self.path, key=key)
            return None
        return self._contents.fields[key]

    def _index(self):
        return self._ndim

    def resolve(self, name: str) -> str:
        """The name :meth:`names` lists a module under: ``name`` itself, its GGUF tensor through the ``gguf``
        package's map, or a kohya name resolved.

        Parameters
        ----------
        name : str
            An HF module name of this architecture (``transformer.h.0.attn.c_attn``), a GGUF name
            (``blk.0.attn_qkv``) or a kohya name.

        Returns
        -------
        str

        Raises
        ------
        AdapterError
            The package maps no tensor of this architecture to the name, or the file lacks that tensor.
        """
        if name in self._ndim:
            return name
        stem = gguf_layout.mapped_name(self._map, self.arch, name)  # type: ignore[arg-type]  # checked in __init__
        if stem in self._listed:
            return self._listed[stem]
        if kohya_prefix(name) is not None:
            return super().resolve(name)
        if stem is not None:
            raise AdapterError(f"expected tensor '{stem}.weight' (the gguf package's name for module '{name}' in a "
                               f"{self.arch} model), got no such tensor in the file (llama.cpp's converter may have "
                               "split, fused or dropped it)", path=self.path, key=name + ".weight")
        some = ", ".join(list(self._ndim)[:3])
        raise AdapterError(f"expected a module name the gguf package maps to a tensor of a {self.arch} model "
                           f"({len(self._ndim)} weights, e.g. {some}), got none for module '{name}'",
                           path=self.path, key=name + ".weight")

    def _block_heads(self, bid):
        """``(n_head, n_head_kv)`` of block ``bid`` (per-layer counts picked)."""
        def pick(v):
            return v[bid] if isinstance(v, list) and bid is not None and bid < len(v) else v
        return pick(self.n_head), pick(self.n_head_kv)

    def _read(self, name):
        t = self._tensors[name]
        W = np.asarray(self._gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists ne0 (d_in) first
        if W.shape != shape:
            raise AdapterError(f"expected shape {shape} after dequantisation, got {W.shape}",
                               path=self.path, key=t.name)
        kind, bid = self._kinds[name]
        n_head, n_head_kv = self._block_heads(bid)
        try:
            W, conv1d = gguf_layout.undo_converter(W, self.arch, kind, n_head, n_head_kv)
        except (ValueError, TypeError) as err:
            raise AdapterError(f"expected rows that fit the {self.arch} head counts (head_count {n_head}, "
                               f"head_count_kv {n_head_kv}) to undo llama.cpp's reordering, got {err}",
                               path=self.path, key=t.name) from None
        W = check_finite(np.ascontiguousarray(W), self.path, t.name)
        return W.view(LinearOriented) if conv1d else W

    def close(self) -> None:
        """Drop the memory map."""
        self._contents = GGUFContents({}, [])
        self._tensors = {}
        self._ndim = {}
        self._kinds = {}
        self._listed = {}


def _heads(value):
    """A head count from GGUF metadata: an int, a per-layer list of ints, or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return int(value)


def open_base(path: str | os.PathLike[str]) -> BaseWeights:
    """Open base-model weights for lazy, one-tensor-at-a-time reading.

    Parameters
    ----------
    path : str or os.PathLike
        HF folder (``model.safetensors`` or sharded with
        ``model.safetensors.index.json``), a ``.safetensors`` file, a
        ``.gguf`` file of an architecture the ``gguf`` package maps, or a Hugging Face repo id ``org/name`` in
        the local cache.

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

def base_tensor_name(name: str, lr: LowRank) -> str:
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


def read_base(base: BaseWeights | Mapping[str, np.ndarray], names: Sequence[str], *,
              stored: bool = False) -> Iterator[tuple[str, np.ndarray | StoredMatrix]]:
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


def base_matrix(W: np.ndarray | StoredMatrix, lr: LowRank, *, name: str | None = None,
                path: str | None = None) -> np.ndarray | StoredMatrix:
    """The base weight of a module in ΔW's (d_out, d_in) orientation: one rule for every command.

    - A convolution kernel (out, in, kh, kw) is flattened to (out, in·kh·kw), as ΔW is.
    - A loralib MergedLinear part (``…:q``) gets its rows of the fused weight.
    - A weight is read as stored (d_in, d_out) and transposed when the adapter says its layer stores it so
      (``fan_in_fan_out``: GPT-2's Conv1D); as (d_out, d_in) when the adapter says it is an ``nn.Linear``;
      when the adapter does not say (loralib without a base, kohya), either orientation is accepted where the
      shape tells them apart (a square weight is taken as (d_out, d_in)). A weight the reader marks as
      already in the ``nn.Linear`` orientation (``nn_linear``: a GGUF file's Conv1D weight,
      :class:`LinearOriented`) is taken as (d_out, d_in) whatever the adapter says.
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
    linear = bool(getattr(W, "nn_linear", False))  # (d_out, d_in) already, although its layer is a Conv1D
    if isinstance(W, LinearOriented):
        W = W.view(np.ndarray)
    if not isinstance(W, StoredMatrix):  # a StoredMatrix is floating point by construction, kept unwidened
        W = require_float(W, path=path, key=key, what="base weight values")
    if W.ndim > 2:
        W = W.reshape(W.shape[0], -1)  # (out, in, kh, kw) -> (out, in·kh·kw)
    if W.ndim != 2:
        raise AdapterError(f"expected a matrix, got a base weight of shape {W.shape}", path=path, key=key)
    fifo = False if linear else lr.meta.get("fan_in_fan_out")
    rows = lr.meta.get("rows") if lr.meta.get("parent") else None
    if rows is not None:
        if not linear and W.shape[1] != d_in and W.shape[0] == d_in:
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
