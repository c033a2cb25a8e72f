"""Figures written by ``python -m analysis.subspace A B --out DIR`` (PNG, one file per figure)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["write_pair_figures"]


def _figure(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _tag(path):
    return os.path.basename(os.path.normpath(str(path))) or str(path)


def _focus_layer(frame, layer):
    layers = sorted(int(x) for x in frame["layer"].dropna().unique())
    if layer is not None:
        if layer not in layers:
            raise ValueError(f"--figure-layer {layer} is not among the compared layers {layers}")
        return layer
    return layers[len(layers) // 2] if layers else None


def write_pair_figures(sweep, a, b, out, *, sweeps=None, layer=None):
    """Write the comparison figures of two adapters into ``out``.

    Parameters
    ----------
    sweep : PairSweep
    a, b : Adapter
    out : str
        Folder (created).
    sweeps : (AdapterSweep, AdapterSweep), optional
        Per-adapter sweeps with a base (adds the amplification figure).
    layer : int, optional
        Layer of the heatmaps; default the middle of the compared layers.

    Returns
    -------
    list of str
        File names written.
    """
    import pandas as pd

    from analysis.plotting import plot_layer_profile, plot_phi, plot_spectra, plot_table
    from analysis.plotting.common import module_label

    os.makedirs(out, exist_ok=True)
    fr = sweep.frame[~(sweep.frame["zero_a"] | sweep.frame["zero_b"])] if len(sweep.frame) else sweep.frame
    written = []
    ta, tb = _tag(a.path), _tag(b.path)

    def save(fig, name):
        fig.savefig(os.path.join(out, name), dpi=110)
        written.append(name)

    if not len(fr):
        return written
    L = _focus_layer(fr, layer)
    here = fr if L is None else fr[fr["layer"] == L]
    mods = list(here["name"])[:6]
    if mods:
        fig = _figure(10, 3.3 * len(mods) + 0.6)
        axes = np.atleast_2d(fig.subplots(len(mods), 2, squeeze=False))
        for row, name in enumerate(mods):
            m = module_label(here.loc[here["name"] == name, "module"].iloc[0])
            for col, side in enumerate(("A", "input")):
                res = sweep.results[name][side]
                basis = "right-sing. vectors of A" if side == "A" else "right-sing. vectors of ΔW"
                plot_phi(res, ax=axes[row, col], title=f"{m} ({basis})",
                         ylabel=f"i ({ta}, r={res.r1})", xlabel=f"j ({tb}, r={res.r2})")
        fig.suptitle(f"Subspace similarity φ(i, j) between {ta} and {tb}" + (f", layer {L}" if L is not None
                     else "") + "\nrandom subspaces: φ ≈ max(i, j)/d", fontsize=10)
        save(fig, f"phi_layer{L}.png" if L is not None else "phi.png")
    if fr["layer"].notna().any():
        f2 = fr.copy()
        f2["null11"] = 1.0 / f2["d_in"]
        fig = _figure(11, 3.8)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, side, txt in zip(axes, ("A", "input"), ("right-singular vectors of A (paper's basis)",
                                                         "right-singular vectors of ΔW")):
            plot_layer_profile(f2, f"phi11_{side}", ax=ax, null="null11", null_label="random null 1/d",
                               ylabel="φ(1, 1)", title=txt)
            ax.set_ylim(0, 1.02)
        fig.suptitle(f"Is the top direction shared? φ(1, 1) per layer, {ta} vs {tb}", fontsize=10)
        save(fig, "phi11_by_layer.png")
    modules = sorted(fr["module"].unique())[:4]
    fig = _figure(5 * len(modules), 6.6)
    axes = np.atleast_2d(fig.subplots(2, len(modules), squeeze=False))
    for row, (ad, tag) in enumerate(((a, ta), (b, tb))):
        spectra = {n: ad.expanded()[n].side_singular_values("input") if ad.expanded()[n].scale is None
                   else ad.expanded()[n].singular_values() for n in fr["name"]}
        for col, m in enumerate(modules):
            plot_spectra({n: s for n, s in spectra.items() if n.endswith(m)}, ax=axes[row, col],
                         title=f"{tag}: {module_label(m)}")
    fig.suptitle("Singular values of ΔW per layer (normalised by σ₁)", fontsize=10)
    save(fig, "spectra.png")
    if sweeps is not None:
        sa, sb = sweeps
        both = pd.concat([sa.frame.assign(adapter=ta), sb.frame.assign(adapter=tb)], ignore_index=True)
        both = both[~both["zero"]]
        both["amp_random"] = both["fro"] / both["proj_random"]
        mods_b = sorted(both["module"].unique())[:4]
        fig = _figure(5.5 * len(mods_b), 3.8)
        axes = fig.subplots(1, len(mods_b), squeeze=False)[0]
        for ax, m in zip(axes, mods_b):
            plot_layer_profile(both[both["module"] == m], "amplification", ax=ax, hue="adapter",
                               null="amp_random", null_label="same ‖ΔW‖ along random directions", logy=True,
                               ylabel=r"$\|\Delta W\|_F / \|U^\top W V\|_F$", title=f"{module_label(m)}: amplification factor")
        fig.suptitle("How strongly ΔW amplifies directions of W (Table 7 of the LoRA paper, per layer)", fontsize=10)
        save(fig, "amplification_by_layer.png")
        t = both if L is None else both[both["layer"] == L]
        if len(t):
            fig = _figure(11, 0.35 * len(t) + 1.3)
            ax = fig.add_subplot()
            plot_table(t, ax=ax, columns=["adapter", "layer", "module", "r", "proj_delta", "proj_w", "proj_random",
                                          "w_norm", "fro", "amplification"],
                       col_labels=["adapter", "layer", "module", "r", r"$\|U^\top W V\|_F$ (ΔW)", "(W)", "(random)",
                                   r"$\|W\|_F$", r"$\|\Delta W\|_F$", "amplification"],
                       fmt={"layer": "{:.0f}", "r": "{:.0f}"}, fontsize=8,
                       title=f"Table 7 at layer {L}: W projected on the top-r singular directions of ΔW, of W, "
                             "of random subspaces")
            save(fig, f"table7_layer{L}.png" if L is not None else "table7.png")
    return written
