"""One adapter at a glance: what it is (format, method, base, task, ranks and α, dtype, size, saved heads,
metadata) and, per module, how much rank its update uses (‖ΔW‖_F, effective and stable rank, the
directions holding 50 / 90 / 99 % of ‖ΔW‖_F²), with a base also ‖ΔW‖_F / ‖W‖_F.

Every number comes from the exact factored SVD of each module (:func:`analysis.sweeps.spectra.spectrum_row`,
the per-module measures of :func:`~analysis.sweeps.spectra.spectra_frame`); no d_out × d_in matrix is formed
except a DoRA module's effective update ``W' − W`` with a base (:func:`analysis.io.dora.dora_delta`).

>>> import numpy as np
>>> from analysis import Adapter, LowRank
>>> lr = LowRank(np.eye(2, 5), np.diag([3.0, 4.0, 0.0])[:, :2], scale=1.0, name="model.layers.0.self_attn.q_proj")
>>> ins = inspect_adapter(Adapter({lr.name: lr}, path="-", format="peft"))
>>> ins.frame[["role", "fro", "rank_e50", "rank_e90"]].to_dict("records")
[{'role': 'q', 'fro': 5.0, 'rank_e50': 1, 'rank_e90': 2}]
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.core.adapter import ranges_text, select_modules
from analysis.errors import InputError
from analysis.io.base import base_matrix, base_tensor_name, read_base
from analysis.io.dora import dora_delta
from analysis.io.inventory import named_base
from analysis.io.roles import ROLES, module_role, role_label, stack_order
from analysis.metrics.spectrum import rank_for_energy
from analysis.sweeps.common import require_adapter
from analysis.sweeps.driver import sweep_modules
from analysis.sweeps.spectra import spectrum_row

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

    import pandas as pd

    from analysis.core.adapter import Adapter, Layers
    from analysis.io.base import BaseWeights
    from analysis.io.inventory import AdapterFiles

__all__ = ["Inspection", "inspect_adapter", "group_summary", "layer_ranges", "ENERGIES", "MODULE_COLUMNS"]

#: Shares of ‖ΔW‖_F² whose rank is given per module (columns ``rank_e50``, ``rank_e90``, ``rank_e99``).
ENERGIES = (0.5, 0.9, 0.99)
#: Columns of :attr:`Inspection.frame` (with a base also ``w_norm``, ``rel_norm`` and, for DoRA modules,
#: ``dora_fro``, ``dora_rel``).
MODULE_COLUMNS = ("name", "stack", "role", "layer", "module", "kind", "d_out", "d_in", "weight_shape", "r",
                  "rank", "alpha", "scale", "zero", "dora", "fro", "sigma1", "effective_rank", "stable_rank",
                  "rank_e50", "rank_e90", "rank_e99", "top1_energy")

_METHOD = {"LORA": "LoRA", "ADALORA": "AdaLoRA", "LOHA": "LoHa", "LOKR": "LoKr", "VERA": "VeRA"}
_ALGO = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "vera": "VeRA"}
_FAMILY = {"peft": "PEFT", "kohya": "kohya sd-scripts", "kohya-resolved": "kohya sd-scripts",
           "diffusers": "diffusers", "loralib": "loralib"}


@dataclass(frozen=True)
class Inspection:
    """One adapter at a glance (:func:`inspect_adapter`).

    Attributes
    ----------
    path : str
        The adapter as the user named it.
    reader : str
        The reader that read it (``Adapter.format``: ``peft``, ``kohya``, ``diffusers``, ``loralib``).
    family, method : str
        The format family (``PEFT``, ``kohya sd-scripts``, ``LyCORIS``, ``diffusers``, ``loralib``) and the
        update's method (``LoRA``, ``rsLoRA``, ``DoRA``, ``AdaLoRA``, ``LoHa``, ``LoKr``, ``VeRA``, ``LoCon`` …).
    recognised : str
        How the format was told.
    base_model : dict
        The base model the files name (:func:`analysis.io.inventory.named_base`), and ``given``: the
        ``--base`` used, if any.
    task_type : str or None
        PEFT's ``task_type``.
    components : tuple of str
        Pipeline components of a kohya / diffusers file (``unet``, ``te1`` …).
    files : tuple of (str, int)
        File names and bytes on disk.
    dtypes : dict[str, int]
        Stored dtype -> number of tensors.
    config : dict
        The configuration the reader parsed (PEFT's ``adapter_config.json``, a diffusers header config).
    metadata : dict[str, str]
        Every field of the safetensors header metadata (kohya's ``ss_*`` …).
    readme : dict[str, str]
        The model card's front matter (PEFT folders).
    notes : tuple of str
        What the reader settled.
    ranks : list of dict
        ``{"r", "alpha", "scale", "modules"}``: the distinct (r, α, scale) of the modules, most common first.
    saved : dict[str, (tuple, str)]
        Tensors saved beside the update (heads, ``modules_to_save``, trainable tokens): key -> (shape, dtype).
    frame : pandas.DataFrame
        One row per module, columns :data:`MODULE_COLUMNS`.
    spectra : dict[str, (k,) ndarray]
        Singular values of each module's ΔW (of its factors' product when the scale is unknown).
    base : str or None
        The base model the ratios ‖ΔW‖_F / ‖W‖_F were computed against.
    """

    path: str
    reader: str
    family: str
    method: str
    recognised: str
    base_model: dict
    task_type: str | None
    components: tuple
    files: tuple
    dtypes: dict
    config: dict
    metadata: dict
    readme: dict
    notes: tuple
    ranks: list
    saved: dict
    frame: pd.DataFrame = field(repr=False)
    spectra: dict = field(repr=False)
    base: str | None = None

    @property
    def label(self) -> str:
        """``"PEFT LoRA"``, ``"LyCORIS LoHa"``, ``"kohya sd-scripts LoRA"`` …"""
        return f"{self.family} {self.method}"

    @property
    def bytes(self) -> int:
        """Bytes on disk of the adapter's files."""
        return sum(n for _, n in self.files)

    @property
    def scale_known(self) -> bool:
        """False when the format stores no α and none was given (loralib without ``alpha=``)."""
        return bool(len(self.frame)) and bool(self.frame["scale"].notna().all())

    @property
    def zero_modules(self) -> list:
        """Modules whose update is exactly zero (B = 0: untrained, or α = 0)."""
        return list(self.frame.loc[self.frame["zero"], "name"]) if len(self.frame) else []

    def to_frame(self) -> pd.DataFrame:
        """The per-module frame (a copy)."""
        return self.frame.copy()

    def groups(self, *, by: Sequence[str] = ("stack", "role")) -> pd.DataFrame:
        """The modules summarised by group (:func:`group_summary`)."""
        return group_summary(self.frame, by=by)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready in structure (numpy values and NaN are left to ``json_ready``).

        Returns
        -------
        dict
            Keys ``adapter`` (path, reader, format, method, recognised, base_model, task_type, components,
            files, bytes, dtypes, notes), ``ranks``, ``zero_modules``, ``saved``, ``config``, ``metadata``,
            ``readme``, ``groups`` (by stack and role) and ``modules`` (one record per module, with its
            singular values).
        """
        mods = []
        for rec in self.frame.to_dict(orient="records"):
            rec = {k: _plain(v) for k, v in rec.items()}
            layer = rec["layer"]  # a float column when some modules have no layer (lm_head)
            rec["layer"] = None if layer is None or (isinstance(layer, float) and math.isnan(layer)) else int(layer)
            rec["singular_values"] = self.spectra.get(rec["name"], np.zeros(0))
            mods.append(rec)
        return {
            "adapter": {"path": self.path, "reader": self.reader, "format": self.family, "method": self.method,
                        "recognised": self.recognised, "base_model": self.base_model, "task_type": self.task_type,
                        "components": list(self.components), "files": [{"name": n, "bytes": b} for n, b in self.files],
                        "bytes": self.bytes, "dtypes": self.dtypes, "notes": list(self.notes)},
            "ranks": self.ranks, "zero_modules": self.zero_modules,
            "saved": [{"key": k, "shape": list(s), "dtype": d} for k, (s, d) in self.saved.items()],
            "config": self.config, "metadata": self.metadata, "readme": self.readme,
            "groups": [{k: _plain(v) for k, v in g.items()} for g in self.groups().to_dict(orient="records")],
            "modules": mods,
        }


def _plain(v):
    """numpy scalars and tuples as plain Python values (NaN kept for ``json_ready``)."""
    if isinstance(v, tuple):
        return [int(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _module_row(name, lr):
    """``(row, S)``: the columns of :data:`MODULE_COLUMNS` for one module and its singular values."""
    pos = module_role(name)
    srow, S = spectrum_row(lr, scale_free=True)  # S: (k,) singular values of ΔW (up to the scale if unknown)
    meta = lr.meta
    alpha = meta.get("alpha")
    row = {"name": name, "stack": pos.stack, "role": pos.role, "layer": pos.layer, "module": pos.module,
           "kind": lr.kind, "d_out": int(lr.shape[0]), "d_in": int(lr.shape[1]),
           "weight_shape": None if lr.weight_shape is None else tuple(int(x) for x in lr.weight_shape),
           "r": int(meta.get("r", lr.r)), "rank": int(lr.rank), "alpha": None if alpha is None else float(alpha),
           "scale": None if lr.scale is None else float(lr.scale), "zero": bool(lr.is_zero),
           "dora": bool(meta.get("dora", False)), "fro": srow["fro"], "sigma1": srow["sigma1"],
           "effective_rank": srow["effective_rank"], "stable_rank": srow["stable_rank"]}
    for e in ENERGIES:
        row[f"rank_e{round(100 * e)}"] = rank_for_energy(S, e) if S.size and S[0] > 0 else 0
    row["top1_energy"] = srow["top1_energy"]
    return row, np.asarray(S, dtype=np.float64)


def _base_norms(base, ex, names):
    """``{name: (‖W‖_F, ‖W' − W‖_F or NaN)}`` for every module, reading each base tensor once."""
    users = {}
    for n in names:
        users.setdefault(base_tensor_name(n, ex[n]), []).append(n)
    path = getattr(base, "path", None)

    def one(item, *lrs):
        tensor, W = item
        out = []
        for n, lr in zip(users[tensor], lrs):
            Wm = np.asarray(base_matrix(W, lr, name=n, path=path), dtype=np.float64)  # (d_out, d_in)
            w = float(np.linalg.norm(Wm))
            eff = float(np.linalg.norm(dora_delta(lr, Wm))) if lr.meta.get("dora") and lr.scale is not None \
                else math.nan
            out.append((n, (w, eff)))
        return out

    # one weight after another in the caller's thread, BLAS threads as the caller left them
    done = sweep_modules(one, read_base(base, list(users)), modules=lambda item: [ex[n] for n in users[item[0]]],
                         jobs=1, alone_threads=None)
    return {n: norms for part in done for n, norms in part}


def _family_method(adapter, rows, metas, metadata):
    """The format family and the update's method, in words."""
    cfg = adapter.config or {}
    algos = Counter(str(m.get("algo") or "lora") for m in metas)
    dora = any(r["dora"] for r in rows)
    conv = any(r["kind"] == "conv" for r in rows)
    extras = []
    if adapter.format == "peft":
        peft_type = str(cfg.get("peft_type") or (metas[0].get("peft_type") if metas else "LORA")).upper()
        method = _METHOD.get(peft_type, peft_type)
        if method == "LoRA" and cfg.get("use_rslora"):
            extras.append("rsLoRA: scale alpha / sqrt(r)")
        family = "PEFT"
    else:
        family = _FAMILY.get(adapter.format, adapter.format)
        lyco = [a for a in algos if a != "lora"]
        if adapter.format.startswith("kohya") and (lyco or str(metadata.get("ss_network_module", "")).startswith(
                "lycoris") or any(n.startswith("lycoris_") for n in adapter)):
            family = "LyCORIS"
        names = [_ALGO.get(a, a) for a, _ in algos.most_common()]
        if names == ["LoRA"] and conv and adapter.format.startswith("kohya"):
            names = ["LoCon" if family == "LyCORIS" else "LoRA (with conv modules: LoCon)"]
        method = " + ".join(names) or "LoRA"
    if dora:
        extras.append("DoRA: magnitude vector; numbers are of the directional part s·B·A")
    return family, method + (f" ({'; '.join(extras)})" if extras else "")


def _rank_settings(rows):
    """The distinct (r, α, scale) of the modules, most common first."""
    c = Counter((r["r"], r["alpha"], None if r["scale"] is None else round(r["scale"], 12)) for r in rows)
    return [{"r": r, "alpha": a, "scale": s, "modules": n}
            for (r, a, s), n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0][0], str(kv[0][1:])))]


