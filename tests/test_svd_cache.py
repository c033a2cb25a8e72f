"""The persistent cache of base weights' singular triplets (analysis.sweeps.svd_cache) and the threading helpers."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from analysis.core.threads import available_cores, blas_threads, map_ordered, resolve_jobs
from analysis.sweeps import svd_cache
from analysis.sweeps.svd_cache import SVDCache, cached_full_basis, cached_topk_svd, file_identity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_base(path, seed=0, shape=(64, 48)):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    save_file({"layer.q.weight": rng.standard_normal(shape).astype(np.float32)}, str(path))
    return rng


@pytest.fixture
def base_file(tmp_path):
    path = tmp_path / "model.safetensors"
    _write_base(path)
    return path


def _W(path):
    from safetensors.numpy import load_file

    return load_file(str(path))["layer.q.weight"]


def _entries(folder):
    """The cache's entries under the user folder ``folder`` (they live in its own subfolder)."""
    folder = os.path.join(folder, svd_cache.SUBFOLDER)
    return sorted(n for n in os.listdir(folder) if n.endswith(".npz")) if os.path.isdir(folder) else []


def test_miss_then_hit_returns_the_stored_triplets(tmp_path, base_file, monkeypatch):
    cache = SVDCache(tmp_path / "c")
    W = _W(base_file)
    first = cached_topk_svd(cache, str(base_file), "layer.q", W, 4)
    assert (cache.misses, cache.hits, cache.writes) == (1, 0, 1) and len(_entries(tmp_path / "c")) == 1

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(svd_cache, "randomized_svd", boom)
    again = cached_topk_svd(SVDCache(tmp_path / "c"), str(base_file), "layer.q", W, 4)  # a new run
    np.testing.assert_array_equal(again.S, first.S)
    np.testing.assert_array_equal(again.U, first.U)
    np.testing.assert_array_equal(again.V, first.V)
    # another k, tensor or seed is another entry: it misses (and here would recompute)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_topk_svd(SVDCache(tmp_path / "c"), str(base_file), "layer.q", W, 5)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_topk_svd(SVDCache(tmp_path / "c"), str(base_file), "layer.q", W, 4, seed=1)


def test_disabled_cache_reads_and_writes_nothing(tmp_path, base_file):
    cache = SVDCache(tmp_path / "c", enabled=False)
    W = _W(base_file)
    cached_topk_svd(cache, str(base_file), "layer.q", W, 4)
    cached_topk_svd(cache, str(base_file), "layer.q", W, 4)
    assert not os.path.exists(tmp_path / "c") and cache.hits == 0


def test_changed_file_misses_and_gives_the_new_weights_svd(tmp_path, base_file):
    W = _W(base_file)
    before = cached_topk_svd(SVDCache(tmp_path / "c"), str(base_file), "layer.q", W, 3)
    ident = file_identity(base_file)
    _write_base(base_file, seed=1)  # same size and header, new values, new mtime
    os.utime(base_file, ns=(ident["mtime_ns"] + 10**9, ident["mtime_ns"] + 10**9))
    assert file_identity(base_file)["size"] == ident["size"]
    W2 = _W(base_file)
    cache = SVDCache(tmp_path / "c")
    after = cached_topk_svd(cache, str(base_file), "layer.q", W2, 3)
    assert cache.misses == 1 and cache.hits == 0
    np.testing.assert_allclose(after.S, np.linalg.svd(W2.astype(np.float64), compute_uv=False)[:3], rtol=1e-5)
    assert not np.allclose(after.S, before.S)


def test_header_is_part_of_the_identity(tmp_path, base_file):
    ident = file_identity(base_file)
    from safetensors.numpy import save_file

    save_file({"layer.k.weight": _W(base_file)}, str(base_file))  # other tensor name: other header
    os.utime(base_file, ns=(ident["mtime_ns"], ident["mtime_ns"]))
    new = file_identity(base_file)
    assert new["mtime_ns"] == ident["mtime_ns"] and new["header_sha256"] != ident["header_sha256"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "nan"])
