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
from analysis.plotting import (PlotArtists, plot_layer_profile, plot_phi, plot_spectra, plot_table,
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
    assert isinstance(art, PlotArtists) and set(art.keys()) == {"image", "colorbar", "texts"}
    assert art.ax is ax and art.fig is ax.figure and art["image"] is art.image
    assert art.image.get_array().shape == (4, 4)
    assert len(art.texts) == 16 and art.texts[0].get_text() == f"{sim.phi[0, 0]:.2f}"
    assert art.colorbar is not None and ax.get_xlabel() == "j" and ax.get_ylabel() == "i"
    assert list(ax.get_xticks()) == [1, 2, 3, 4] and ax.get_title() == "zoom"
    big = plot_phi(sim, transpose=True, annotate="never", colorbar=False)
    assert isinstance(big, PlotArtists) and big.fig is big.ax.figure
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
    assert isinstance(arts, PlotArtists) and arts.ax is ax and arts["legend"] is ax.get_legend()
    # φ, null, random per curve + two legend proxies
    assert (len(arts["lines"]), len(arts["nulls"]), len(arts["random"])) == (2, 2 + 1, 2 + 1)
    np.testing.assert_allclose(arts["lines"][0].get_ydata(), res["r = 1"].phi[:, 0])
    assert "right (input)" in ax.get_xlabel() and ax.get_xscale() == "log"
    top1 = plot_weight_overlap(list(res.values()), j=1, legend=False)
    assert isinstance(top1, PlotArtists) and top1["legend"] is None
    assert top1["lines"][0].get_label() == "r = 1 (j = 1)"


def test_plot_layer_profile_and_spectra_and_table():
    fr = pd.DataFrame({"layer": [0, 1, 2, 0, 1, 2], "module": ["self_attn.q_proj"] * 3 + ["self_attn.v_proj"] * 3,
                       "phi11_A": [0.9, 0.8, 0.7, 0.1, 0.2, 0.3], "null": 0.01})
    ax = _ax()
    arts = plot_layer_profile(fr, "phi11_A", ax=ax, null="null", ylabel="φ(1, 1)")
    assert isinstance(arts, PlotArtists) and arts.ax is ax
    line = arts["lines"][0]
    assert line.get_label() == "$\\Delta W_q$" and list(line.get_ydata()) == [0.9, 0.8, 0.7]
    assert len(arts["lines"]) == 2 and len(arts["nulls"]) == 2 + 1 and arts["legend"] is ax.get_legend()
    assert ax.get_ylabel() == "φ(1, 1)"
    with pytest.raises(ValueError, match="no column"):
        plot_layer_profile(fr, "amplification")
    spectra = {f"model.layers.{i}.self_attn.q_proj": np.array([3.0, 2.0, 1.0]) * (i + 1) for i in range(3)}
    sp = plot_spectra(spectra, ax=_ax())
    assert isinstance(sp, PlotArtists) and len(sp["lines"]) == 3
    np.testing.assert_allclose(sp["lines"][0].get_ydata(), [1.0, 2 / 3, 1 / 3])
    assert sp["colorbar"].ax.get_ylabel() == "layer"
    with pytest.raises(ValueError, match="no non-zero"):
        plot_spectra(spectra, module="v_proj")
    tab = plot_table(fr, ax=_ax(), columns=["layer", "phi11_A"], col_labels=["layer", "φ(1,1)"],
                     fmt={"layer": "{:.0f}", "phi11_A": "{:.2f}"})
    assert isinstance(tab, PlotArtists) and not tab.ax.axison
    cells = tab["table"].get_celld()
    assert cells[(0, 1)].get_text().get_text() == "φ(1,1)" and cells[(1, 1)].get_text().get_text() == "0.90"


def test_no_pyplot_state():
    assert "matplotlib.pyplot" not in sys.modules or not __import__("matplotlib.pyplot").pyplot.get_fignums()


def test_every_plot_function_returns_plot_artists():
    from analysis.plotting import plot_advised_rank, plot_energy_spectra, plot_intruders

    names = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]
    long = pd.DataFrame([{"name": n, "layer": int(n.split(".")[2]), "module": n.split(".", 3)[3], "k": k,
                          "energy": min(1.0, 0.6 + 0.2 * k)} for n in names for k in (1, 2, 3)])
    es = plot_energy_spectra(long, ax=_ax())
    assert isinstance(es, PlotArtists) and set(es.keys()) == {"lines", "guides", "colorbar", "legend"}
    assert len(es["lines"]) == 4 and len(es["guides"]) == 2 and es["legend"] is es.ax.get_legend()
    per = pd.DataFrame({"layer": [0, 1, 0, 1], "module": ["self_attn.q_proj"] * 2 + ["self_attn.v_proj"] * 2,
                        "advised": [2, 4, 1, 4], "cap": 4, "capped": [False, True, False, True]})
    adv = plot_advised_rank(per, ax=_ax())
    assert isinstance(adv, PlotArtists) and set(adv.keys()) == {"lines", "nulls", "legend", "extras"}
    assert len(adv["lines"]) == 2 and len(adv["extras"]) == 1 and adv["legend"] is adv.ax.get_legend()
    intr = plot_intruders(per.rename(columns={"advised": "count"}), ax=_ax(), top_k=4)
    assert isinstance(intr, PlotArtists) and len(intr["bars"]) == 2 and intr["legend"] is not None


