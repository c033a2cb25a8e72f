"""Figures at any size: adapter names of 40 characters, 12 modules per layer, many layers, one pair only.

Each figure of the report (and of ``subspace --out``) is drawn and every text it draws is checked: none may leave
the canvas, no two may overlap (matplotlib gives each text's window extent).
"""

import pytest

from _layout import text_problems, write_big_pair
from analysis.report import ReportConfig, compute_report
from analysis.report import figures as F
from analysis.report.findings import findings


def _figures(data, fs):
    out = {"fig3": lambda: F.fig_rank_pair(data), "fig3_dW": lambda: F.fig_rank_pair(data, side="input"),
           "fig6": lambda: F.fig_layers(data, which="rank"), "layers_phi11": lambda: F.fig_phi11_layers(data),
           "spectra": lambda: F.fig_spectra(data)}
    if data.seed_pair is not None:
        out.update({"fig4": lambda: F.fig_seed_pair(data), "fig7": lambda: F.fig_layers(data, which="seed"),
                    "advice": lambda: F.fig_rank_advice(data)})
    if data.table7 is not None:
        out.update({"table7": lambda: F.fig_table7(data), "fig8": lambda: F.fig_weight_overlap(data),
                    "fig8_top1": lambda: F.fig_weight_overlap(data, j=1),
                    "fig8_grid": lambda: F.fig_weight_overlap_grid(data),
                    "amplification": lambda: F.fig_amplification_layers(data, fs),
                    "table7_layers": lambda: F.fig_t7_layers(data, fs)})
    return out


def _check_all(data):
    fs = findings(data)
    problems = {}
    for name, make in _figures(data, fs).items():
        p = text_problems(make())
        if p:
            problems[name] = p[:3]
    assert not problems, problems


@pytest.fixture(scope="module")
def big6(tmp_path_factory):
    return write_big_pair(tmp_path_factory.mktemp("big6"), layers=6)


@pytest.mark.slow
def test_long_names_twelve_modules_both_pairs(big6):
    (a, b, c), base = big6
    _check_all(compute_report(ReportConfig(pairs=(("rank", str(a), str(b)), ("seed", str(b), str(c))),
                                           base=str(base))))


@pytest.mark.slow
def test_one_pair_only_no_base(big6):
    (a, b, _), _ = big6
    data = compute_report(ReportConfig(pairs=(("rank", str(a), str(b)),)))
    assert data.seed_pair is None
    _check_all(data)


@pytest.mark.slow
def test_a_hundred_layers(tmp_path):
    (a, b, c), base = write_big_pair(tmp_path, layers=100, modules=("self_attn.q_proj", "self_attn.v_proj",
                                                                     "mlp.up_proj"))
    _check_all(compute_report(ReportConfig(pairs=(("rank", str(a), str(b)), ("seed", str(b), str(c))),
                                           base=str(base))))


@pytest.mark.slow
def test_subspace_figures_on_an_encoder_decoder(corpus, tmp_path):
    """``subspace --out`` on T5 (q, v in two stacks and cross-attention): one line per module type, texts clean."""
    from analysis import load_adapter
    from analysis.cli.subspace_figures import _write_figures
    from analysis.sweeps.pair import compare_adapters

    m = corpus["t5"]
    a, b = load_adapter(m.adapters["rank_low"]), load_adapter(m.adapters["rank_high"])
    sweep = compare_adapters(a, b, sides=("A", "input"))
    import matplotlib.figure

    made = []
    orig = matplotlib.figure.Figure.savefig

    def keep(fig, path, **kw):
        made.append(fig)
        return orig(fig, path, **kw)

    matplotlib.figure.Figure.savefig = keep
    try:
        names = _write_figures(sweep, a, b, str(tmp_path), sweeps=None, layer=None)
    finally:
        matplotlib.figure.Figure.savefig = orig
    assert "phi11_by_layer.png" in names
    for fig in made:
        assert not text_problems(fig)
    phi11 = made[names.index("phi11_by_layer.png")]
    labels = phi11.axes[0].get_legend_handles_labels()[1]
    assert sum("(cross)" in x for x in labels) >= 1 and len(labels) >= 4  # encoder, decoder and cross lines apart


@pytest.mark.slow
def test_a_zero_module_in_a_pair(tmp_path):
    """An untrained module (B = 0) in one adapter: the report draws every figure, the zero update marked."""
    from _synthetic import write_base_for
    from conftest import make_peft_adapter

    make_peft_adapter(tmp_path / "a", r=4, seed=1)
    make_peft_adapter(tmp_path / "b", r=4, seed=2, zero_b=True)
    make_peft_adapter(tmp_path / "c", r=2, seed=3)
    write_base_for(tmp_path / "a", tmp_path / "base.safetensors")
    data = compute_report(ReportConfig(pairs=(("rank", str(tmp_path / "c"), str(tmp_path / "b")),
                                              ("seed", str(tmp_path / "a"), str(tmp_path / "b"))),
                                       base=str(tmp_path / "base.safetensors")))
    _check_all(data)
    fs = {f.id: f for f in findings(data)}
    assert fs["fig3_rank_pair"].verdict == "not computed"  # every module of the pair is a zero update
