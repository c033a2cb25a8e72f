"""What the toolkit promises (README, "What the toolkit promises"): one test per class of failure.

Outputs appear whole or not at all and never clobber; bad input is one line and exit 2; Ctrl-C is one line
and exit 130; JSON is byte-identical across reruns; written files follow the umask. Issue 23's classes are beside
this file: test_promises_outputs.py (never over an input, --force, all or none), test_promises_kills.py (dead
writers, interrupted replacements), test_promises_inputs.py (the cache, the Hugging Face cache, patterns, pickles,
schedulers), test_promises_numbers.py (extreme factors, --min-rank, shapes_differ, --tile, exit codes).
"""

import errno
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from analysis import AdapterError, LowRank, load_adapter
from analysis.io.outputs import atomic_output
from analysis.io.peft_writer import write_peft_adapter

from conftest import make_peft_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd or ROOT)


def _one_line_exit_2(res):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def _siblings(path):
    """Everything beside ``path`` whose name starts with its name (temporary folders, locks)."""
    d, name = os.path.split(str(path))
    return sorted(n for n in os.listdir(d) if n.startswith(name) or n.startswith("." + name))


@pytest.fixture
def src(tmp_path):
    make_peft_adapter(tmp_path / "src", r=4, seed=1)
    return tmp_path / "src"


# ---------------------------------------------------------------------------- atomic, no clobbering

def test_a_write_that_fails_midway_leaves_nothing(tmp_path, src, monkeypatch):
    import analysis.io.peft_writer as pw

    ad = load_adapter(src)
    from analysis.sweeps.resize import resize_adapter

    res = resize_adapter(ad, rank=2)
    real_dumps = json.dump

    def fail_in_config(*a, **k):  # the weights are written, then the config write fails
        raise OSError(errno.EIO, "simulated failure between weights and config")

    monkeypatch.setattr(pw.json, "dump", fail_in_config)
    out = tmp_path / "out"
    with pytest.raises(AdapterError, match="nothing was written"):
        res.write(out)
    assert _siblings(out) == []  # no adapter, no temporary folder, no lock
    monkeypatch.setattr(pw.json, "dump", real_dumps)
    res.write(out)
    old = (out / "adapter_model.safetensors").read_bytes()
    monkeypatch.setattr(pw.json, "dump", fail_in_config)
    with pytest.raises(AdapterError):
        res.write(out, force=True)
    assert (out / "adapter_model.safetensors").read_bytes() == old  # the old adapter is untouched
    assert _siblings(out) == ["out"]


