"""The one sweep driver (analysis.sweeps.driver): order, jobs, progress, the cache policy, and the one rule for
modules two adapters share: a module whose ΔW shapes differ is skipped and named, by every sweep and command."""

import json
import threading

import numpy as np
import pytest

from analysis import Adapter, LowRank, load_adapter
from analysis.sweeps.driver import pair_modules, sweep_modules
from analysis.sweeps.progress import Progress

from conftest import make_peft_adapter

ODD = "model.layers.1.self_attn.v_proj"


def _adapter(names, *, r=2, seed=0):
    rng = np.random.default_rng(seed)
    mods = {n: LowRank(rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r)), scale=1.0, name=n)
            for n, (d_out, d_in) in names.items()}
    return Adapter(mods, path=f"mem{seed}", format="peft")


# ------------------------------------------------------------------------------------------ the loop

@pytest.mark.parametrize("jobs", [1, 3])
def test_results_in_input_order_lazily_with_the_modules_looked_up(jobs):
    ad = _adapter({f"model.layers.{i}.q_proj": (6, 5) for i in range(8)})
    names = sorted(ad, key=lambda n: -int(n.split(".")[2]))  # any order: kept
    seen = []

    def fn(name, lr):
        seen.append(threading.current_thread().name)
        return name, lr.rank

    gen = sweep_modules(fn, names, modules=[ad], jobs=jobs)
    assert not seen  # a generator: nothing runs before it is iterated
    assert list(gen) == [(n, 2) for n in names]


def test_pairs_carry_their_payload_and_a_callable_gives_several_modules():
    a, b = _adapter({"m.0.q": (4, 3)}, seed=1), _adapter({"m.0.q": (4, 3)}, seed=2)
    out = list(sweep_modules(lambda item, *lrs: (item[1], len(lrs)), [("m.0.q", "W")],
                             modules=lambda item: [a[item[0]], b[item[0]]], jobs=1))
    assert out == [("W", 2)]


@pytest.mark.parametrize("keep", [False, True])
def test_the_cache_is_dropped_after_use_unless_kept(keep):
    ad = _adapter({"m.0.q": (6, 5), "m.1.q": (6, 5)})
    list(sweep_modules(lambda n, lr: lr.svd(), list(ad), modules=[ad], keep_cache=keep, jobs=2))
    assert all(bool(lr._cache) == keep for lr in ad.values())


def test_the_first_error_in_order_is_raised_and_the_cache_dropped_anyway():
    ad = _adapter({f"m.{i}.q": (6, 5) for i in range(6)})

    def fn(name, lr):
        lr.svd()
        if name in ("m.2.q", "m.4.q"):
            raise KeyError(name)
        return name

    with pytest.raises(KeyError, match="m.2.q"):
        list(sweep_modules(fn, sorted(ad), modules=[ad], jobs=2))
    assert not ad["m.2.q"]._cache


def test_progress_counts_modules_or_advances_an_open_count():
    import io

    out = io.StringIO()
    p = Progress("lines", stream=out)
    assert list(sweep_modules(lambda x: x, ["a", "b", "c"], jobs=1, progress=p, desc="things")) == ["a", "b", "c"]
    assert out.getvalue().splitlines()[-1].startswith("things: 3 of 3, done")
    count = p.counter(total=5)
    list(sweep_modules(lambda x: [x, x], ["a", "b"], jobs=1, progress=count, steps=len))
    assert count.count == 4 and not count.closed  # left open for the next sweep
    count.close()


# ------------------------------------------------------------------------------------------ two adapters

@pytest.fixture(scope="module")
def odd_pair(tmp_path_factory):
    """Two real PEFT adapters of one tiny Llama; in B, layer 1's v_proj has another d_out (24, not 16)."""
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("odd")
    make_peft_adapter(root / "A", r=4, seed=0)
    make_peft_adapter(root / "B", r=4, seed=1)
    f = str(root / "B" / "adapter_model.safetensors")
    t = load_file(f)
    t[f"base_model.model.{ODD}.lora_B.weight"] = np.full((24, 4), 0.1, dtype=np.float32)
    save_file(t, f)
    return root / "A", root / "B"


@pytest.mark.parametrize("lazy", [False, True])
def test_pair_modules_splits_compared_one_sided_and_mismatched(odd_pair, lazy, monkeypatch):
    from analysis.io.safetensors_file import SafetensorsFile

    a, b = (load_adapter(p, lazy=lazy) for p in odd_pair)
    if lazy:  # the shapes come from the header: no factor is read twice
        monkeypatch.setattr(SafetensorsFile, "read", lambda self, key: pytest.fail(f"factor {key} read for its shape"))
    pairs = pair_modules(a, b)
    assert pairs.mismatched == [ODD] and ODD not in pairs.names and len(pairs.names) == 3
    assert pairs.only_a == pairs.only_b == []
    assert pair_modules(a, b, modules=["q_proj"]).mismatched == []  # the filters apply to the shared names


def test_subspace_and_rank_advice_both_skip_and_name_the_module(odd_pair):
    from analysis.sweeps.advice import advise_ranks
    from analysis.sweeps.pair import compare_adapters

    a, b = (load_adapter(p) for p in odd_pair)
    sweep = compare_adapters(a, b, jobs=2)
    adv = advise_ranks(a, b, trials=10, jobs=2)
    for res in (sweep, adv):
        assert res.mismatched == [ODD]
        assert ODD not in set(res.frame["name"]) and len(res.frame) == 3
    assert adv.to_dict()["mismatched"] == [ODD]
    ok = advise_ranks(a, a, trials=10)
    assert ok.mismatched == [] and "mismatched" not in ok.to_dict()  # the file is unchanged when none differs


def test_the_commands_name_it_on_one_line(odd_pair, tmp_path, capsys):
    from analysis.cli.rank import main as rank
    from analysis.cli.subspace import main as subspace

    a, b = (str(p) for p in odd_pair)
    assert subspace([a, b]) == 0
    sub = capsys.readouterr().out
    assert rank([a, b, "--trials", "10", "--json", str(tmp_path / "r.json")]) == 0
    adv = capsys.readouterr().out
    assert f"shape differs, not compared (1): {ODD}" in sub.splitlines()
    assert f"shape differs, not advised on (1): {ODD}" in adv.splitlines()
    assert json.loads((tmp_path / "r.json").read_text())["mismatched"] == [ODD]


def test_rank_refuses_two_adapters_with_no_module_of_equal_shape(odd_pair, capsys):
    from analysis.cli.rank import main as rank

    assert rank([str(p) for p in odd_pair] + ["--modules", "v_proj", "--layers", "1", "--trials", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "share no module of equal shape" in err and "16x32 in A and 24x32 in B" in err


# ------------------------------------------------------------------------------------------ the package

def test_the_sweeps_load_on_first_use_and_every_public_name_resolves():
    import subprocess
    import sys

    import analysis
    import analysis.sweeps as sweeps

    assert set(analysis._LAZY) <= set(analysis.__all__) and len(set(analysis.__all__)) == len(analysis.__all__)
    assert set(sweeps._LAZY) == set(sweeps.__all__)
    for pkg in (analysis, sweeps):
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, name
    assert sweeps.pair.compare_adapters is sweeps.compare_adapters  # a submodule by attribute, too
    code = ("import sys, analysis.sweeps.progress; "
            "print(sorted(m for m in sys.modules if m.startswith('analysis.sweeps.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['analysis.sweeps.progress']"  # a command's start-up imports no sweep it does not use