def inspect_adapter(adapter: Adapter, *, path: str | None = None, files: AdapterFiles | None = None,
                    base: BaseWeights | Mapping[str, np.ndarray] | None = None, base_label: str | None = None,
                    modules: Sequence[str] | None = None,
                    layers: set[int] | str | Layers | None = None) -> Inspection:
    """Summarise one adapter: what it is, and how much rank each module's update uses.

    Parameters
    ----------
    adapter : Adapter
        As :func:`analysis.io.load_adapter` returned it (lazy or not). Where the scale is unknown (loralib
        without ``alpha=``), the rank measures are given (they do not depend on it) and ‖ΔW‖_F is NaN.
    path : str, optional
        The adapter as the user named it (default ``adapter.path``).
    files : AdapterFiles, optional
        Its files (:func:`analysis.io.inventory.adapter_files`); without them the file facts are empty.
    base : BaseWeights or Mapping[str, ndarray], optional
        The base model (:func:`analysis.io.base.open_base`): adds ``w_norm`` = ‖W‖_F and ``rel_norm`` =
        ‖ΔW‖_F / ‖W‖_F per module (DoRA modules also ``dora_fro`` = ‖W' − W‖_F and ``dora_rel``).
    base_label : str, optional
        The base as the user named it (recorded).
    modules, layers
        Filters, see :func:`analysis.core.adapter.select_modules`.

    Returns
    -------
    Inspection

    Raises
    ------
    ValueError
        No module left after the filters.
    AdapterError
        The base has no weight for a module, or one of another shape.
    """
    import pandas as pd

    ex = require_adapter(adapter).expanded()
    names = select_modules(ex, modules=modules, layers=layers)
    if not names:
        raise InputError(f"{path or adapter.path}: no module left after the --modules / --layers filters")
    rows, spectra, metas = [], {}, []

    def one(n, lr):  # a lazy adapter reads this module's factors now, and drops them after
        row, S = _module_row(n, lr)
        meta = {k: v for k, v in lr.meta.items() if k in ("algo", "peft_type", "component", "alpha_source")}
        return n, row, S, meta

    for n, row, S, meta in sweep_modules(one, names, modules=(ex,), jobs=1, alone_threads=None):
        rows.append(row)
        spectra[n] = S
        metas.append(meta)
    frame = pd.DataFrame(rows, columns=list(MODULE_COLUMNS))
    if base is not None:
        norms = _base_norms(base, ex, names)
        frame["w_norm"] = [norms[n][0] for n in names]
        frame["rel_norm"] = frame["fro"] / frame["w_norm"].where(frame["w_norm"] > 0)
        if frame["dora"].any():
            frame["dora_fro"] = [norms[n][1] for n in names]
            frame["dora_rel"] = frame["dora_fro"] / frame["w_norm"].where(frame["w_norm"] > 0)
    metadata = dict(files.metadata) if files is not None else {}
    family, method = _family_method(adapter, rows, metas, metadata)
    cfg = dict(adapter.config or {})
    named = named_base(adapter, files) if files is not None else {"name": None, "source": None, "architecture": None}
    return Inspection(
        path=str(path or adapter.path), reader=adapter.format, family=family, method=method,
        recognised=files.recognised if files is not None else f"{adapter.format} reader",
        base_model={**named, "given": base_label}, task_type=cfg.get("task_type") if adapter.format == "peft" else None,
        components=tuple(sorted({str(m["component"]) for m in metas if m.get("component")})),
        files=tuple(files.files) if files is not None else (), dtypes=files.dtypes if files is not None else {},
        config={} if adapter.format.startswith("kohya") else cfg, metadata=metadata,  # kohya's: the metadata's
        readme=dict(files.readme) if files is not None else {}, notes=tuple(adapter.notes),
        ranks=_rank_settings(rows), saved=files.saved_tensors() if files is not None else {}, frame=frame,
        spectra=spectra, base=base_label)


