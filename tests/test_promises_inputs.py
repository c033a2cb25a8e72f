"""Issue 23, inputs: a cache that owns only what it wrote and is keyed by content, sharded bases from the Hugging
Face cache, refs/main checked, bounded work on hostile patterns, pickles and schedulers."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from analysis import AdapterError, load_adapter
from analysis.sweeps import svd_cache
from analysis.sweeps.svd_cache import SVDCache, cached_topk_svd

from conftest import make_peft_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from _synthetic import write_base_for

    root = tmp_path_factory.mktemp("pair")
    make_peft_adapter(root / "A", r=4, seed=1)
    make_peft_adapter(root / "B", r=2, seed=2)
    write_base_for(root / "A", root / "base.safetensors", seed=0)
    write_base_for(root / "A", root / "base2.safetensors", seed=5)  # same names, shapes and header; other values
    return root


# ---------------------------------------------------------------------------- the SVD cache

def test_the_cache_never_touches_files_it_did_not_write(tmp_path, pair, monkeypatch, capsys):
    from analysis.cli.subspace import main

    user = tmp_path / "project"
    user.mkdir()
    (user / "experiment_results.npz").write_bytes(b"the user's results")
    (user / ("0" * 64 + ".npz")).write_bytes(b"named like an entry, but not the cache's")
    monkeypatch.setenv("LORA_SUBSPACE_CACHE", str(user))
    monkeypatch.setenv("LORA_SUBSPACE_CACHE_MAX_BYTES", "1")  # every write trims
    args = [str(pair / "A"), str(pair / "B"), "--base", str(pair / "base.safetensors")]
    assert main(args) == 0
    SVDCache(user).clear()
    assert (user / "experiment_results.npz").read_bytes() == b"the user's results"
    assert (user / ("0" * 64 + ".npz")).exists()
    assert sorted(os.listdir(user / svd_cache.SUBFOLDER)) == ["CACHEDIR.TAG"]  # its own entries only, cleared
    # a subfolder of that name the cache did not make: not used, not touched
    other = tmp_path / "other"
    (other / svd_cache.SUBFOLDER).mkdir(parents=True)
    (other / svd_cache.SUBFOLDER / "mine.npz").write_bytes(b"x")
    monkeypatch.setenv("LORA_SUBSPACE_CACHE", str(other))
    capsys.readouterr()
    assert main(args) == 0
    assert "the cache is off" in capsys.readouterr().err
    assert os.listdir(other / svd_cache.SUBFOLDER) == ["mine.npz"]


def test_bases_with_the_same_metadata_never_share_entries(tmp_path, pair, monkeypatch):
    import shutil

    from analysis.cli.subspace import main

    monkeypatch.setenv("LORA_SUBSPACE_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "model.safetensors"
    outs = {}
    for tag, src, extra in (("first", "base.safetensors", []), ("second", "base2.safetensors", []),
                            ("fresh", "base2.safetensors", ["--no-cache"])):
        shutil.copyfile(pair / src, base)
        os.utime(base, ns=(10**9, 10**9))  # as in a Nix store, after cp -p or touch -r
        assert main([str(pair / "A"), str(pair / "B"), "--base", str(base), "--json", str(tmp_path / f"{tag}.json"),
                     *extra]) == 0
        outs[tag] = (tmp_path / f"{tag}.json").read_bytes()
    assert outs["second"] == outs["fresh"] and outs["first"] != outs["second"]


def test_an_edited_entry_fails_its_checksum_and_is_rewritten(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 30)).astype(np.float32)
    good = cached_topk_svd(SVDCache(tmp_path), None, "w", W, 3)
    (entry,) = [p for p in (tmp_path / svd_cache.SUBFOLDER).iterdir() if p.suffix == ".npz"]
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["S"] = arrays["S"] * 2  # a well-formed file, its key intact, its values edited
    with open(entry, "wb") as fh:
        np.savez(fh, **arrays)
    cache = SVDCache(tmp_path)
    again = cached_topk_svd(cache, None, "w", W, 3)
    assert (cache.hits, cache.misses, cache.writes) == (0, 1, 1)
    np.testing.assert_array_equal(again.S, good.S)
    np.testing.assert_allclose(good.S, np.linalg.svd(W.astype(np.float64), compute_uv=False)[:3], rtol=1e-5)


def test_a_dead_writers_temporary_is_removed_a_live_ones_kept(tmp_path):
    import fcntl

    W = np.eye(6, dtype=np.float32)
    cached_topk_svd(SVDCache(tmp_path), None, "w", W, 2)
    root = tmp_path / svd_cache.SUBFOLDER
    dead, live = root / ".tmp-0123456789abcdef.npz", root / ".tmp-fedcba9876543210.npz"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    old = time.time() - 2 * svd_cache.TMP_GRACE
    os.utime(dead, (old, old))
    os.utime(live, (old, old))
    code = (f"import fcntl, sys, time\nfh = open({str(live)!r}, 'rb')\nfcntl.flock(fh, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\ntime.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cached_topk_svd(SVDCache(tmp_path), None, "w", W, 3)  # a put: the folder is looked over
        assert not dead.exists() and live.exists()
    finally:
        holder.kill()
        holder.wait()
    assert fcntl  # noqa: the lock is the writer's


def test_the_content_hash_costs_little_against_the_read(tmp_path):
    """The hash rides on a read of the tensor's bytes: a second pass over them, cheap next to the read itself."""
    from safetensors.numpy import save_file

    from analysis.io.base import open_base

    W = np.random.default_rng(1).standard_normal((1024, 2048)).astype(np.float32)  # 8 MiB
    save_file({"m.weight": W}, str(tmp_path / "w.safetensors"))
    with open_base(tmp_path / "w.safetensors") as bw:
        (_, Ws), = list(bw.weights(["m"], stored=True))
        h1 = svd_cache.content_hash(Ws)  # streamed from the file
        h2 = svd_cache.content_hash(W)  # from memory: the same bytes
        assert h1.split(":")[1] and h1 != svd_cache.content_hash(W[:, :-1].copy())
        t0 = time.perf_counter()
        for _ in range(5):
            svd_cache.content_hash(Ws)
        t_hash = (time.perf_counter() - t0) / 5
        t0 = time.perf_counter()
        for _ in range(5):
            np.asarray(Ws @ np.ones((2048, 8), dtype=np.float32))  # the warm path's one product with W
        t_read = (time.perf_counter() - t0) / 5
    assert h2.split(":")[0] == h1.split(":")[0]
    assert t_hash < 2 * t_read + 0.05, (t_hash, t_read)


