"""Issue 23, numbers that cannot lie and exit codes that say whose fault: extreme factors against dense float64,
--min-rank within [1, r], shapes_differ in the subspace JSON, --tile recorded, exit 2 / 3 / 1 / 128 + N with one
line, library warnings kept off standard error."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from analysis import load_adapter

from conftest import make_peft_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A, B (r = 4, 2), and A's factors pushed to extremes: ×~3e38 / max (near float32's top), subnormal (1e-45),
    float8 (e4m3)."""
    import torch
    from safetensors.numpy import load_file, save_file
    from safetensors.torch import save_file as save_torch

    root = tmp_path_factory.mktemp("numbers")
    make_peft_adapter(root / "A", r=4, seed=1)
    make_peft_adapter(root / "B", r=2, seed=2)
    t = load_file(str(root / "A" / "adapter_model.safetensors"))
    variants = {
        "huge": {k: (v / np.abs(v).max() * np.float32(3e38)).astype(np.float32) for k, v in t.items()},
        "tiny": {k: (np.sign(v) * np.ceil(np.abs(v) * 4)).astype(np.float32) * np.float32(1.4e-45)
                 for k, v in t.items()},
    }
    for name, tensors in variants.items():
        (root / name).mkdir()
        save_file(tensors, str(root / name / "adapter_model.safetensors"))
        shutil.copy(root / "A" / "adapter_config.json", root / name)
    (root / "f8").mkdir()
    save_torch({k: torch.from_numpy(v).to(torch.float8_e4m3fn) for k, v in t.items()},
               str(root / "f8" / "adapter_model.safetensors"))
    shutil.copy(root / "A" / "adapter_config.json", root / "f8")
    return root


def _dense(path):
    """ΔW per module from the stored factors, in float64 (the oracle)."""
    from safetensors.torch import load_file

    cfg = json.loads((path / "adapter_config.json").read_text())
    t = {k: v.to(__import__("torch").float64).numpy() for k, v in load_file(str(path / "adapter_model.safetensors")).items()}
    s = cfg["lora_alpha"] / cfg["r"]
    out = {}
    for k, A in t.items():
        if ".lora_A." in k:
            B = t[k.replace(".lora_A.", ".lora_B.")]
            out[k.split(".lora_A.")[0]] = s * (B @ A)  # (d_out, r) @ (r, d_in)
    return out


def _cos(x, y):
    num = sum(float(np.vdot(x[n], y[n])) for n in x)
    return num / np.sqrt(sum(float(np.vdot(v, v)) for v in x.values())) / np.sqrt(sum(float(np.vdot(v, v)) for v in y.values()))


def test_collection_cosines_of_extreme_factors_are_float64_exact(adapters):
    from analysis.sweeps.collection import collection_similarity

    names = ["huge", "tiny", "A", "f8", "B"]
    res = collection_similarity([str(adapters / n) for n in names], k=1)
    dense = {n: _dense(adapters / n) for n in names}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if dense[a].keys() != dense[b].keys() or any(dense[a][m].shape != dense[b][m].shape for m in dense[a]):
                continue
            assert res.cosine[i, j] == pytest.approx(_cos(dense[a], dense[b]), rel=1e-10, abs=1e-12), (a, b)
    assert res.cosine[0, 0] == pytest.approx(1.0) and res.cosine[1, 1] == pytest.approx(1.0)  # never 0 with itself
    for m, name in enumerate(res.module_names):
        key = "base_model.model." + name
        x, y = dense["huge"][key], dense["tiny"][key]
        want = float(np.vdot(x, y)) / np.linalg.norm(x) / np.linalg.norm(y)
        assert res.module_cosine[m][0, 1] == pytest.approx(want, rel=1e-10)