def layer_ranges(layers: Iterable[int | float | None]) -> str:
    """Layer indices as compact text: ``[0, 1, 2, 5]`` -> ``"0-2,5"``; ``"-"`` when there are none.

    >>> layer_ranges([3, 0, 1, 2, 7]), layer_ranges([None])
    ('0-3,7', '-')
    """
    xs = {int(x) for x in layers if x is not None and not (isinstance(x, float) and math.isnan(x))}
    return ranges_text(xs, sep=",") if xs else "-"


def _span(values, fmt="{:g}"):
    """``"8"`` for one value, ``"4-16"`` for several (None values left out; ``"-"`` for none)."""
    vals = sorted({v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))})
    if not vals:
        return "-"
    return fmt.format(vals[0]) if len(vals) == 1 else f"{fmt.format(vals[0])}-{fmt.format(vals[-1])}"


def _shapes(g):
    shapes = sorted({(int(a), int(b)) for a, b in zip(g["d_out"], g["d_in"])}, key=lambda s: (s[0] * s[1], s))
    if len(shapes) == 1:
        return f"{shapes[0][0]}x{shapes[0][1]}"
    return f"{len(shapes)} shapes {shapes[0][0]}x{shapes[0][1]}-{shapes[-1][0]}x{shapes[-1][1]}"


