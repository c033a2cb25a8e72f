"""The command line's --base, --out and --figure-layer options on tiny real PEFT adapters."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from analysis import load_adapter
from analysis.metrics.correlation import weight_correlation
from analysis.cli.subspace import main

from _synthetic import write_base_for

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def base(peft_pair, tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    return path, write_base_for(peft_pair[0], path)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "analysis.subspace", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_base_adds_table7_columns_to_table_json_csv(peft_pair, base, tmp_path, capsys):
    a, b = peft_pair
    path, weights = base
    js, csv = tmp_path / "o.json", tmp_path / "o.csv"
    assert main([str(a), str(b), "--base", str(path), "--json", str(js), "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    assert "W vs dW" in text and "amp a" in text
    recs = json.loads(js.read_text())["modules"]
    A, B = load_adapter(a), load_adapter(b)
    for rec in recs:
        ra = weight_correlation(weights[rec["name"]], A[rec["name"]])
        rb = weight_correlation(weights[rec["name"]], B[rec["name"]])
        # the products with W run in its float32 (the CLI's by row blocks of the stored tensor): float32 rounding
        assert rec["amplification_a"] == pytest.approx(ra.amplification, rel=1e-6)
        assert rec["amplification_b"] == pytest.approx(rb.amplification, rel=1e-6)
        assert rec["proj_w_b"] == pytest.approx(rb.proj_w, rel=1e-6)
        assert rec["w_norm"] == pytest.approx(ra.w_norm, rel=1e-9)
    fr = pd.read_csv(csv)
    assert {"proj_delta_a", "proj_random_b", "phi_w_input_a", "w_norm"} <= set(fr.columns)


@pytest.mark.slow
def test_out_writes_png_figures(peft_pair, base, tmp_path, capsys):
    a, b = peft_pair
    out = tmp_path / "figs"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    plain = sorted(p.name for p in out.iterdir())
    assert plain == ["phi11_by_layer.png", "phi_layer1.png", "spectra.png"]
    again = [str(a), str(b), "--base", str(base[0]), "--out", str(out), "--figure-layer", "0"]
    assert main(again) == 2  # a folder with files in it is not written into without --force
    assert sorted(p.name for p in out.iterdir()) == plain
    assert main(again + ["--force"]) == 0  # replaced as a whole
    names = {p.name for p in out.iterdir()}
    assert "phi_layer1.png" not in names and not [p for p in tmp_path.iterdir() if p.name.startswith(".figs")]
    assert {"phi_layer0.png", "amplification_by_layer.png", "table7_layer0.png"} <= names
    for p in out.iterdir():
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    assert "figures: " in capsys.readouterr().out


def test_base_with_filters_needs_only_the_selected_weights(peft_pair, base, tmp_path, capsys):
    a, b = peft_pair
    only = tmp_path / "only_l1_q.safetensors"
    name = "model.layers.1.self_attn.q_proj"
    save_file({name + ".weight": base[1][name]}, str(only))
    assert main([str(a), str(b), "--base", str(only), "--layers", "1", "--modules", "q_proj"]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines() if "self_attn.q_proj" in l]
    assert len(rows) == 2  # one in each table


def test_bad_base_and_figure_layer_exit_2_with_one_line(peft_pair, base, tmp_path, capsys):
    a, b = peft_pair
    wrong = tmp_path / "wrong.safetensors"  # right names, wrong shapes: another model's weights
    save_file({n + ".weight": np.zeros((w.shape[0] + 1, w.shape[1]), np.float32) for n, w in base[1].items()},
              str(wrong))
    partial = tmp_path / "partial.safetensors"
    save_file({"model.layers.0.self_attn.q_proj.weight": base[1]["model.layers.0.self_attn.q_proj"]}, str(partial))
    cases = [([a, b, "--base", wrong], "shape"),
             ([a, b, "--base", partial], "v_proj"),
             ([a, b, "--out", tmp_path / "f", "--figure-layer", "7"], "figure-layer")]
    for args, needle in cases:
        capsys.readouterr()
        assert main([str(x) for x in args]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and needle in err, err
    p = _run(a, b, "--base", tmp_path / "nope.gguf")  # as a process: no traceback, one line, exit 2
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "nope.gguf" in p.stderr