def test_plot_artists_access():
    art = plot_phi(np.eye(2), ax=_ax(), colorbar=False)
    assert "image" in art and "ax" not in art and art["colorbar"] is None
    assert "image" in dir(art) and "image=AxesImage" in repr(art) and "texts=[4 × Text]" in repr(art)
    with pytest.raises(KeyError, match="no artist 'lines'"):
        art["lines"]
    with pytest.raises(AttributeError, match="lines"):
        art.lines
    with pytest.raises(AttributeError):  # frozen
        art.ax = None


def test_report_builders_take_plain_inputs(sim):
    """The report's composite builders draw from frames, results, labels and numbers (no ReportData)."""
    from analysis.plotting import report_figures as R

    zero = type("Zero", (), {"zero": True})()
    fig = R.seed_pair_figure({"ΔWq": (sim, "q: a vs b"), "ΔWv": (zero, "v")}, sim,
                             {"ΔWq": dict(layers=[0, 1], values=[0.3, 0.4], d=30, null=(0.05, 0.01, 0.1))},
                             n_diag=4, focus_layer=1, suptitle="Fig. 4")
    assert isinstance(fig, Figure) and fig.axes[1].texts[0].get_text() == "ΔWv: zero update"
    assert fig.get_suptitle() == "Fig. 4" and fig.axes[3].get_title().startswith("the tested statistic")
    fig = R.phi_layers_figure({"ΔWq": {0: sim, 3: sim}, "ΔWv": {0: sim, 3: zero}}, suptitle="Fig. 6", i_max=2)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["ΔWq, layer 0", "ΔWq, layer 3", "ΔWv, layer 0"]
    rng = np.random.default_rng(2)
    W = rng.standard_normal((20, 16))
    ov = {s: weight_overlap(W, LowRank(rng.standard_normal((2, 16)), rng.standard_normal((20, 2))), side=s)
          for s in ("output", "input")}
    assert len(R.weight_overlap_figure({"ΔWq": ov}, j=1).axes) == 2
    js = (1, 2, 4, 8)
    fig = R.overlap_grid_figure({s: {"r = 2": o} for s, o in ov.items()}, js=js, module="ΔWq", band_label="random",
                                bands={s: (np.array(js, float), np.full(4, 3.0)) for s in ov})
    assert fig.axes[0].get_title() == "ΔWq: output side (d = 20)" and len(fig.axes) == 2
    t = pd.DataFrame({"kind": "q", "adapter": np.repeat(["a4", "a8"], 3), "r": np.repeat([4, 8], 3),
                      "layer": [0, 1, 2] * 2, "amplification": 2.0, "amp_random": 1.0, "proj_delta": 2.0,
                      "null_mean": 1.0, "null_sd": 0.2})
    fig = R.amplification_layers_figure(t, {"q": "ΔWq"}, series={"a4": "r = 4", "a8": "r = 8"}, suptitle="amp")
    assert len(fig.axes[0].get_lines()) == 4
    fig = R.t7_layers_figure(t, {"q": "ΔWq"}, holm={"q": 3.4}, holds={("q", 4): {1: True}})
    assert len(fig.axes[0].collections) == 4  # filled and open markers per rank
    fig = R.spectra_grid_figure({"r = 8": {"ΔWq": {"l0": [3.0, 1.0]}, "ΔWv": {}}})
    assert fig.axes[1].texts[0].get_text() == "ΔWv, r = 8: zero update"
    lr = pd.DataFrame({"r": 4, "step": [0, 1, 0, 1], "layer": [0, 0, 1, 1], "z": 1.0, "amplification": 2.0,
                       "amp_random": 1.0, "rel_norm": 0.1})
    assert len(R.long_run_figure(lr, focus_layer=0).axes) == 6
    line = dict(run="r8b", shared_data=True, shared_A=None, layer=[0, 1], phi11=[0.5, 0.2], d=30, verdict=None)
    fig = R.data_vs_init_figure({"r64": {"ΔWq": [line]}}, low=8)
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "r8b: data shared, A unchecked"
    fig = R.control_figure({s: dict(lines=[("q", [0, 1], [0.2, 0.3], 30)], nulls=[(30, (0.01, 0.1), 0.05)])
                            for s in ("A", "input")}, n_diag=4)
    assert len(fig.axes) == 2 and fig.axes[1].get_title().startswith("basis right-singular vectors of $\\Delta W$")