def _median(s):
    s = s.dropna()
    return float(s.median()) if len(s) else math.nan


def group_summary(frame: pd.DataFrame, *, by: Sequence[str] = ("stack", "role")) -> pd.DataFrame:
    """The modules of an :class:`Inspection` summarised per group (stack and role by default).

    Parameters
    ----------
    frame : pandas.DataFrame
        :attr:`Inspection.frame`.
    by : sequence of {"stack", "role"}
        Group keys; ``("role",)`` pools the stacks.

    Returns
    -------
    pandas.DataFrame
        One row per group in model order (stacks as :func:`~analysis.io.roles.stack_order`, roles as
        :data:`~analysis.io.roles.ROLES`): the keys, ``label`` (the role in words), ``modules``, ``layers``
        (compact ranges), ``shapes``, ``r``, ``alpha`` (text: one value or a range), ``zero`` (count), the
        medians over the non-zero modules of ``fro``, ``effective_rank``, ``stable_rank``, ``rank_e50``,
        ``rank_e90``, ``rank_e99`` (and ``rel_norm`` with a base), and ``fro_min`` / ``fro_max``.
    """
    import pandas as pd

    by = list(by)
    if not set(by) <= {"stack", "role"} or not by:
        raise InputError(f"by must be a non-empty subset of ('stack', 'role'), got {by}")
    rows: list[dict[str, Any]] = []
    if not len(frame):
        return pd.DataFrame(rows)

    def order(key):
        key = key if isinstance(key, tuple) else (key,)
        d = dict(zip(by, key))
        return (stack_order(d.get("stack", "")), ROLES.index(d["role"]) if d.get("role") in ROLES else len(ROLES),
                str(d.get("role", "")))

    grouped = dict(list(frame.groupby(by, sort=False)))
    for key in sorted(grouped, key=order):
        g = grouped[key]
        live = g[~g["zero"]]
        d = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row = {**d, "label": role_label(d["role"]) if "role" in d else "",
               "modules": int(len(g)), "layers": layer_ranges(g["layer"]), "shapes": _shapes(g),
               "r": _span(g["r"]), "alpha": _span(g["alpha"]), "zero": int(g["zero"].sum()),
               "fro": _median(live["fro"]), "fro_min": float(live["fro"].min()) if len(live) else math.nan,
               "fro_max": float(live["fro"].max()) if len(live) else math.nan}
        for c in ("effective_rank", "stable_rank", "rank_e50", "rank_e90", "rank_e99", "rel_norm", "dora_rel"):
            if c in g:
                row[c] = _median(live[c])
        if "stack" not in by:
            row["stacks"] = ",".join(sorted(set(g["stack"]), key=stack_order))
        rows.append(row)
    return pd.DataFrame(rows)

