"""Figures written by ``python -m analysis.subspace A B --out DIR`` (PNG, one file per figure).

Built with the composite builders of :mod:`analysis.plotting.composite` that the report uses too, so that the
same figure looks the same from both commands.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from analysis.errors import InputError
from analysis.io.outputs import atomic_output
from analysis.io.roles import module_role
from analysis.plotting.common import module_label
from analysis.plotting.composite import (amplification_figure, phi11_layers_figure, phi_modules_figure, spectra_figure,
                                         table7_figure)

if TYPE_CHECKING:
    from analysis.core.adapter import Adapter
    from analysis.sweeps.adapter import AdapterSweep
    from analysis.sweeps.pair import PairSweep

__all__ = ["write_pair_figures"]


def _tag(path):
    return os.path.basename(os.path.normpath(str(path))) or str(path)


def _focus_layer(frame, layer):
    layers = sorted(int(x) for x in frame["layer"].dropna().unique())
    if layer is not None:
        if layer not in layers:
            raise InputError(f"--figure-layer {layer} is not among the compared layers {layers}")
        return layer
    return layers[len(layers) // 2] if layers else None


def _by_kind(frame):
    """``frame`` whose ``module`` column holds each module's type across layers (``stack/module part``)."""
    if not len(frame):
        return frame
    return frame.assign(module=[module_role(n).kind for n in frame["name"]])


def _spectra(adapter, names):
    """Singular values of ΔW per module (of the update's factors when the adapter stores no scale)."""
    mods = adapter.expanded()
    return {n: mods[n].side_singular_values("input") if mods[n].scale is None else mods[n].singular_values()
            for n in names}


def write_pair_figures(sweep: PairSweep, a: Adapter, b: Adapter, out: str, *,
                       sweeps: tuple[AdapterSweep, AdapterSweep] | None = None, layer: int | None = None,
                       force: bool = False) -> list[str]:
    """Write the comparison figures of two adapters into ``out``.

    Parameters
    ----------
    sweep : PairSweep
    a, b : Adapter
    out : str
        Folder, written whole or not at all (built beside it, then renamed into place).
    sweeps : (AdapterSweep, AdapterSweep), optional
        Per-adapter sweeps with a base (adds the amplification figure and Table 7).
    layer : int, optional
        Layer of the heatmaps and of Table 7; default the middle of the compared layers.
    force : bool
        Replace an existing, non-empty ``out`` (as a whole).

    Returns
    -------
    list of str
        File names written: ``phi_layer{L}.png``, ``phi11_by_layer.png``,
        ``spectra.png``, and with ``sweeps`` ``amplification_by_layer.png``,
        ``table7_layer{L}.png``.
    """
    with atomic_output(out, force=force, folder=True) as tmp:
        return _write_figures(sweep, a, b, tmp, sweeps=sweeps, layer=layer)


def _write_figures(sweep, a, b, out, *, sweeps, layer):
    fr = sweep.frame[~(sweep.frame["zero_a"] | sweep.frame["zero_b"])] if len(sweep.frame) else sweep.frame
    fr = _by_kind(fr)  # one line per module type, unique across stacks (encoder / decoder …)
    written = []
    ta, tb = _tag(a.path), _tag(b.path)
    if ta == tb:  # the figures name the two adapters apart
        ta, tb = f"{ta} (A)", f"{tb} (B)"

    def save(fig, name):
        fig.savefig(os.path.join(out, name), dpi=110)
        written.append(name)

    if not len(fr):
        return written
    L = _focus_layer(fr, layer)
    at = "" if L is None else f", layer {L}"
    here = fr if L is None else fr[fr["layer"] == L]
    mods = list(here["name"])[:6]
    if mods:
        panels = [dict(side=side, title=f"{{module}} ({basis})", ylabel="i ({a}, r={r1})", xlabel="j ({b}, r={r2})")
                  for side, basis in (("A", "right-sing. vectors of A"), ("input", "right-sing. vectors of ΔW"))]
        save(phi_modules_figure(sweep, mods, panels=panels, labels=(ta, tb),
                                suptitle=f"Subspace similarity φ(i, j) between {ta} and {tb}{at}\n"
                                         "random subspaces: φ ≈ max(i, j)/d"),
             f"phi_layer{L}.png" if L is not None else "phi.png")
    if fr["layer"].notna().any():
        several = fr["module"].str.split("/").str[0].nunique() > 1
        save(phi11_layers_figure({"": fr}, labels={k: module_label(k, stack=several) for k in fr["module"].unique()},
                                 suptitle=f"Is the top direction shared? φ(1, 1) per layer, {ta} vs {tb}"),
             "phi11_by_layer.png")
    modules = sorted(fr["module"].unique())[:4]
    names = list(fr["name"])
    save(spectra_figure({ta: _spectra(a, names), tb: _spectra(b, names)}, modules), "spectra.png")
    if sweeps is not None:
        frames = {t: _by_kind(s.frame[~s.frame["zero"]]) for t, s in zip((ta, tb), sweeps)}
        save(amplification_figure(frames, modules=sorted(set().union(*(f["module"] for f in frames.values())))[:4],
                                  suptitle="How strongly ΔW amplifies directions of W (Table 7 of the LoRA paper, "
                                           "per layer)"),
             "amplification_by_layer.png")
        rows = {t: f if L is None else f[f["layer"] == L] for t, f in frames.items()}
        if sum(len(f) for f in rows.values()):
            save(table7_figure(rows, paper=False, label_header="adapter",
                               title=f"Table 7{at}: W projected on the top-r singular directions of ΔW, of W, "
                                     "of random subspaces"),
                 f"table7_layer{L}.png" if L is not None else "table7.png")
    return written
