"""``--jobs N`` on the long commands (report, rank, resize, finetune): the output does not depend on N.

Each command's written files are compared byte for byte between ``--jobs 1`` (no thread, one module at a
time) and ``--jobs 2`` (two modules at once in threads), and each library function with ``jobs=2`` against
``jobs=1``; ``--jobs`` below 1 is a one-line usage error (exit 2) and ``--help`` names the option.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from _rank_tiny import base_state, random_adapter
from conftest import make_peft_adapter

REPORT_ARGS = ["--layer", "1", "--layers", "0,1", "--ranks", "1,2,4", "--low", "2", "--high", "4",
               "--progress", "off"]


def _files(folder):
    """{relative path: bytes} of every file under ``folder``, which is then removed (the outputs record their
    own paths: each run writes to the same place)."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    shutil.rmtree(folder)
    return files


def _main(command):
    import importlib

    return importlib.import_module(f"analysis.cli.{command}").main


# ------------------------------------------------------------------------------------------ usage


@pytest.mark.parametrize("command", ["report", "rank", "resize", "finetune"])
def test_jobs_is_in_help_and_below_one_is_a_one_line_usage_error(command, capsys):
    main = _main(command)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--jobs N" in capsys.readouterr().out
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as e:  # refused by the parser, before any file is read
            main(["a", "b", "--jobs", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--jobs" in err and "positive integer" in err and repr(bad) in err


# ------------------------------------------------------------------------------------------ rank


def test_rank_same_bytes_with_one_and_two_jobs(peft_pair, tmp_path, capsys):
    from analysis import load_adapter
    from analysis.sweeps.advice import advise_ranks

    a, b = peft_pair
    out = {}
    d = tmp_path / "out"
    for jobs in ("1", "2"):
        d.mkdir()
        assert _main("rank")([str(a), str(b), "--json", str(d / "advice.json"), "--csv", str(d / "advice.csv"),
                              "--n-std", "2", "--jobs", jobs]) == 0
        out[jobs] = (_files(d), capsys.readouterr().out)
    assert out["1"] == out["2"]
    one = advise_ranks(load_adapter(a), load_adapter(b), n_std=2, jobs=1)
    two = advise_ranks(load_adapter(a), load_adapter(b), n_std=2, jobs=2)
    pd.testing.assert_frame_equal(one.frame, two.frame)
    assert one.to_dict() == two.to_dict() and len(one.frame) == 4


def test_rank_advice_skips_the_modules_whose_shapes_differ_in_order_with_two_jobs():
    from analysis.sweeps.advice import advise_ranks

    shapes = {f"model.layers.{i}.self_attn.q_proj": (12, 10) for i in range(4)}
    a = random_adapter(np.random.default_rng(0), shapes)
    wide = dict(shapes, **{"model.layers.1.self_attn.q_proj": (12, 11), "model.layers.3.self_attn.q_proj": (13, 10)})
    b = random_adapter(np.random.default_rng(1), wide)
    for jobs in (1, 2):
        adv = advise_ranks(a, b, jobs=jobs)
        assert adv.mismatched == ["model.layers.1.self_attn.q_proj", "model.layers.3.self_attn.q_proj"]
        assert list(adv.frame["name"]) == ["model.layers.0.self_attn.q_proj", "model.layers.2.self_attn.q_proj"]


# ------------------------------------------------------------------------------------------ resize


def test_resize_same_bytes_with_one_and_two_jobs(tmp_path, capsys):
    src = tmp_path / "src"
    make_peft_adapter(src, r=4, seed=3, alpha=8)
    out, d = {}, tmp_path / "out"
    for jobs in ("1", "2"):
        d.mkdir()
        assert _main("resize")([str(src), "--energy", "0.9", "--out", str(d / "adapter"), "--json",
                                str(d / "kept.json"), "--jobs", jobs]) == 0
        text = capsys.readouterr().out
        out[jobs] = (_files(d), text)
    assert out["1"] == out["2"]
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "kept.json"} <= set(out["1"][0])


@pytest.mark.parametrize("lora_alpha", [None, 6.0])
def test_resize_adapter_same_with_one_and_two_jobs(lora_alpha):
    """Both paths: α known up front (one pass) and the default α from every new rank (two passes)."""
    from analysis.sweeps.resize import resize_adapter

    shapes = {f"model.layers.{i}.self_attn.{m}": (16, 12) for i in range(3) for m in ("q_proj", "v_proj")}
    res = {}
    for jobs in (1, 2):
        ad = random_adapter(np.random.default_rng(4), shapes, r=5)  # no lora_alpha in its config
        res[jobs] = resize_adapter(ad, energy=0.7, alpha=lora_alpha, jobs=jobs)
    pd.testing.assert_frame_equal(res[1].frame, res[2].frame)
    assert res[1].alpha == res[2].alpha and list(res[1].modules) == list(res[2].modules) == sorted(shapes)
    for n, lr in res[1].modules.items():
        other = res[2].modules[n]
        assert lr.r == other.r and lr.scale == other.scale
        assert np.array_equal(lr.lora_A, other.lora_A) and np.array_equal(lr.lora_B, other.lora_B)
    assert all(not ad[n]._cache for n in ad)  # every module's SVD dropped once truncated


# ------------------------------------------------------------------------------------------ finetune


@pytest.fixture(scope="module")
def ft_models(tmp_path_factory):
    """(base file, fine-tuned file): the tiny Llama and a copy with low-rank updates on four weights."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("ft_jobs")
    base = {k: v.astype(np.float32) for k, v in base_state().items()}
    rng = np.random.default_rng(5)
    ft = dict(base)
    for i in range(2):
        for m in ("q_proj", "v_proj"):
            W = base[f"model.layers.{i}.self_attn.{m}.weight"]
            ft[f"model.layers.{i}.self_attn.{m}.weight"] = (
                W + rng.standard_normal((W.shape[0], 3)) @ rng.standard_normal((3, W.shape[1])) * 0.1
                + 1e-3 * rng.standard_normal(W.shape)).astype(np.float32)  # (d_out, 3) @ (3, d_in): rank 3 + noise
    save_file(base, str(root / "base.safetensors"))
    save_file(ft, str(root / "ft.safetensors"))
    return root / "base.safetensors", root / "ft.safetensors"


def test_finetune_same_bytes_with_one_and_two_jobs(ft_models, tmp_path, capsys):
    base, ft = ft_models
    out, d = {}, tmp_path / "out"
    for jobs in ("1", "2"):
        d.mkdir()
        assert _main("finetune")([str(base), str(ft), "--rank", "2", "--spectrum", "4", "--layers", "0-1",
                                  "--out", str(d / "adapter"), "--json", str(d / "ft.json"), "--jobs", jobs]) == 0
        capsys.readouterr()
        out[jobs] = _files(d)  # the CSV holds per-module seconds: not compared
    assert out["1"] == out["2"]
    recs = json.loads(out["1"]["ft.json"])["modules"]
    assert sum(not r["zero"] for r in recs) == 4 and sum(r["zero"] for r in recs) > 0


def test_finetune_deltas_same_with_one_and_two_jobs(ft_models):
    from analysis.sweeps.finetune import finetune_deltas

    base, ft = ft_models
    one, two = (finetune_deltas(base, ft, rank=2, spectrum=4, jobs=j) for j in (1, 2))
    pd.testing.assert_frame_equal(one.frame.drop(columns="seconds"), two.frame.drop(columns="seconds"))
    pd.testing.assert_frame_equal(one.long, two.long)
    assert list(one.modules) == list(two.modules) and len(one.modules) == 4
    for n, lr in one.modules.items():
        assert np.array_equal(lr.lora_A, two.modules[n].lora_A) and np.array_equal(lr.lora_B, two.modules[n].lora_B)


# ------------------------------------------------------------------------------------------ report


@pytest.fixture(scope="module")
def report_set(tiny, tmp_path_factory):
    """The tiny report set plus a long run (two checkpoints of r = 4) for Table 7 over training time."""
    root = tmp_path_factory.mktemp("report_jobs")
    ck = root / "checkpoints"
    shutil.copytree(tiny / "checkpoints", ck)
    for step, seed in ((10, 5), (20, 6)):
        make_peft_adapter(ck / "long_r4_seed0" / f"checkpoint-{step}", r=4, seed=seed)  # a default long run
    return ck, tiny / "base.safetensors"


@pytest.mark.slow
def test_compute_report_same_with_one_and_two_jobs(report_set):
    from analysis.report import ReportConfig, compute_report

    ck, base = report_set
    cfg = ReportConfig(checkpoints=str(ck), base=str(base), layer=1, layers=(0, 1), ranks=(1, 2, 4), low=2,
                       high=4, long_runs=("long_r4_seed0",), n_random_table=50, collection=False)
    one, two = (compute_report(cfg, jobs=j) for j in (1, 2))
    assert len(one.long_run) == 8  # 2 checkpoints × 2 layers × q_proj and v_proj
    pd.testing.assert_frame_equal(one.long_run, two.long_run)
    pd.testing.assert_frame_equal(one.table7, two.table7)
    pd.testing.assert_frame_equal(one.advice.frame, two.advice.frame)
    for attr in ("rank_pair", "seed_pair", "cross_pair"):
        pd.testing.assert_frame_equal(getattr(one, attr).frame, getattr(two, attr).frame)
    assert list(one.sweeps) == list(two.sweeps)
    for lab in one.sweeps:
        pd.testing.assert_frame_equal(one.sweeps[lab].frame, two.sweeps[lab].frame)
    assert list(one.w_spectra) == list(two.w_spectra)  # every q and v module, by name
    assert len(one.w_spectra) == 4
    for m in one.w_spectra:
        assert np.array_equal(one.w_spectra[m], two.w_spectra[m])
    pd.testing.assert_frame_equal(one.t7_layers, two.t7_layers)
    assert list(one.overlaps) == list(two.overlaps)
    for key, by_label in one.overlaps.items():
        assert list(by_label) == list(two.overlaps[key])
        for lab, ov in by_label.items():
            assert np.array_equal(ov.phi, two.overlaps[key][lab].phi)


@pytest.mark.slow
def test_report_same_bytes_with_one_and_two_jobs(report_set, tmp_path, capsys, monkeypatch):
    import analysis.plotting.render as R
    import analysis.report.figures as F

    # the figures draw the data compared here and are checked by test_report.py; not drawing them keeps this fast
    for f in dir(F):
        if f.startswith("fig_"):
            monkeypatch.setattr(F, f, lambda *a, **k: None)
    monkeypatch.setattr(R, "save_png", lambda fig, path, **k: open(path, "wb").close())
    ck, base = report_set
    out, d = {}, tmp_path / "out"
    for jobs in ("1", "2"):
        monkeypatch.setenv("LORA_SUBSPACE_CACHE", str(tmp_path / f"cache{jobs}"))  # both runs from a cold cache
        assert _main("report")(["--checkpoints", str(ck), "--base", str(base), "--out", str(d), *REPORT_ARGS,
                                "--jobs", jobs]) == 0
        capsys.readouterr()
        # README.md and report.html state the computing time; every table, the findings and the list of files
        out[jobs] = {f: b for f, b in _files(d).items() if f.endswith((".csv", ".json")) or f == "MANIFEST"}
    assert out["1"] == out["2"]
    assert {"findings.json", "table7.csv", "pair_rank.csv", "table7_over_training.csv",
            "collection.csv"} <= set(out["1"])
