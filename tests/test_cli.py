"""The command line on real PEFT adapters, and its exit codes on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

from analysis import load_adapter
from analysis.cli.subspace import main

from conftest import make_peft_adapter


def test_cli_summary_and_json(peft_pair, tmp_path, capsys):
    a, b = peft_pair
    out = tmp_path / "s.json"
    csv = tmp_path / "s.csv"
    assert main([str(a), str(b), "--json", str(out), "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    assert "phi11[A]" in text and "q_proj" in text and "v_proj" in text
    recs = json.loads(out.read_text())["modules"]
    assert len(recs) == 4  # 2 layers x (q, v)
    # recompute φ(1,1) on the paper's basis independently with scipy
    A1, A2 = load_adapter(a), load_adapter(b)
    for rec in recs:
        U1 = scipy.linalg.svd(A1[rec["name"]].lora_A.astype(float), full_matrices=False)[2][:1].T
        U2 = scipy.linalg.svd(A2[rec["name"]].lora_A.astype(float), full_matrices=False)[2][:1].T
        ref = np.cos(scipy.linalg.subspace_angles(U1, U2)[0]) ** 2
        assert rec["phi11_A"] == pytest.approx(ref, abs=1e-10)
        assert np.array(rec["phi_A"]).shape == (2, 4)
        assert rec["r_a"] == 2 and rec["r_b"] == 4
    assert csv.read_text().startswith("name,layer,module")


def test_cli_filters_and_one_sided_modules(tmp_path, peft_pair, capsys):
    a, _ = peft_pair
    c = tmp_path / "qkv"
    make_peft_adapter(c, r=4, seed=2, targets=("q_proj", "k_proj"))
    assert main([str(a), str(c)]) == 0
    text = capsys.readouterr().out
    assert "only in A (2" in text and "v_proj" in text
    assert "only in B (2" in text and "k_proj" in text
    assert main([str(a), str(c), "--layers", "1", "--modules", "q_proj"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "self_attn.q_proj" in l and "only" not in l]
    assert len(lines) == 1 and lines[0].split()[0] == "1"


def test_cli_zero_update(tmp_path, peft_pair, capsys):
    a, _ = peft_pair
    z = tmp_path / "zero"
    make_peft_adapter(z, r=2, seed=3, zero_b=True)
    assert main([str(a), str(z), "--json", str(tmp_path / "z.json")]) == 0
    text = capsys.readouterr().out
    assert "zero update in B" in text and "nan" not in text.lower()
    recs = json.loads((tmp_path / "z.json").read_text())["modules"]
    assert len(recs) == len(load_adapter(z)) > 0 and all(r["zero_b"] and r["phi11_A"] is None for r in recs)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "analysis.subspace", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_one_line(tmp_path, peft_pair):
    a, _ = peft_pair
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for args in ([a, tmp_path / "missing"], [a, tmp_path / "empty"], [a, bad], [a, a, "--layers", "x-y"]):
        p = _run(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "missing" in _run(a, tmp_path / "missing").stderr
    assert "empty" in _run(a, tmp_path / "empty").stderr


def test_cli_help_explains_options():
    p = _run("--help")
    assert p.returncode == 0
    for opt in ("--alpha", "--json", "--csv", "--modules", "--layers", "phi11[A]"):
        assert opt in p.stdout
