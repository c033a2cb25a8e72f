"""The report's code path end to end on tiny synthetic adapters and base (not the full report)."""

from analysis.io.frames import load_frame
from analysis.cli.report import main
from analysis.report.findings import HOLDS, VERDICTS, findings

PNG = b"\x89PNG\r\n\x1a\n"


ARGS = ["--layer", "1", "--layers", "0,1", "--ranks", "1,2,4", "--low", "2", "--high", "4", "--progress", "off"]


def test_report_writes_every_figure_table_and_readme(tiny, capsys):
    out = tiny / "figures"
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--base", str(tiny / "base.safetensors"),
                 "--out", str(out), *ARGS]) == 0
    names = {p.name for p in out.iterdir()}
    figs = {"fig3_rank_pair.png", "fig3_dW_input_basis.png", "fig4_seed_pair.png", "fig4_dW_input_basis.png",
            "fig6_layers_rank.png", "fig7_layers_seed.png", "table7.png", "fig8_W_vs_dW.png",
            "fig8_W_vs_dW_top1.png", "fig8_heatmap.png", "layers_phi11.png", "layers_amplification.png", "spectra.png"}
    assert figs <= names
    assert {"table7.csv", "pair_rank.csv", "pair_seed.csv", "pair_cross.csv", "sweep_r4_seed1.csv", "README.md"} <= names
    for f in figs:
        assert (out / f).read_bytes()[:8] == PNG
    readme = (out / "README.md").read_text()
    assert "## Summary" in readme and "Table 7" in readme and "layer **1**" in readme
    for f in figs:
        assert f"]({f})" in readme, f
    sweep = load_frame(out / "sweep_r2_seed0.csv")
    assert len(sweep) == 4 and sweep["amplification"].dtype == float
    assert "wrote" in capsys.readouterr().out


def test_findings_have_verdicts_and_the_closed_form_check_holds(tiny_report):
    data = tiny_report
    fs = {f.id: f for f in findings(data)}
    assert {"fig3_A", "fig3_input", "fig6", "fig4_A", "fig7", "t7_random", "t7_amp", "fig8_low"} <= set(fs)
    assert fs["t7_checks"].verdict == HOLDS == "check holds"
    assert {f.verdict for f in fs.values()} <= VERDICTS
    assert list(data.table7["r"]) == [1, 2, 4, 1, 2, 4]


def test_report_without_base_and_bad_input(tiny, tmp_path):
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--no-base", "--out", str(tmp_path / "f"), *ARGS]) == 0
    assert not (tmp_path / "f" / "table7.png").exists() and (tmp_path / "f" / "fig3_rank_pair.png").exists()
    assert main(["--checkpoints", str(tmp_path / "none"), "--no-base", "--out", str(tmp_path / "g")]) == 2
    assert main(["--checkpoints", str(tiny / "checkpoints"), "--no-base", "--out", str(tmp_path / "h"),
                 *ARGS[:-2], "--layer", "9"]) == 2
