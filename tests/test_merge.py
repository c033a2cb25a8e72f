"""Exact merges against PEFT's add_weighted_adapter (linear, cat, svd) and dense float64 sums."""

import json
import math

import numpy as np
import pytest

from analysis.core import Adapter, LowRank
from analysis.errors import AdapterError
from analysis.io import load_adapter
from analysis.sweeps.merge import merge_adapters, stacked_update

WEIGHTS = (0.7, -0.4, 1.3)


def _base():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    from conftest import make_peft_adapter

    root = tmp_path_factory.mktemp("merge")
    for name, r, seed, alpha in (("a", 4, 0, 8), ("b", 4, 1, 16), ("c", 4, 2, 4), ("d", 2, 3, 8)):
        make_peft_adapter(root / name, r=r, seed=seed, alpha=alpha)
    return root


def _peft_merged(root, names, weights, combination, **kw):
    """{module: ΔW} of PEFT's own merge (the oracle)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(_base(), str(root / names[0]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(str(root / n), adapter_name=n)
    model.add_weighted_adapter(list(names), list(weights), "merged", combination_type=combination, **kw)
    return _deltas(model, "merged")


def _deltas(model, adapter):
    out = {}
    for n, mod in model.named_modules():
        if hasattr(mod, "get_delta_weight") and adapter in getattr(mod, "lora_A", {}):
            out[n.replace("base_model.model.", "")] = mod.get_delta_weight(adapter).detach().double().numpy()
    return out


def _ours_in_peft(path):
    """Our written adapter, loaded by PEFT itself: {module: ΔW}."""
    from peft import PeftModel

    return _deltas(PeftModel.from_pretrained(_base(), str(path), adapter_name="ours"), "ours")


def _dense_sum(root, names, weights):
    """Σ wᵢ ΔWᵢ from each adapter's factors, dense float64 numpy."""
    out = {}
    for n, w in zip(names, weights):
        for m, lr in load_adapter(root / n).items():
            D = (lr.lora_B.astype(np.float64) @ lr.lora_A.astype(np.float64)) * lr.scale * w
            out[m] = out.get(m, 0) + D
    return out


@pytest.mark.parametrize("method,rank", [("cat", None), ("svd", None), ("svd", 3), ("linear", None)])
def test_merge_matches_peft_add_weighted_adapter(trio, tmp_path, method, rank):
    names = ("a", "b", "c")
    res = merge_adapters([load_adapter(trio / n) for n in names], weights=WEIGHTS, method=method, rank=rank)
    res.write(tmp_path / "ours")
    ours = _ours_in_peft(tmp_path / "ours")  # also checks that PEFT loads what we wrote
    kw = {"svd_rank": rank} if rank else {}
    theirs = _peft_merged(trio, names, WEIGHTS, method, **kw)
    exact = _dense_sum(trio, names, WEIGHTS)
    assert set(ours) == set(theirs) == set(exact)
    fr = res.frame.set_index("name")
    for m in ours:
        scale = np.abs(theirs[m]).max()
        np.testing.assert_allclose(ours[m], theirs[m], atol=2e-5 * scale, rtol=0)
        # the report's exact numbers against the dense float64 sum
        tot = float(np.sum(exact[m] ** 2))
        assert fr.loc[m, "norm2_sum"] == pytest.approx(tot, rel=1e-9)
        err = np.linalg.norm(ours[m] - exact[m]) / math.sqrt(tot)
        assert fr.loc[m, "rel_error"] == pytest.approx(err, rel=1e-4, abs=1e-6)
        if method == "svd":
            S = np.linalg.svd(exact[m], compute_uv=False)
            k = rank or 4
            assert fr.loc[m, "energy_kept"] == pytest.approx(np.sum(S[:k] ** 2) / np.sum(S ** 2), rel=1e-9)
    if method == "cat":
        assert fr["rel_error"].max() < 1e-6 and (fr["r"] == 12).all()
    if method == "linear":
        assert fr["rel_error"].min() > 1e-3  # PEFT's linear is not the weighted sum (cross terms)


def test_interference_numbers_against_dense(trio):
    names = ("a", "b", "c")
    res = merge_adapters([load_adapter(trio / n) for n in names], weights=WEIGHTS, method="cat")
    lrs = {n: load_adapter(trio / n) for n in names}
    fr = res.frame.set_index("name")
    for m in fr.index:
        Ds = [(lrs[n][m].lora_B.astype(float) @ lrs[n][m].lora_A.astype(float)) * lrs[n][m].scale for n in names]
        sep = sum(w * w * np.sum(D * D) for w, D in zip(WEIGHTS, Ds))
        assert fr.loc[m, "sum_norm2"] == pytest.approx(sep, rel=1e-9)
        c = res.cosines[(res.cosines["name"] == m)]
        want = np.sum(Ds[0] * Ds[2]) / np.sqrt(np.sum(Ds[0] ** 2) * np.sum(Ds[2] ** 2))
        got = float(c[(c["a"] == str(trio / "a")) & (c["b"] == str(trio / "c"))]["cosine"].iloc[0])
        assert got == pytest.approx(want, rel=1e-9)


