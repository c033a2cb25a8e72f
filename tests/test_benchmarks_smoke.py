"""The benchmark's code path at tiny sizes (no timing assertions): ``python -m benchmarks --quick``."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)



@pytest.mark.slow
def test_quick_run_writes_results_and_readme_block(tmp_path):
    from benchmarks import run

    readme = tmp_path / "README.md"
    readme.write_text("intro\n\n<!-- bench:start -->\nSTALE BLOCK\n<!-- bench:end -->\n\ntail\n")
    out = tmp_path / "results.json"
    work = tmp_path / "work"
    assert run.main(["--quick", "--skip", "e2e70b,imports", "--workdir", str(work), "--out", str(out),
                     "--readme", str(readme)]) == 0
    res = json.loads(out.read_text())
    assert {k["d"] for k in res["kernel"]} == {64, 256}
    for k in res["kernel"]:
        assert k["sv_err_factored"] < 1e-12 and k["sub_err_factored"] < 1e-10  # float64 from the factors
        assert k["t_factored_s"] > 0 and k["speedup_full"] > 0
    e = res["e2e_7b"]
    assert e["modules"] == 14 and e["rss_cli_bytes"] > 0 and e["t_load_s"] > 0
    assert res["base"][0]["modules"] == 7 and res["base"][0]["t_read_in_s"] > 0
    assert any("7B-shaped" in t["target"] for t in res["targets"])
    text = readme.read_text()
    assert text.startswith("intro\n\n<!-- bench:start -->\n") and text.endswith("<!-- bench:end -->\n\ntail\n")
    assert "STALE BLOCK" not in text and "| d | r | factored |" in text and "python -m benchmarks --quick" in text
    assert not work.exists()  # synthetic checkpoints are removed unless --keep-data


def test_synthetic_adapter_has_peft_layout_and_exact_shapes(tmp_path):
    from benchmarks import synth

    from analysis import load_adapter

    shape = (2, 32, 80, 8)
    ad = synth.write_peft_adapter(str(tmp_path / "a"), shape, 4, seed=0)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA"
    assert os.path.getsize(tmp_path / "a" / "adapter_model.safetensors") > synth.adapter_nbytes(shape, 4)
    eager, lazy = load_adapter(ad), load_adapter(ad, lazy=True)
    assert len(eager) == 14
    assert eager["model.layers.1.mlp.down_proj"].shape == (32, 80)
    assert eager["model.layers.0.self_attn.k_proj"].shape == (8, 32)
    for name in eager:
        np.testing.assert_array_equal(eager[name].lora_B, lazy[name].lora_B)
    # reused when the spec matches
    mtime = os.path.getmtime(tmp_path / "a" / "adapter_model.safetensors")
    synth.write_peft_adapter(str(tmp_path / "a"), shape, 4, seed=0)
    assert os.path.getmtime(tmp_path / "a" / "adapter_model.safetensors") == mtime
    assert [s for _, s in synth.module_shapes("70b", layers=1)] == [
        (8192, 8192), (1024, 8192), (1024, 8192), (8192, 8192), (28672, 8192), (28672, 8192), (8192, 28672)]
    assert synth.adapter_nbytes("70b", 64) / 2**30 == pytest.approx(1.544, abs=0.01)


def test_kernel_accuracy_helpers():
    from benchmarks.kernel import accuracy, make_factors

    A, B = make_factors(128, 4, seed=0)
    U, S, Vt = np.linalg.svd(B.astype(float) @ A.astype(float))
    ref = (U[:, :4], S[:4], Vt[:4].T)
    sv, sub = accuracy(U, S, Vt.T, ref)
    assert sv == 0 and sub < 1e-7


def test_report_cost_table_names_both_releases():
    from benchmarks.report_cost import render

    run = {"wall_s": 10.0, "peak_rss_mb": 900.0, "exit": 0}
    text = render({"ref": "abc123", "repeats": 2, "date": "2026-12-06", "machine": "2 cores",
                   "previous": {"cold": run, "warm": run}, "current": {"cold": run, "warm": run}})
    assert "previous release (`abc123`)" in text and "| this tree | 10 s, 900 MB | 10 s, 900 MB |" in text


def test_report_cost_counts_the_memory_of_forked_children():
    """The sampler adds the children's proportional set size: a child holding 200 MB of its own shows."""
    import subprocess
    import sys
    import time

    from benchmarks.report_cost import _memory, _tree_pss_mb

    code = ("import os, time, numpy as np\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    x = np.ones(25_000_000)\n    time.sleep(30)\n    os._exit(0)\n"
            "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        best = 0.0
        for _ in range(100):
            best = max(best, _tree_pss_mb(proc.pid))
            if best > 200:
                break
            time.sleep(0.1)
        assert best > 200  # the child's 190 MB array and both interpreters
    finally:
        subprocess.run(["pkill", "-P", str(proc.pid)], check=False)
        proc.kill()
        proc.wait()
    assert _memory({"peak_rss_mb": 700.0, "peak_tree_pss_mb": 950.0}) == "700 MB (together 950 MB)"
    assert _memory({"peak_rss_mb": 700.0}) == "700 MB"