@pytest.mark.slow
def test_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, src):
    code = ("import errno, sys, analysis.io.outputs as o\n"
            "real = open\n"
            "class Full:\n"
            "    def __init__(s, *a, **k): s.f = real(*a, **k)\n"
            "    def __enter__(s): return s\n"
            "    def __exit__(s, *e): s.f.close()\n"
            "    def write(s, b): raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "import builtins; builtins.open = lambda p, m='r', *a, **k: Full(p, m, *a, **k) if 'w' in m else real(p, m, *a, **k)\n"
            "from analysis.cli.resize import main\n"
            f"sys.exit(main([{str(src)!r}, '--rank', '2', '--out', {str(tmp_path / 'out')!r}]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = _one_line_exit_2(res)
    assert "No space left on device" in line and str(tmp_path / "out") in line
    assert _siblings(tmp_path / "out") == []


@pytest.mark.slow
def test_existing_output_needs_force_and_is_replaced_whole(tmp_path, src):
    out = tmp_path / "out"
    assert _cli("analysis.resize", str(src), "--rank", "2", "--out", str(out)).returncode == 0
    line = _one_line_exit_2(_cli("analysis.resize", str(src), "--rank", "1", "--out", str(out)))
    assert "--force" in line and str(out) in line
    assert load_adapter(out)[next(iter(load_adapter(out)))].r == 2
    assert _cli("analysis.resize", str(src), "--rank", "1", "--out", str(out), "--force").returncode == 0
    assert {lr.r for lr in load_adapter(out).values()} == {1}
    assert _siblings(out) == ["out"]


@pytest.mark.slow
def test_two_writers_released_together_never_mix(tmp_path, src):
    out, go = tmp_path / "out", tmp_path / "go"
    code = ("import os, sys, time\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
            "from analysis.cli.resize import main\n"
            f"sys.exit(main([{str(src)!r}, '--rank', sys.argv[1], '--out', {str(out)!r}]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", "import analysis.cli.resize, analysis.sweeps.resize\n" + code, k],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in ("1", "3")]
    time.sleep(3.0)  # both have imported and wait
    go.write_text("")
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert len(loser.strip().splitlines()) == 1 and ("--force" in loser or "another process" in loser)
    ranks = {lr.r for lr in load_adapter(out).values()}
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert len(ranks) == 1 and cfg["r"] in ranks  # weights and config of the same writer
    assert _siblings(out) == ["out"]


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(tmp_path, src):
    code = ("import sys, analysis.io.peft_writer as pw\n"
            "real = pw.json.dump\n"
            "def boom(*a, **k): raise KeyboardInterrupt\n"
            "pw.json.dump = boom\n"
            "from analysis.cli.resize import main\n"
            f"sys.exit(main([{str(src)!r}, '--rank', '2', '--out', {str(tmp_path / 'out')!r}]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 130 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert _siblings(tmp_path / "out") == []


def test_non_finite_output_is_refused_with_the_module(tmp_path):
    rng = np.random.default_rng(0)
    big = LowRank(rng.standard_normal((2, 6)) * 3e38, rng.standard_normal((5, 2)) * 3e38, 1.0,
                  name="model.layers.0.self_attn.q_proj")
    from analysis.core.truncate import truncate

    t = truncate(big, 2, alpha=2.0)
    with pytest.raises(AdapterError, match=r"model\.layers\.0\.self_attn\.q_proj.*float32"):
        write_peft_adapter(tmp_path / "out", {big.name: t}, lora_alpha=2.0)
    assert _siblings(tmp_path / "out") == []


def test_written_files_follow_the_umask(tmp_path, src):
    old = os.umask(0o027)
    try:
        from analysis.sweeps.resize import resize_adapter

        resize_adapter(load_adapter(src), rank=2).write(tmp_path / "out")
        with atomic_output(tmp_path / "x.json") as tmp:
            open(tmp, "w").write("{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes == {"adapter_model.safetensors": 0o640, "adapter_config.json": 0o640}
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640


# ---------------------------------------------------------------------------- bounded, typed inputs

def test_huge_layer_range_is_answered_at_once(src):
    t0 = time.perf_counter()
    line = _one_line_exit_2(_cli("analysis.subspace", str(src), str(src), "--layers", "0-999999999999"))
    assert time.perf_counter() - t0 < 60 and "layers 0-1" in line
    line = _one_line_exit_2(_cli("analysis.subspace", str(src), str(src), "--layers", "40"))
    assert "no layer 40" in line and "layers 0-1" in line


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int64, np.bool_])
@pytest.mark.slow
def test_integer_and_bool_factors_are_refused_on_every_path(tmp_path, src, dtype):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    t = load_file(str(src / "adapter_model.safetensors"))
    key = sorted(t)[0]
    t[key] = (t[key] > 0).astype(dtype)
    save_file(t, str(bad / "adapter_model.safetensors"))
    for lazy in (False, True):
        with pytest.raises(AdapterError, match="dtype|floating"):
            ad = load_adapter(bad, lazy=lazy)
            [lr.svd() for lr in ad.values()]
    line = _one_line_exit_2(_cli("analysis.subspace", str(bad), str(src)))
    assert str(bad) in line


