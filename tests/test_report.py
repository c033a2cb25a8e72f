"""The report's code path end to end on tiny synthetic adapters and base (not the full report)."""

import json
import re
import shutil

import pytest

from analysis.cli.report import main
from analysis.io.frames import load_frame
from analysis.report.protocol import VERDICTS

import _chromium

PNG = b"\x89PNG\r\n\x1a\n"

ARGS = ["--layer", "1", "--fig-layers", "0,1", "--ranks", "1,2,4", "--low", "2", "--high", "4", "--progress", "off"]
FIELDS = {"id", "figure", "paper", "measured", "null_mean", "null_sd", "z", "n_modules", "n_holding", "conditions",
          "verdict"}


@pytest.mark.slow
def test_report_writes_every_figure_table_readme_findings_and_page(tiny, capsys):
    out = tiny / "figures"
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--base", str(tiny / "base.safetensors"),
                 "--out", str(out), *ARGS]) == 0
    names = {p.name for p in out.iterdir()}
    figs = {"fig3_rank_pair.png", "fig3_dW_input_basis.png", "fig4_seed_pair.png", "fig4_dW_input_basis.png",
            "fig6_layers_rank.png", "fig7_layers_seed.png", "table7.png", "fig8_W_vs_dW.png",
            "fig8_W_vs_dW_top1.png", "fig8_grid.png", "layers_phi11.png", "layers_amplification.png", "spectra.png",
            "table7_layers.png"}
    assert figs <= names
    assert {"table7.csv", "pair_rank.csv", "pair_seed.csv", "pair_cross.csv", "sweep_r4_seed1.csv", "README.md",
            "findings.json", "report.html", "MANIFEST", "collection.png", "collection.csv"} <= names
    for f in figs:
        assert (out / f).read_bytes()[:8] == PNG
    readme = (out / "README.md").read_text()
    assert "## Verdicts" in readme and "Table 7" in readme and "layer **1**" in readme
    for f in figs:
        assert f"]({f})" in readme, f
    sweep = load_frame(out / "sweep_r2_seed0.csv")
    assert len(sweep) == 4 and sweep["amplification"].dtype == float
    t7 = load_frame(out / "table7.csv")
    assert {"proj_random_sd", "z", "amp_random"} <= set(t7.columns)
    ours = t7[t7["model"].str.startswith("base")]
    assert ((ours["z"] - (ours["proj_delta"] - ours["proj_random"]) / ours["proj_random_sd"]).abs() < 1e-9).all()
    rec = json.loads((out / "findings.json").read_text())
    assert rec["tool"] == "lora-subspace-analysis" and rec["settings"]["protocol"]["z_min"] == 3.0
    assert rec["inputs"]["checkpoints"] == str(tiny / "checkpoints")
    for f in rec["findings"]:
        assert FIELDS <= set(f) and f["verdict"] in VERDICTS, f
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_report_without_base_and_bad_input(tiny, tmp_path):
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--no-base", "--out", str(tmp_path / "f"), *ARGS]) == 0
    assert not (tmp_path / "f" / "table7.png").exists() and (tmp_path / "f" / "fig3_rank_pair.png").exists()
    assert main(["--checkpoints", str(tmp_path / "none"), "--no-base", "--out", str(tmp_path / "g")]) == 2
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--no-base", "--out", str(tmp_path / "h"),
                 *ARGS[:-2], "--layer", "9"]) == 2
    assert main(["--pair", "ranks", str(tiny / "checkpoints" / "r2_seed0"), str(tiny / "checkpoints" / "r4_seed0"),
                 "--out", str(tmp_path / "i")]) == 2


@pytest.mark.slow
def test_report_on_anyones_adapters_with_its_html_page(tiny, tmp_path, capsys):
    mine = tmp_path / "my runs"  # outside the checkpoints folder, names that are not r*_seed*
    for src, dst in [("r2_seed0", "small"), ("r4_seed0", "large"), ("r4_seed1", "large again")]:
        shutil.copytree(tiny / "checkpoints" / src, mine / dst)
    out = tmp_path / "report"
    assert main(["--pair", "rank", str(mine / "small"), str(mine / "large"),
                 "--pair", "seed", str(mine / "large"), str(mine / "large again"),
                 "--base", str(tiny / "base.safetensors"), "--out", str(out), "--progress", "off"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"fig3_rank_pair.png", "fig4_seed_pair.png", "table7.png", "rank_advice.png", "findings.json",
            "report.html", "README.md"} <= names
    readme = (out / "README.md").read_text()
    assert f"`{mine / 'small'}`" in readme and "large again (r = 4)" in readme and "seed pair, second" in readme
    rec = json.loads((out / "findings.json").read_text())
    ids = {f["id"] for f in rec["findings"]}
    assert {"fig3_rank_pair", "fig6_rank_pair", "fig4", "t7_random"} <= ids and "fig3_cross_seed" not in ids
    page = out / "report.html"
    html = page.read_text()
    assert "fig3_rank_pair" in html or "Fig. 3" in html
    assert "src=\"http" not in html and "href=\"http" not in html
    decoded, total, fetched = _chromium.probe(str(page), tmp_path)
    assert total >= 10 and decoded == total and fetched == []
    shot = tmp_path / "shot.png"
    _chromium.run(page.as_uri(), tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,2400")
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20_000


@pytest.mark.slow
def test_report_page_at_1280_px(tiny, tmp_path):
    """The written page in headless Chromium at 1280 px: no horizontal overflow, every image decodes, nothing is
    fetched, no LaTeX source in the rendered text; under 1.5 MB."""
    out = tmp_path / "page"
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--base", str(tiny / "base.safetensors"),
                 "--out", str(out), *ARGS]) == 0
    page = str(out / "report.html")
    _chromium.chromium()
    decoded, total, fetched = _chromium.probe(page, tmp_path)
    assert total >= 10 and decoded == total and fetched == []
    scroll, client, latex = _chromium.layout(page, tmp_path, width=1280)
    assert scroll <= client and not latex
    assert (out / "report.html").stat().st_size < 1_500_000


