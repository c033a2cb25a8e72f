"""Plotting functions draw one Axes, return their artists, and never touch pyplot state."""

import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis import LowRank, module_similarity
from analysis.metrics.correlation import weight_overlap
from analysis.plotting import (plot_layer_profile, plot_phi, plot_spectra, plot_table,
                               plot_weight_overlap)


@pytest.fixture(scope="module")
def sim():
    rng = np.random.default_rng(0)
    a = LowRank(rng.standard_normal((4, 30)), rng.standard_normal((20, 4)), name="model.layers.3.self_attn.q_proj")
    b = LowRank(rng.standard_normal((12, 30)), rng.standard_normal((20, 12)), name=a.name)
    return module_similarity(a, b, side="A")


def _ax():
    return Figure().add_subplot()


def test_plot_phi_heatmap_annotated_and_zoom(sim):
    ax = _ax()
    art = plot_phi(sim, ax=ax, j_max=4, title="zoom")
    assert art.ax is ax and art.image.get_array().shape == (4, 4)
    assert len(art.texts) == 16 and art.texts[0].get_text() == f"{sim.phi[0, 0]:.2f}"
    assert art.colorbar is not None and ax.get_xlabel() == "j" and ax.get_ylabel() == "i"
    assert list(ax.get_xticks()) == [1, 2, 3, 4] and ax.get_title() == "zoom"
    big = plot_phi(sim, transpose=True, annotate="never", colorbar=False)
    assert big.image.get_array().shape == (12, 4) and big.texts == [] and big.colorbar is None
    # the tidy frame and the result draw the same grid
    np.testing.assert_allclose(plot_phi(sim.to_frame()).image.get_array(), sim.phi)
    with pytest.raises(ValueError, match="annotate"):
        plot_phi(sim, annotate="yes")
    with pytest.raises(ValueError, match="empty"):
        plot_phi(np.zeros((0, 0)))


def test_plot_weight_overlap_lines_and_null():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((20, 16))
    res = {f"r = {r}": weight_overlap(W, LowRank(rng.standard_normal((r, 16)), rng.standard_normal((20, r))),
                                      side="input") for r in (1, 4)}
    ax = _ax()
    arts = plot_weight_overlap(res, ax=ax, show_random=True)
    lines = [a for a in arts if hasattr(a, "get_xdata")]
    assert len(lines) == 2 * 3 + 2  # φ, null, random per curve + two legend proxies
    np.testing.assert_allclose(lines[0].get_ydata(), res["r = 1"].phi[:, 0])
    assert "right (input)" in ax.get_xlabel() and ax.get_xscale() == "log"
    assert plot_weight_overlap(list(res.values()), j=1, legend=False)[0].get_label() == "r = 1 (j = 1)"


def test_plot_layer_profile_and_spectra_and_table():
    fr = pd.DataFrame({"layer": [0, 1, 2, 0, 1, 2], "module": ["self_attn.q_proj"] * 3 + ["self_attn.v_proj"] * 3,
                       "phi11_A": [0.9, 0.8, 0.7, 0.1, 0.2, 0.3], "null": 0.01})
    ax = _ax()
    arts = plot_layer_profile(fr, "phi11_A", ax=ax, null="null", ylabel="φ(1, 1)")
    assert arts[0].get_label() == "$\\Delta W_q$" and list(arts[0].get_ydata()) == [0.9, 0.8, 0.7]
    assert ax.get_ylabel() == "φ(1, 1)"
    with pytest.raises(ValueError, match="no column"):
        plot_layer_profile(fr, "amplification")
    spectra = {f"model.layers.{i}.self_attn.q_proj": np.array([3.0, 2.0, 1.0]) * (i + 1) for i in range(3)}
    sp = plot_spectra(spectra, ax=_ax())
    np.testing.assert_allclose(sp[0].get_ydata(), [1.0, 2 / 3, 1 / 3])
    assert sp[-1].ax.get_ylabel() == "layer"
    with pytest.raises(ValueError, match="no non-zero"):
        plot_spectra(spectra, module="v_proj")
    tab = plot_table(fr, ax=_ax(), columns=["layer", "phi11_A"], col_labels=["layer", "φ(1,1)"],
                     fmt={"layer": "{:.0f}", "phi11_A": "{:.2f}"})
    cells = tab.get_celld()
    assert cells[(0, 1)].get_text().get_text() == "φ(1,1)" and cells[(1, 1)].get_text().get_text() == "0.90"


def test_no_pyplot_state():
    assert "matplotlib.pyplot" not in sys.modules or not __import__("matplotlib.pyplot").pyplot.get_fignums()