def test_an_overflowing_scale_is_refused_naming_the_key(adapters, tmp_path, capsys):
    from analysis.cli.subspace import main

    shutil.copytree(adapters / "A", tmp_path / "big")
    cfg = json.loads((tmp_path / "big" / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 1e308
    (tmp_path / "big" / "adapter_config.json").write_text(json.dumps(cfg))
    assert main([str(tmp_path / "big"), str(adapters / "A"), "--json", str(tmp_path / "o.json")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "lora_alpha" in line and "adapter_config.json" in line and not (tmp_path / "o.json").exists()


def test_subspace_json_lists_the_modules_whose_shapes_differ(adapters, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from analysis.cli.subspace import main

    shutil.copytree(adapters / "A", tmp_path / "W")
    t = load_file(str(tmp_path / "W" / "adapter_model.safetensors"))
    stem = "base_model.model.model.layers.1.self_attn.v_proj"
    t[stem + ".lora_B.weight"] = np.ones((24, 4), dtype=np.float32)  # (16, 4) in A: another d_out
    save_file(t, str(tmp_path / "W" / "adapter_model.safetensors"))
    assert main([str(adapters / "A"), str(tmp_path / "W"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "s.json").read_text())
    assert rec["shapes_differ"] == [{"name": "model.layers.1.self_attn.v_proj", "shape_a": [16, 32],
                                     "shape_b": [24, 32]}]
    assert "model.layers.1.self_attn.v_proj" not in {m["name"] for m in rec["modules"]}
    assert "1 more with shapes that differ" in out and "shape differs, not compared (1)" in out


def test_min_rank_is_bounded_by_one_and_r(adapters, tmp_path, capsys):
    from peft import LoraConfig

    from analysis.cli.rank import main

    args = [str(adapters / "A"), str(adapters / "B"), "--trials", "10"]
    for bad, why in (("0", "at least 1"), ("3", "at most r = 2")):
        assert main(args + ["--min-rank", bad, "--json", str(tmp_path / "r.json")]) == 2
        line = _one_line(capsys.readouterr().err)
        assert "--min-rank" in line and why in line
    assert not (tmp_path / "r.json").exists()
    assert main(args + ["--min-rank", "2", "--json", str(tmp_path / "r.json")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    assert all(1 <= m["advised"] <= 2 for m in rec["modules"])
    LoraConfig(**rec["lora_config"])  # PEFT takes it


def test_collection_records_the_tile(adapters, tmp_path):
    from analysis.cli.collection import main

    paths = [str(adapters / n) for n in ("A", "huge", "f8")]
    for tile, want in ((None, 3), (1, 1)):
        out = tmp_path / f"c{tile}.json"
        assert main([*paths, "--json", str(out), *(["--tile", str(tile)] if tile else [])]) == 0
        assert json.loads(out.read_text())["settings"]["tile"] == want


# ---------------------------------------------------------------------------- exit codes, one line

def _run(*args, code=None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_out_of_memory_is_the_environment_exit_3(adapters):
    res = _run("analysis.rank", str(adapters / "A"), str(adapters / "B"), "--trials", "100000000000")
    line = _one_line(res.stderr)
    assert res.returncode == 3 and line.startswith("error: out of memory") and "--trials" in line


def test_a_missing_optional_package_is_exit_3_naming_it(adapters):
    code = ("import builtins, sys\nreal = builtins.__import__\n"
            "def imp(name, *a, **k):\n    if name == 'fsspec': raise ModuleNotFoundError(\"No module named 'fsspec'\", name='fsspec')\n"
            "    return real(name, *a, **k)\nbuiltins.__import__ = imp\n"
            "from analysis.cli.collection import main\nsys.exit(main(sys.argv[1:]))\n")
    res = _run(str(adapters / "A"), "s3://bucket/adapter", code=code)
    line = _one_line(res.stderr)
    assert res.returncode == 3 and "pip install fsspec" in line


def test_a_bug_is_exit_1_with_a_traceback_file(adapters):
    code = ("import sys\nimport analysis.sweeps.pair as p\n"
            "def boom(*a, **k): raise KeyError('a bug')\np.compare_adapters = boom\n"
            "from analysis.cli.subspace import main\nsys.exit(main(sys.argv[1:]))\n")
    res = _run(str(adapters / "A"), str(adapters / "B"), code=code)
    line = _one_line(res.stderr)
    assert res.returncode == 1 and line.startswith("internal error (a bug in the toolkit): KeyError")
    where = line.split("traceback in ")[1].split(" ")[0]
    assert "KeyError: 'a bug'" in open(where).read()
    os.remove(where)


@pytest.mark.slow
def test_library_warnings_stay_off_stderr_unless_debug(adapters):
    args = ("analysis.collection", str(adapters / "huge"), str(adapters / "A"))
    quiet = _run(*args)
    assert quiet.returncode == 0 and quiet.stderr == ""
    code = ("import sys, warnings\nimport analysis.sweeps.collection as c\nreal = c.collection_similarity\n"
            "def noisy(*a, **k):\n    warnings.warn('overflow encountered in multiply', RuntimeWarning)\n"
            "    return real(*a, **k)\nc.collection_similarity = noisy\n"
            "from analysis.cli.collection import main\nsys.exit(main(sys.argv[1:]))\n")
    assert _run(*args[1:], code=code).stderr == ""
    assert "overflow encountered" in _run(*args[1:], "--debug", code=code).stderr


def test_a_zero_update_from_alpha_zero_is_not_called_untrained(adapters, tmp_path):
    shutil.copytree(adapters / "A", tmp_path / "z")
    cfg = json.loads((tmp_path / "z" / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 0
    (tmp_path / "z" / "adapter_config.json").write_text(json.dumps(cfg))
    res = _run("analysis.subspace", str(tmp_path / "z"), str(adapters / "A"))
    assert res.returncode == 0 and "alpha = 0" in res.stdout
    assert all(lr.is_zero for lr in load_adapter(tmp_path / "z").values())