def test_report_says_what_it_is_doing_when_stderr_is_not_a_terminal(tiny, tmp_path, capsys):
    args = [a for a in ARGS if a not in ("--progress", "off")]
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--no-base", "--out", str(tmp_path / "f"), *args,
                 "--progress", "on"]) == 0
    err = capsys.readouterr().err
    for stage in ("loading adapters: done in", "pairs: done in", "pairs / modules:",
                  "writing figures, findings and pages: done in"):
        assert stage in err, stage
    # in a second process beside the pairs (two cores), or after them: done either way
    assert re.search(r"^sweeps and the base pass[^:\n]*: done in", err, re.M), err
    assert "merge advice" not in err  # the shipped table measures other adapters than these
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--no-base", "--out", str(tmp_path / "g"), *args,
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_report_with_a_rank_that_has_no_checkpoint(tiny, tmp_path, capsys):
    """--low 3 (no r3 checkpoint), --ranks 1,2: no adapter of the spectra figure was swept; the figure is skipped,
    not a matplotlib error on an empty grid."""
    args = ["--layer", "1", "--fig-layers", "0,1", "--ranks", "1,2", "--low", "3", "--high", "4", "--progress", "off"]
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--no-base", "--out", str(tmp_path / "f"), *args]) == 0
    assert "missing checkpoints" in capsys.readouterr().err
    assert (tmp_path / "f" / "report.html").exists()


def test_figures_rendered_in_workers_are_the_bytes_rendered_here(tmp_path):
    from matplotlib.figure import Figure

    from analysis.plotting.render import render_figures

    def build(k):
        fig = Figure(figsize=(3, 2), layout="constrained")
        ax = fig.subplots()
        ax.plot(range(k + 2), [x * x for x in range(k + 2)])
        ax.set_title(f"figure {k}")
        return fig

    for jobs in (1, 2, 3):
        (tmp_path / str(jobs)).mkdir()
        render_figures([(str(tmp_path / str(jobs) / f"{k}.png"), (lambda k=k: build(k))) for k in range(5)],
                       jobs=jobs)
    for k in range(5):
        one = (tmp_path / "1" / f"{k}.png").read_bytes()
        assert one[:8] == PNG
        assert (tmp_path / "2" / f"{k}.png").read_bytes() == one == (tmp_path / "3" / f"{k}.png").read_bytes()

    def broken():
        raise KeyError("no such column")

    tasks = [(str(tmp_path / "ok.png"), lambda: build(0)), (str(tmp_path / "bad.png"), broken)]
    for jobs in (2, 1):  # in a worker, the same error as in this process, with where it came from
        with pytest.raises(KeyError, match="no such column") as err:
            render_figures(tasks, jobs=jobs)
        notes = getattr(err.value, "__notes__", None)  # Python 3.11+
        assert notes is None or any("while rendering" in n and "bad.png" in n for n in notes)


def test_report_computed_in_two_processes_equals_one(tiny):
    """With two jobs the base pass and the merge advice run in a forked process and their fields come back by
    pickle; every field of ReportData is the same as computed in one process (timings aside)."""
    import numpy as np

    from analysis.core.forked import can_fork
    from analysis.report import ReportConfig, compute_report

    if not can_fork():
        pytest.skip("no fork here")
    cfg = ReportConfig(checkpoints=str(tiny / "checkpoints"), base=str(tiny / "base.safetensors"), layer=1,
                       layers=(0, 1), ranks=(1, 2, 4), low=2, high=4)
    one, two = compute_report(cfg, jobs=1), compute_report(cfg, jobs=2)
    assert set(one.timings) == set(two.timings)
    assert one.w_spectra and one.sweeps and one.t7_layers is not None  # the base stages ran
    for key in vars(one):
        if key in ("timings", "adapters", "control_adapters", "config"):
            continue
        if key == "nulls":  # remade here from the keys the child used: the same nulls
            assert list(one.nulls) == list(two.nulls)
            for k in one.nulls:
                assert (one.nulls[k].mean, one.nulls[k].sd) == (two.nulls[k].mean, two.nulls[k].sd)
                if hasattr(one.nulls[k], "draws"):
                    assert np.array_equal(one.nulls[k].draws, two.nulls[k].draws)
            continue
        _same(getattr(one, key), getattr(two, key), key)


def _same(a, b, where):
    """Deep equality, exact: frames, arrays (NaN equal to NaN), dataclasses, mappings, sequences, scalars."""
    import dataclasses
    import math

    import numpy as np
    import pandas as pd

    assert type(a) is type(b), where
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=where)
    elif isinstance(a, np.ndarray):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        _same(vars(a), vars(b), where)
    else:
        assert a == b, where