def test_corrupted_entry_is_ignored_and_rewritten(tmp_path, base_file, damage):
    W = _W(base_file)
    good = cached_topk_svd(SVDCache(tmp_path / "c"), str(base_file), "layer.q", W, 4)
    (entry,) = _entries(tmp_path / "c")
    path = tmp_path / "c" / svd_cache.SUBFOLDER / entry
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an npz file" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a well-formed file with non-finite values
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["S"] = np.full_like(arrays["S"], np.nan)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    cache = SVDCache(tmp_path / "c")
    res = cached_topk_svd(cache, str(base_file), "layer.q", W, 4)
    assert cache.misses == 1 and cache.writes == 1
    np.testing.assert_allclose(res.S, good.S, rtol=1e-12)
    assert _entries(tmp_path / "c") == [entry]  # rewritten in place, loads again
    third = SVDCache(tmp_path / "c")
    cached_topk_svd(third, str(base_file), "layer.q", W, 4)
    assert third.hits == 1


@pytest.mark.slow
def test_two_processes_filling_the_cache_at_once(tmp_path, base_file):
    folder = tmp_path / "c"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        import numpy as np
        from safetensors.numpy import load_file
        from analysis.sweeps.svd_cache import SVDCache, cached_topk_svd
        W = load_file({str(base_file)!r})["layer.q.weight"]
        while time.time() < float(sys.argv[1]):  # start together
            pass
        for rep in range(3):
            for k in range(1, 13):
                cached_topk_svd(SVDCache({str(folder)!r}), {str(base_file)!r}, "layer.q", W, k)
    """)
    import time

    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", script, start], stderr=subprocess.PIPE) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    names = [n for n in os.listdir(folder / svd_cache.SUBFOLDER) if n != "CACHEDIR.TAG"]
    assert len(_entries(folder)) == 12 and len(names) == 12  # no temporary file left behind
    cache = SVDCache(folder)
    W = _W(base_file)
    for k in range(1, 13):
        res = cached_topk_svd(cache, str(base_file), "layer.q", W, k)
        np.testing.assert_allclose(res.S, np.linalg.svd(W.astype(np.float64), compute_uv=False)[:k], rtol=1e-5)
    assert cache.hits == 12 and cache.misses == 0


def test_size_bound_removes_least_recently_used(tmp_path, base_file):
    W = _W(base_file)
    probe = SVDCache(tmp_path / "probe")
    cached_topk_svd(probe, str(base_file), "layer.q", W, 4)
    one = os.path.getsize(tmp_path / "probe" / svd_cache.SUBFOLDER / _entries(tmp_path / "probe")[0])
    cache = SVDCache(tmp_path / "c", max_bytes=int(2.5 * one))
    for seed in range(4):
        cached_topk_svd(cache, str(base_file), "layer.q", W, 4, seed=seed)
    assert len(_entries(tmp_path / "c")) == 2
    check = SVDCache(tmp_path / "c", max_bytes=10**9)
    cached_topk_svd(check, str(base_file), "layer.q", W, 4, seed=3)  # the newest survived
    cached_topk_svd(check, str(base_file), "layer.q", W, 4, seed=0)  # the oldest did not
    assert (check.hits, check.misses) == (1, 1)


def test_full_basis_cached_and_exact(tmp_path, base_file):
    W = _W(base_file)
    cache = SVDCache(tmp_path / "c")
    X, S = cached_full_basis(cache, str(base_file), "layer.q", W, side="right")
    X2, S2 = cached_full_basis(cache, str(base_file), "layer.q", W, side="right")
    assert cache.hits == 1 and X.shape == (48, 48)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_allclose(X.T @ X, np.eye(48), atol=1e-12)
    np.testing.assert_allclose(S, np.linalg.svd(W.astype(np.float64), compute_uv=False), rtol=1e-12)


def test_cache_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("LORA_SUBSPACE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert svd_cache.cache_dir() == str(tmp_path / "xdg" / "lora-subspace-analysis")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert svd_cache.cache_dir() == str(tmp_path / "home" / ".cache" / "lora-subspace-analysis")


def test_sweep_results_same_with_cold_warm_and_no_cache(tmp_path):
    from conftest import make_peft_adapter
    from safetensors.numpy import save_file

    from analysis import load_adapter
    from analysis.sweeps.adapter import analyse_adapter

    make_peft_adapter(tmp_path / "ad", r=4, seed=2)
    ad = load_adapter(tmp_path / "ad")
    rng = np.random.default_rng(0)
    base = {n + ".weight": rng.standard_normal(ad[n].shape).astype(np.float32) for n in ad}
    save_file(base, str(tmp_path / "base.safetensors"))
    cache = SVDCache(tmp_path / "c")
    cold = analyse_adapter(ad, base=str(tmp_path / "base.safetensors"), cache=cache, jobs=2).frame
    assert cache.writes == 2 * len(ad) and cache.hits == 0  # W's triplets and the random projections
    warm_cache = SVDCache(tmp_path / "c")
    warm = analyse_adapter(ad, base=str(tmp_path / "base.safetensors"), cache=warm_cache, jobs=1).frame
    assert warm_cache.hits == 2 * len(ad) and warm_cache.misses == 0
    off = analyse_adapter(ad, base=str(tmp_path / "base.safetensors"), cache=False).frame
    import pandas as pd

    pd.testing.assert_frame_equal(cold, warm)
    pd.testing.assert_frame_equal(cold, off)


def test_intruders_cli_no_cache_writes_nothing(tmp_path, monkeypatch):
    from conftest import make_peft_adapter
    from safetensors.numpy import save_file

    from analysis import load_adapter
    from analysis.cli.intruders import main

    make_peft_adapter(tmp_path / "ad", r=4, seed=2)
    ad = load_adapter(tmp_path / "ad")
    rng = np.random.default_rng(0)
    save_file({n + ".weight": rng.standard_normal(ad[n].shape).astype(np.float32) for n in ad},
              str(tmp_path / "base.safetensors"))
    monkeypatch.setenv("LORA_SUBSPACE_CACHE", str(tmp_path / "c"))
    args = [str(tmp_path / "ad"), "--base", str(tmp_path / "base.safetensors"), "--jobs", "2"]
    assert main(args + ["--no-cache"]) == 0
    assert not os.path.exists(tmp_path / "c")
    assert main(args) == 0
    assert len(_entries(tmp_path / "c")) == len(ad)
    with pytest.raises(SystemExit) as exc:  # not a positive integer: a usage error
        main(args + ["--jobs", "0"])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- threads


def test_available_cores_respects_cgroup_quota(tmp_path):
    aff = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cores(cgroup_root=str(tmp_path)) == min(aff, 1)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(cgroup_root=str(tmp_path)) == aff
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: still one job
    assert available_cores(cgroup_root=str(tmp_path)) == 1
    os.remove(tmp_path / "cpu.max")
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(cgroup_root=str(tmp_path)) == 1


def test_resolve_jobs():
    assert resolve_jobs(3) == 3 and resolve_jobs(None) == available_cores() == resolve_jobs(0)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            resolve_jobs(bad)


def test_blas_threads_limits_and_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not blas:
        pytest.skip("no BLAS library found by threadpoolctl")
    before = [i["num_threads"] for i in blas]
    with blas_threads(1):
        with blas_threads(1):  # nested
            inside = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert inside == [1] * len(blas) and after == before


def test_blas_threads_restores_torch_threads():
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with blas_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # what the caller had, not the pinned value
        list(map_ordered(abs, range(4), jobs=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_map_ordered_keeps_order_bounds_in_flight_and_raises():
    import threading
    import time

    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def f(x):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.01 * (x % 3))
        with lock:
            state["now"] -= 1
        return x * x

    assert list(map_ordered(f, range(20), jobs=3)) == [x * x for x in range(20)]
    assert 1 <= state["peak"] <= 3

    def g(x):
        if x == 5:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError):
        list(map_ordered(g, range(10), jobs=2))


def test_map_ordered_a_slow_module_does_not_hold_the_others_up():
    """While module 0 runs, the other worker goes on with 1, 2, …, reading ahead at most 4 × jobs items."""
    import threading
    import time

    release, started, read = threading.Event(), [], []

    def items():
        for x in range(20):
            read.append(x)
            yield x

    def f(x):
        started.append(x)
        if x == 0:
            release.wait(10)
        return x

    out = []
    consumer = threading.Thread(target=lambda: out.extend(map_ordered(f, items(), jobs=2)))
    consumer.start()
    deadline = time.monotonic() + 10
    while len(started) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # nothing more may start while 0 holds the head of the window
    assert sorted(started) == list(range(8)) and len(read) == 8 and out == []
    release.set()
    consumer.join(10)
    assert out == list(range(20))


def test_pair_sweep_same_with_one_and_two_jobs(peft_pair):
    from analysis import load_adapter
    from analysis.sweeps.pair import compare_adapters

    import pandas as pd

    a, b = (load_adapter(p) for p in peft_pair)
    one = compare_adapters(a, b, jobs=1)
    two = compare_adapters(a, b, jobs=2)
    pd.testing.assert_frame_equal(one.frame, two.frame)
    assert list(one.results) == list(two.results)


@pytest.mark.parametrize("shape", [(40, 40), (24, 40), (40, 24)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_full_basis_matches_lapack_svd(shape, side):
    from analysis.core.bases import full_basis

    rng = np.random.default_rng(3)
    W = rng.standard_normal(shape)
    X, S = full_basis(W, side=side)
    U, S_ref, Vt = np.linalg.svd(W, full_matrices=False)
    ref = U if side == "left" else Vt.T
    np.testing.assert_allclose(S, S_ref, rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(X * ref, axis=0)), 1.0, atol=1e-9)  # same vectors up to sign
    # ill-conditioned: the Gram route would lose the small directions; the SVD is used
    W2 = U @ np.diag(np.logspace(0, -9, len(S_ref))) @ Vt
    X2, S2 = full_basis(W2, side=side)
    np.testing.assert_allclose(S2, np.logspace(0, -9, len(S_ref)), rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(X2 * ref, axis=0)), 1.0, atol=1e-6)


def test_stability_nulls_are_read_back_the_same_from_the_cache(tmp_path):
    """The prefix-stability null (Monte Carlo, about a second at k = 64) is drawn once and read back bit for bit;
    a damaged entry is drawn again. Oracle: the draw itself (metrics.stability._draw_null)."""
    from analysis.metrics import stability as S
    from analysis.sweeps.svd_cache import cached_stability_nulls

    want = S._draw_null(300, 12, 200, 3)
    S._null.cache_clear()
    cache = SVDCache(tmp_path / "c")
    with cached_stability_nulls(cache):
        got = S.random_max_cos2(300, 12, seed=3)
    assert cache.writes == 1 and cache.hits == 0
    S._null.cache_clear()
    again = SVDCache(tmp_path / "c")  # a new run
    with cached_stability_nulls(again):
        read = S.random_max_cos2(300, 12, seed=3)
        st = S.prefix_stability(np.eye(300)[:, :12], np.eye(300)[:, :12], seed=3)
    assert again.hits >= 1 and again.writes == 0
    for a, b, c in zip(want, got, read):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert st.shared == 12
    for f in (tmp_path / "c").rglob("*.npz"):
        f.write_bytes(f.read_bytes()[:50])  # damaged: a miss, drawn again
    S._null.cache_clear()
    third = SVDCache(tmp_path / "c")
    with cached_stability_nulls(third):
        redrawn = S.random_max_cos2(300, 12, seed=3)
    assert third.writes == 1 and all(np.array_equal(a, b) for a, b in zip(want, redrawn))
    S._null.cache_clear()
    with cached_stability_nulls(SVDCache(tmp_path / "off", enabled=False)):  # a disabled cache: drawn, nothing kept
        assert np.array_equal(S.random_max_cos2(300, 12, seed=3)[0], want[0])
    assert not (tmp_path / "off").exists()
    S._null.cache_clear()