def test_verdicts_on_constructed_updates():
    rng = np.random.default_rng(0)
    d_out, d_in = 40, 30
    A = rng.standard_normal((2, d_in))
    B = rng.standard_normal((d_out, 2))
    same = Adapter({"m.0.q": LowRank(A, B, 1.0, name="m.0.q")}, path="x", format="peft")
    other = Adapter({"m.0.q": LowRank(rng.standard_normal((2, d_in)), rng.standard_normal((d_out, 2)), 1.0,
                                      name="m.0.q")}, path="y", format="peft")
    assert merge_adapters([same, same], method="cat").frame["verdict"].iloc[0] == "reinforcing"
    assert merge_adapters([same, same], weights=[1, -0.5], method="cat").frame["verdict"].iloc[0] == "cancelling"
    assert merge_adapters([same, other], method="cat").frame["verdict"].iloc[0] == "orthogonal"
    # identical adapters merged by svd at their own rank: nothing lost
    res = merge_adapters([same, same], method="svd")
    assert res.frame["energy_kept"].iloc[0] == pytest.approx(1.0)
    D = 2 * B @ A
    lr = res.modules["m.0.q"]
    np.testing.assert_allclose(lr.scale * lr.lora_B @ lr.lora_A, D, atol=1e-10 * np.abs(D).max())


def test_stacked_update_is_the_weighted_sum():
    rng = np.random.default_rng(2)
    lrs = [LowRank(rng.standard_normal((r, 6)), rng.standard_normal((5, r)), s) for r, s in ((1, 2.0), (3, -0.5))]
    st = stacked_update(lrs, [0.3, 2.0])
    want = sum(w * lr.scale * lr.lora_B @ lr.lora_A for lr, w in zip(lrs, (0.3, 2.0)))
    np.testing.assert_allclose(st.scale * st.lora_B @ st.lora_A, want, atol=1e-12)


def test_bad_inputs(trio, tmp_path):
    a, d = load_adapter(trio / "a"), load_adapter(trio / "d")
    with pytest.raises(AdapterError, match="linear needs one rank"):
        merge_adapters([a, d], method="linear")
    with pytest.raises(ValueError, match="one weight per adapter"):
        merge_adapters([a, d], weights=[1.0], method="cat")
    with pytest.raises(ValueError, match="method must be"):
        merge_adapters([a, d], method="tie")
    with pytest.raises(ValueError, match="at least two"):
        merge_adapters([a], method="cat")
    from conftest import make_peft_adapter

    make_peft_adapter(tmp_path / "wide", r=2, seed=5, hidden=48)
    with pytest.raises(AdapterError) as e:
        merge_adapters([a, load_adapter(tmp_path / "wide")], method="cat")
    assert "wide" in str(e.value) and "key 'model.layers.0.self_attn.q_proj'" in str(e.value)


def test_cli_merge(trio, tmp_path, capsys):
    from analysis.cli.merge import main

    paths = [str(trio / n) for n in ("a", "b", "d")]
    out, rep = tmp_path / "m", tmp_path / "r.json"
    assert main([*paths, "--weights", "1", "0.5", "2", "--method", "svd", "--rank", "2", "--out", str(out),
                 "--json", str(rep)]) == 0
    text = capsys.readouterr().out
    assert "pairwise Frobenius cosine" in text and "energy kept" in text and f"wrote {out}" in text
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 2
    d = json.loads(rep.read_text())
    assert d["settings"]["method"] == "svd" and d["settings"]["weights"] == [1.0, 0.5, 2.0]
    assert len(d["modules"]) == 4 and len(d["cosines"]) == 12
    merged = load_adapter(out)
    exact = _dense_sum(trio, ("a", "b", "d"), (1, 0.5, 2))
    for m, lr in merged.items():
        S = np.linalg.svd(exact[m], compute_uv=False)
        got = np.linalg.svd(lr.scale * lr.lora_B.astype(float) @ lr.lora_A.astype(float), compute_uv=False)
        np.testing.assert_allclose(got[:2], S[:2], rtol=1e-5)
    # refusals: exit 2, one line
    assert main([*paths, "--method", "cat", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([paths[0], "--method", "cat", "--out", str(tmp_path / "x")]) == 2
    assert main([*paths, "--weights", "1", "--method", "cat", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--weights: expected 3 numbers" in err and err.count("\n") == 2
    assert main([*paths, "--method", "linear", "--out", str(tmp_path / "y")]) == 2
    assert "linear needs one rank" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