def test_bad_pickles_and_paths_are_adapter_errors(tmp_path):
    cases = {}
    d = {"a.lora_A": torch.ones(2, 3)}
    d["self"] = d
    cases["recursive.pt"] = d
    cases["meta.pt"] = {"h.0.lora_A": torch.empty(2, 3, device="meta"), "h.0.lora_B": torch.empty(3, 2, device="meta")}
    cases["sparse.pt"] = {"h.0.lora_A": torch.eye(2, 3).to_sparse(), "h.0.lora_B": torch.ones(3, 2)}
    for name, obj in cases.items():
        try:
            torch.save(obj, str(tmp_path / name))
        except Exception:  # torch cannot save it: nothing to test
            continue
        with pytest.raises(AdapterError) as info:
            load_adapter(tmp_path / name, alpha=1.0)
        assert str(tmp_path / name) in str(info.value)
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    (deep / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(AdapterError):
        load_adapter(deep)
    for bad in (None, 123):
        with pytest.raises(AdapterError, match="expected a path"):
            load_adapter(bad)


def test_alpha_zero_is_a_zero_update(tmp_path, src):
    z = tmp_path / "z"
    z.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 0
    (z / "adapter_config.json").write_text(json.dumps(cfg))
    (z / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    assert all(lr.is_zero and lr.rank == 0 for lr in load_adapter(z).values())
    res = _cli("analysis.subspace", str(z), str(src))
    assert res.returncode == 0 and "zero update in A" in res.stdout and "1.000" not in res.stdout


@pytest.mark.slow
def test_transposed_base_is_one_rule_for_every_command(tmp_path, src):
    from safetensors.numpy import save_file

    from _rank_tiny import base_state

    sd = {k: v.astype(np.float32) for k, v in base_state().items()}
    key = "model.layers.0.self_attn.v_proj.weight"  # (16, 32): its transpose is told apart by shape
    sd[key] = np.ascontiguousarray(sd[key].T)
    save_file(sd, str(tmp_path / "base.safetensors"))
    a = _one_line_exit_2(_cli("analysis.subspace", str(src), str(src), "--base", str(tmp_path / "base.safetensors")))
    b = _one_line_exit_2(_cli("analysis.intruders", str(src), "--base", str(tmp_path / "base.safetensors")))
    for line in (a, b):
        assert key in line and "(32, 16)" in line and "(16, 32)" in line


def test_non_utf8_folder_names_work(tmp_path, src):
    weird = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(weird)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        with open(os.path.join(weird, f.encode()), "wb") as fh:
            fh.write((src / f).read_bytes())
    path = os.fsdecode(weird)
    ad = load_adapter(path)
    assert len(ad) == len(load_adapter(src))
    from analysis.sweeps.resize import resize_adapter

    resize_adapter(ad, rank=1).write(os.path.join(path, "small"))
    assert {lr.r for lr in load_adapter(os.path.join(path, "small")).values()} == {1}


def test_shard_paths_leaving_the_model_folder_are_refused_before_opening(tmp_path):
    from analysis.io.base import open_base

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a.weight": "../../../../etc/passwd"}}))
    with pytest.raises(AdapterError, match="leaves it"):
        open_base(model)


# ---------------------------------------------------------------------------- outputs to diff and share

def test_subspace_json_describes_itself_and_is_byte_identical(tmp_path, src):
    make_peft_adapter(tmp_path / "b", r=2, seed=2)
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.json"
        assert _cli("analysis.subspace", str(src), str(tmp_path / "b"), "--json", str(out)).returncode == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    rec = json.loads(outs[0])
    assert rec["tool"] == "lora-subspace-analysis" and rec["version"] and rec["inputs"]["a"] == str(src)
    assert {"sides", "tie_rtol", "alpha", "layers"} <= set(rec["settings"])
    for m in rec["modules"]:
        for side in rec["settings"]["sides"]:
            assert set(m[f"ties_{side}"]) == {"a", "b"}  # one schema on every side


@pytest.mark.slow
def test_pattern_file_errors_name_the_pattern_file(tmp_path, src):
    bad_utf8 = tmp_path / "p1.json"
    bad_utf8.write_bytes(b'{"q_proj": 1, "\xff": 2}')
    bad_re = tmp_path / "p2.json"
    bad_re.write_text('{"q_proj(": 1}')
    for f in (bad_utf8, bad_re):
        line = _one_line_exit_2(_cli("analysis.resize", str(src), "--pattern", str(f), "--out", str(tmp_path / "o")))
        assert str(f) in line and str(src) not in line
    assert _siblings(tmp_path / "o") == []


def _finetuned_pair(tmp_path, src):
    from safetensors.numpy import load_file, save_file

    from _synthetic import write_base_for

    write_base_for(src, tmp_path / "base.safetensors")
    rng = np.random.default_rng(3)
    tuned = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype)
             for k, v in load_file(tmp_path / "base.safetensors").items()}
    save_file(tuned, tmp_path / "tuned.safetensors")
    return tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"


@pytest.mark.parametrize("command", ["rank", "intruders", "resize", "finetune"])
@pytest.mark.slow
def test_every_json_describes_itself_and_is_byte_identical(tmp_path, src, command):
    make_peft_adapter(tmp_path / "b", r=2, seed=2)
    base, tuned = _finetuned_pair(tmp_path, src)
    args = {"rank": [str(src), str(tmp_path / "b"), "--trials", "20"],
            "intruders": [str(src), "--base", str(base)],
            "resize": [str(src), "--rank", "2", "--out", str(tmp_path / "resized")],
            "finetune": [str(base), str(tuned), "--rank", "2"]}[command]
    outs = []
    for i in range(2):
        out = tmp_path / f"{command}{i}.json"
        again = ["--force"] if i and command == "resize" else []  # the same --out, replaced
        res = _cli(f"analysis.{command}", *args, *again, "--json", str(out), "--progress", "off")
        assert res.returncode == 0, res.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    rec = json.loads(outs[0])
    assert rec["tool"] == "lora-subspace-analysis" and rec["command"] == command and rec["version"]
    assert str(tmp_path) not in json.dumps(rec["settings"])  # settings, not machine paths
    assert all(v in args for v in rec["inputs"].values() if v is not None)  # inputs exactly as given
    assert "seconds" not in json.dumps(rec)
    if command == "rank":
        assert {"trials", "seed", "n_std", "side"} <= set(rec["settings"])
    if command == "intruders":
        assert rec["inputs"]["base"] == str(base)
        assert all(isinstance(m["ranks"], list) for m in rec["modules"])


@pytest.mark.parametrize("script, module", [("lora-subspace", "analysis.subspace"), ("lora-rank", "analysis.rank"),
                                            ("lora-intruders", "analysis.intruders")])
def test_help_names_the_command_the_user_typed(script, module):
    exe = os.path.join(os.path.dirname(sys.executable), script)
    if not os.path.exists(exe):
        pytest.skip(f"{script} is not installed beside {sys.executable}")
    as_script = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert as_script.returncode == 0 and as_script.stdout.startswith(f"usage: {script} ")
    assert _cli(module, "--help").stdout.startswith(f"usage: python -m {module} ")