# ---------------------------------------------------------------------------- the Hugging Face cache


@pytest.mark.slow
def test_a_sharded_base_from_the_hugging_face_cache(tmp_path, pair):
    from safetensors.numpy import load_file, save_file

    W = load_file(str(pair / "base.safetensors"))
    keys = sorted(W)
    plain = tmp_path / "plain"
    plain.mkdir()
    shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    for name, ks in shards.items():
        save_file({k: W[k] for k in ks}, str(plain / name))
    (plain / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_HUB_OFFLINE", None)
    assert subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_fake_hub.py"), f"org/sharded={plain}"],
                          env=env, capture_output=True, timeout=120).returncode == 0
    snap = next((tmp_path / "hf" / "hub" / "models--org--sharded" / "snapshots").iterdir())
    assert all(os.path.islink(snap / n) for n in shards)  # the shards are links into blobs/
    outs = []
    for base in ("org/sharded", str(plain)):
        res = subprocess.run([sys.executable, "-m", "analysis.subspace", str(pair / "A"), str(pair / "B"), "--base",
                              base, "--json", str(tmp_path / f"{len(outs)}.json"), "--no-cache"], env=env, cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        outs.append(json.loads((tmp_path / f"{len(outs)}.json").read_text())["modules"])
    assert outs[0] == outs[1]
    # a refs/main crafted to leave the cache
    refs = tmp_path / "hf" / "hub" / "models--org--sharded" / "refs" / "main"
    refs.write_text(os.path.relpath(pair / "A", snap.parent))  # ../../../…/A: an adapter outside the cache
    res = subprocess.run([sys.executable, "-m", "analysis.subspace", "org/sharded", str(pair / "A")], env=env,
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "refs/main" in _one_line(res.stderr) and "org/sharded" in res.stderr


def test_shard_names_that_leave_the_folder_are_still_refused(tmp_path):
    from analysis.io.base import open_base

    for bad in ("../x.safetensors", "/etc/passwd", "a/../../x", "./x"):
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": bad}}))
        with pytest.raises(AdapterError, match="leaves it"):
            open_base(tmp_path)


# ---------------------------------------------------------------------------- patterns

#: A pattern that backtracks exponentially in Python's re (nested quantifiers) and, lazily nested, in regex too.
_HANG = r"([a-z_.0-9]+?)+?[^a-z_.0-9]"
_NESTED = r"([a-z_.0-9]+)+!"


def _with_pattern(src, dst, pattern, key="rank_pattern"):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg[key] = {pattern: 2 if key == "rank_pattern" else 3.0}
    (dst / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("key", ["rank_pattern", "alpha_pattern"])
@pytest.mark.slow
def test_patterns_in_a_config_are_bounded(tmp_path, pair, key):
    _with_pattern(pair / "A", tmp_path / "hang", _HANG, key)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "analysis.subspace", str(tmp_path / "hang"), str(pair / "B")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - t0 < 60
    line = _one_line(res.stderr)
    assert res.returncode == 2 and key in line and "adapter_config.json" in line and "did not finish" in line
    _with_pattern(pair / "A", tmp_path / "nested", _NESTED, key)  # re would hang; regex answers at once
    ad = load_adapter(tmp_path / "nested")
    want = load_adapter(pair / "A")
    assert {n: lr.r for n, lr in ad.items()} == {n: lr.r for n, lr in want.items()}


def test_module_patterns_are_bounded(pair, capsys):
    from analysis.cli.subspace import main

    t0 = time.perf_counter()
    assert main([str(pair / "A"), str(pair / "B"), "--modules", _HANG]) == 2
    assert "--modules" in _one_line(capsys.readouterr().err) and time.perf_counter() - t0 < 30
    assert main([str(pair / "A"), str(pair / "B"), "--modules", _NESTED]) == 2  # matches nothing, at once
    assert "--modules" in _one_line(capsys.readouterr().err)


def test_the_pattern_rule_is_peft_s(pair):
    from peft.utils.other import get_pattern_key as peft_key

    from analysis.io.peft_config import get_pattern_key

    names = list(load_adapter(pair / "A"))
    for pats in (["q_proj"], [r"layers\.0\..*"], ["self_attn.v_proj", "v_proj"], [r"(\w+\.)+q_proj"]):
        # (not _NESTED: PEFT's own re.match takes minutes on it, which is the point of the time bound)
        for n in names:
            assert get_pattern_key(pats, n) == peft_key(pats, n), (pats, n)


def test_without_regex_nested_quantifiers_are_refused(monkeypatch):
    import builtins

    from analysis.core import patterns

    real = builtins.__import__

    def no_regex(name, *a, **k):
        if name == "regex":
            raise ImportError("no regex")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_regex)
    with pytest.raises(ValueError, match="repeat inside a repeat"):
        patterns.BoundedPattern(_NESTED, what="--modules")
    assert patterns.BoundedPattern(r"layers\.(\d+)\.q_proj", what="--modules").search("m.layers.3.q_proj")


# ---------------------------------------------------------------------------- pickles

def test_a_zip_bomb_is_refused_before_torch_reads_it(tmp_path, monkeypatch):
    import zipfile

    import torch

    torch.save({"h.0.lora_A": torch.zeros(2, 3), "h.0.lora_B": torch.zeros(3, 2)}, str(tmp_path / "ok.pt"))
    with zipfile.ZipFile(tmp_path / "ok.pt") as zin, zipfile.ZipFile(tmp_path / "bomb.pt", "w",
                                                                      zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr("archive/data/99", b"\0" * (64 << 20))  # 64 MB of zeros in ~64 KB
    assert os.path.getsize(tmp_path / "bomb.pt") < 1 << 20
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    with pytest.raises(AdapterError, match=r"bomb\.pt: refused to load: its records declare 6\d\.\d MB"):
        load_adapter(tmp_path / "bomb.pt", alpha=1.0)
    monkeypatch.undo()
    assert len(load_adapter(tmp_path / "ok.pt", alpha=1.0)) == 1  # a real one loads


@pytest.mark.slow
def test_a_malicious_pickle_names_the_refused_call(tmp_path):
    marker = tmp_path / "ran"
    code = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))
        torch.save({{"h.0.lora_A": torch.ones(2, 3), "x": Evil()}}, {str(tmp_path / 'evil.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    res = subprocess.run([sys.executable, "-m", "analysis.subspace", str(tmp_path / "evil.pt"),
                          str(tmp_path / "evil.pt"), "--alpha", "1"], cwd=ROOT, capture_output=True, text=True)
    line = _one_line(res.stderr)
    assert res.returncode == 2 and "evil.pt" in line and ("posix.system" in line or "os.system" in line)
    assert not marker.exists()


# ---------------------------------------------------------------------------- schedulers

@pytest.fixture
def silent_socket():
    """A socket that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    held, stop = [], threading.Event()

    def accept():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(s.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{s.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    s.close()


@pytest.mark.slow
def test_a_scheduler_that_never_answers_is_refused_in_time(pair, silent_socket, monkeypatch, capsys):
    from analysis.cli.collection import main
    from analysis.sweeps import collection

    monkeypatch.setattr(collection, "SCHEDULER_SECONDS", 2.0)
    t0 = time.perf_counter()
    assert main([str(pair / "A"), str(pair / "B"), "--scheduler", silent_socket]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--scheduler {silent_socket}" in line and "within 2 s" in line and time.perf_counter() - t0 < 15


def test_a_scheduler_lost_during_the_run_is_exit_3(pair, monkeypatch, capsys):
    from distributed.comm.core import CommClosedError

    from analysis.cli.collection import main
    from analysis.sweeps import collection

    class Lost:
        class scheduler:
            address = "tcp://10.9.8.7:8786"

        def __enter__(self):
            return self

        def __exit__(self, *e):
            return False

        def run(self, *a, **k):
            pass

        def compute(self, tasks):
            return tasks

        def gather(self, futures):
            raise CommClosedError("in <TCP (closed)>: Stream is closed")

    monkeypatch.setattr(collection, "probe_scheduler", lambda *a, **k: None)
    monkeypatch.setattr("distributed.Client", lambda *a, **k: Lost())
    assert main([str(pair / "A"), str(pair / "B"), "--scheduler", "tcp://10.9.8.7:8786",
                 "--json", os.devnull + ".never"]) == 3
    line = _one_line(capsys.readouterr().err)
    assert "--scheduler tcp://10.9.8.7:8786" in line and "stopped answering" in line and "rerun" in line



@pytest.mark.parametrize("bug", [TypeError, AttributeError])
def test_a_bug_in_a_reader_keeps_its_traceback(tmp_path, monkeypatch, bug):
    """Only what a malformed file causes becomes 'cannot read as a LoRA checkpoint'; a toolkit bug stays a bug."""
    import analysis.io as aio

    def broken(path, **kw):
        raise bug("a bug in the toolkit")

    monkeypatch.setattr(aio, "_load", broken)
    with pytest.raises(bug):
        load_adapter(tmp_path)
    monkeypatch.setattr(aio, "_load", lambda path, **kw: json.loads("{not json"))
    with pytest.raises(AdapterError, match="cannot read as a LoRA checkpoint: JSONDecodeError"):
        load_adapter(tmp_path)


def test_a_writer_between_creating_and_locking_its_temporary_keeps_it(tmp_path):
    """A new unlocked temporary is a live writer's (create, then lock): another writer's clean-up leaves it, so
    parallel writers never lose an entry (a bf16 sweep with two jobs once missed one in six runs)."""
    W = np.eye(6, dtype=np.float32)
    cached_topk_svd(SVDCache(tmp_path), None, "w", W, 2)
    young = tmp_path / svd_cache.SUBFOLDER / ".tmp-00112233445566ff.npz"
    young.write_bytes(b"being written")
    cached_topk_svd(SVDCache(tmp_path), None, "w", W, 3)  # a put: the folder is looked over
    assert young.exists()
    for _ in range(5):  # and many parallel writers lose nothing
        cache = SVDCache(tmp_path / "many")
        mats = [np.random.default_rng(i).standard_normal((12, 10)) for i in range(16)]
        threads = [threading.Thread(target=cached_topk_svd, args=(cache, None, f"m{i}", M, 2))
                   for i, M in enumerate(mats)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        warm = SVDCache(tmp_path / "many")
        for i, M in enumerate(mats):
            cached_topk_svd(warm, None, f"m{i}", M, 2)
        assert warm.misses == 0, warm
