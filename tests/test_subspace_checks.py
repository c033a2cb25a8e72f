"""``python -m analysis.subspace``: adapters with nothing in common refused at once; near-tied top singular values
marked, checked against numpy's SVD of the factors PEFT saved."""

import json

import numpy as np
import pytest

from analysis.cli.subspace import main
from analysis.metrics.spectrum import NEAR_TIE_GAP, near_tie, top_ratio

from conftest import make_peft_adapter

Q0 = "model.layers.0.self_attn.q_proj"
PEFT_PREFIX = "base_model.model."


def _plant_tie(model, ratio, seed=7):
    """Set layer 0's q_proj LoRA of a PEFT model so that ΔW = s B A has σ = s · (1, ratio, 0.3) exactly, while
    lora_A alone has σ (2, 1, 0.5) and lora_B alone (ratio, 0.6, 0.5): no near tie in either factor."""
    import torch

    lin = model.base_model.model.model.layers[0].self_attn.q_proj
    A_mod, B_mod = lin.lora_A["default"], lin.lora_B["default"]
    r, d_in = A_mod.weight.shape
    d_out = B_mod.weight.shape[0]
    assert r == 3
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((d_out, r)))[0]
    V = np.linalg.qr(rng.standard_normal((d_in, r)))[0]
    sigma = np.array([1.0, ratio, 0.3])
    a = np.array([2.0, 1.0, 0.5])
    A = a[:, None] * V.T  # (r, d_in): singular values a
    B = U * (sigma / a)  # (d_out, r): B A = U diag(σ) Vᵀ
    with torch.no_grad():
        A_mod.weight.copy_(torch.from_numpy(A))
        B_mod.weight.copy_(torch.from_numpy(B))


def _oracle_ratios(model):
    """{module: {side: σ₂/σ₁}} from numpy's SVD of the factors in the PEFT model (lora_A, lora_B, s B A)."""
    out = {}
    for n, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            A = mod.lora_A["default"].weight.detach().double().numpy()  # (r, d_in)
            B = mod.lora_B["default"].weight.detach().double().numpy()  # (d_out, r)
            s = mod.scaling["default"]
            sv = {"A": np.linalg.svd(A, compute_uv=False), "B": np.linalg.svd(B, compute_uv=False)}
            sv["input"] = sv["output"] = np.linalg.svd(s * (B @ A), compute_uv=False)  # (d_out, r) @ (r, d_in)
            out[n.removeprefix(PEFT_PREFIX)] = {side: v[1] / v[0] for side, v in sv.items()}
    return out


@pytest.fixture(scope="module")
def tied_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("ties")
    a = make_peft_adapter(root / "a", r=3, seed=0)
    _plant_tie(a, 0.95)
    a.save_pretrained(str(root / "a"))
    b = make_peft_adapter(root / "b", r=3, seed=1)
    return root, _oracle_ratios(a), _oracle_ratios(b)


def test_near_tie_rule_against_numpy_svd():
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((20, 3)))[0]
    V = np.linalg.qr(rng.standard_normal((30, 3)))[0]
    for ratio, tied in ((0.95, True), (0.85, False), (0.91, True), (0.89, False)):
        dense = (U * [2.0, 2.0 * ratio, 0.5]) @ V.T  # (20, 3) @ (3, 30)
        S = np.linalg.svd(dense, compute_uv=False)
        assert S[1] / S[0] == pytest.approx(ratio, rel=1e-12)
        assert near_tie(S) is tied
        assert top_ratio(S) == pytest.approx(ratio, rel=1e-12)
    assert NEAR_TIE_GAP == 0.1
    assert near_tie([1.0, 0.85], gap=0.2) and not near_tie([1.0, 0.85])
    assert not near_tie([0.0, 0.0]) and not near_tie([5.0]) and not near_tie([])
    assert np.isnan(top_ratio([5.0])) and np.isnan(top_ratio([0.0, 0.0]))
    with pytest.raises(ValueError, match="gap"):
        near_tie([1.0, 0.5], gap=0.0)
    with pytest.raises(ValueError, match="descending"):
        near_tie([0.5, 1.0])


def test_near_ties_marked_in_table_and_json(tied_pair, tmp_path, capsys):
    root, ra, rb = tied_pair
    out = tmp_path / "s.json"
    assert main([str(root / "a"), str(root / "b"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    # the planted module, as numpy sees it: ΔW's top two within 10 %, neither factor's
    assert ra[Q0]["input"] == pytest.approx(0.95, rel=1e-5)
    assert ra[Q0]["A"] == pytest.approx(0.5, rel=1e-5) and ra[Q0]["B"] < 0.9
    d = json.loads(out.read_text())
    assert d["settings"]["near_tie_gap"] == 0.1
    recs = {r["name"]: r for r in d["modules"]}
    assert set(recs) == set(ra) == set(rb)
    want_counts = {s: 0 for s in ("A", "B", "input", "output")}
    for name, rec in recs.items():
        for side in ("A", "B", "input", "output"):
            want = bool(ra[name][side] > 1 - NEAR_TIE_GAP or rb[name][side] > 1 - NEAR_TIE_GAP)
            assert rec[f"near_tie_{side}"] is want, (name, side)
            assert rec[f"top_ratio_a_{side}"] == pytest.approx(ra[name][side], rel=1e-5)
            assert rec[f"top_ratio_b_{side}"] == pytest.approx(rb[name][side], rel=1e-5)
            want_counts[side] += want
    assert recs[Q0]["near_tie_input"] and recs[Q0]["near_tie_output"]
    assert d["near_ties"] == want_counts
    # the table: '*' right after each phi11 on a tied side, and the counts in the summary line
    for name, rec in recs.items():
        layer, module = name.split(".")[2], name.split(".", 3)[3]
        row = next(line for line in text.splitlines() if line.split()[:2] == [layer, module])
        cells = row.split()[5:8]  # after layer, module, role, r_a, r_b: phi11[A], phi11[in], phi11[out]
        for cell, side in zip(cells, ("A", "input", "output")):
            assert cell.endswith("*") is rec[f"near_tie_{side}"], (row, side)
    summary = next(line for line in text.splitlines() if line.startswith("summary:"))
    assert (f"near ties (*) in {want_counts['A']} (A), {want_counts['input']} (in), "
            f"{want_counts['output']} (out) modules") in summary
    assert "* near tie: sigma2/sigma1 > 0.9" in text


def test_no_common_module_exits_2_before_any_work(tmp_path, tied_pair, capsys, monkeypatch):
    import analysis.sweeps.pair as pair

    root, _, _ = tied_pair
    ko = tmp_path / "ko"
    make_peft_adapter(ko, r=2, seed=3, targets=("k_proj", "o_proj"))

    def boom(*a, **k):
        raise AssertionError("compared although nothing is shared")

    monkeypatch.setattr(pair, "compare_adapters", boom)
    assert main([str(root / "a"), str(ko)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(root / "a") in err and str(ko) in err and "share no module" in err
    assert f"'{Q0}'" in err and "'model.layers.0.self_attn.k_proj'" in err


def test_no_module_of_equal_shape_exits_2(tmp_path, tied_pair, capsys):
    root, _, _ = tied_pair
    wide = tmp_path / "wide"
    make_peft_adapter(wide, r=2, seed=4, hidden=48)
    assert main([str(root / "b"), str(wide)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(root / "b") in err and str(wide) in err and f"'{Q0}' is 32x32 in A and 48x48 in B" in err
