"""Exact rank reduction, checked through PEFT itself: load, merge, compare with a dense SVD."""

import json

import numpy as np
import pytest

from analysis import load_adapter
from analysis.resize import main
from analysis.sweeps.resize import resize_adapter

from _rank_tiny import base_state, tiny_llama
from conftest import make_peft_adapter


def _truncated(D, k):
    """Dense float64 oracle: best rank-k approximation of D and the energy it keeps."""
    U, S, Vt = np.linalg.svd(D, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vt[:k], float((S[:k] ** 2).sum() / (S ** 2).sum())  # (d_out, k) @ (k, d_in)


def _merged_deltas(adapter_dir):
    """ΔW that PEFT applies: merge_and_unload() weights minus the base, float64."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_llama(), str(adapter_dir))
    ranks = {n.removeprefix("base_model.model."): m.r["default"] for n, m in model.named_modules()
             if isinstance(getattr(m, "r", None), dict) and "default" in m.r}
    merged = {k: v.detach().double().numpy() for k, v in model.merge_and_unload().state_dict().items()}
    base = base_state()
    return {k[:-len(".weight")]: merged[k] - base[k] for k in base if k.endswith(".weight")}, ranks


def _check_through_peft(src, out, ks):
    deltas, ranks = _merged_deltas(out)
    worst = 0.0
    for name, lr in src.items():
        want, _ = _truncated(lr.delta(), ks[name])
        got = deltas[name]
        worst = max(worst, np.abs(got - want).max() / np.abs(lr.delta()).max())
        assert ranks[name] == max(ks[name], 1)
    for name, D in deltas.items():  # nothing else moved
        if name not in src:
            assert not D.any(), name
    assert worst < 2e-6, worst
    return worst


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    p = tmp_path_factory.mktemp("src") / "r4"
    make_peft_adapter(p, r=4, seed=3, alpha=8)
    return p


def test_rank_k_through_peft_merge(src, tmp_path, capsys):
    out, js = tmp_path / "r2", tmp_path / "kept.json"
    assert main([str(src), "--rank", "2", "--out", str(out), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "energy" in text and "wrote" in text
    ad = load_adapter(src)
    _check_through_peft(ad, out, dict.fromkeys(ad, 2))
    rec = json.loads(js.read_text())
    assert rec["r"] == 2 and rec["rank_pattern"] == {}
    for m in rec["modules"]:
        _, e = _truncated(ad[m["name"]].delta(), 2)
        assert m["energy"] == pytest.approx(e, abs=1e-12) and m["k"] == 2 and m["r"] == 4
        assert m["rel_error"] == pytest.approx(np.sqrt(1 - e), abs=1e-9)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] == 8 and cfg["r"] == 2 and not cfg["use_rslora"]
    back = load_adapter(out)  # our own reader agrees too
    for name, lr in back.items():
        np.testing.assert_allclose(lr.delta(), _truncated(ad[name].delta(), 2)[0], atol=1e-6)


def test_pattern_gives_per_module_ranks_through_peft(src, tmp_path):
    pat = tmp_path / "pat.json"
    pat.write_text(json.dumps({"lora_config": {"r": 2, "rank_pattern": {"layers.0.self_attn.q_proj": 1,
                                                                        "v_proj": 3}}}))
    out = tmp_path / "mixed"
    assert main([str(src), "--pattern", str(pat), "--out", str(out)]) == 0
    ks = {"model.layers.0.self_attn.q_proj": 1, "model.layers.0.self_attn.v_proj": 3,
          "model.layers.1.self_attn.q_proj": 2, "model.layers.1.self_attn.v_proj": 3}
    _check_through_peft(load_adapter(src), out, ks)
    assert json.loads((out / "adapter_config.json").read_text())["rank_pattern"]  # PEFT needed it


def test_energy_mode_matches_dense(src):
    ad = load_adapter(src)
    res = resize_adapter(ad, energy=0.9)
    for row in res.frame.to_dict(orient="records"):
        S = np.linalg.svd(ad[row["name"]].delta(), compute_uv=False)
        e = np.cumsum(S ** 2) / (S ** 2).sum()
        k = int(np.argmax(e >= 0.9 - 1e-12)) + 1
        assert row["k"] == k and row["energy"] == pytest.approx(e[k - 1], abs=1e-12) and row["energy"] >= 0.9
        assert res.modules[row["name"]].scale == pytest.approx(res.alpha / k)


def test_embedding_and_zero_updates_through_peft(tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "emb"
    make_peft_adapter(src, r=3, seed=4, targets=("embed_tokens", "q_proj"))
    f = src / "adapter_model.safetensors"
    t = load_file(str(f))  # PEFT initialises lora_embedding_A to zero: give the embedding an update
    key = next(k for k in t if k.endswith("lora_embedding_A"))
    t[key] = np.random.default_rng(4).standard_normal(t[key].shape).astype(np.float32)
    save_file(t, str(f))
    ad = load_adapter(src)
    assert not ad["model.embed_tokens"].is_zero
    assert ad["model.embed_tokens"].kind == "embedding"
    out = tmp_path / "emb_r1"
    assert main([str(src), "--rank", "1", "--out", str(out), "--quiet"]) == 0
    _check_through_peft(ad, out, dict.fromkeys(ad, 1))
    z = tmp_path / "zero"
    make_peft_adapter(z, r=2, seed=5, zero_b=True)
    assert main([str(z), "--rank", "1", "--out", str(tmp_path / "zero_r1"), "--quiet"]) == 0
    deltas, _ = _merged_deltas(tmp_path / "zero_r1")
    mods = list(load_adapter(z))
    assert mods and all(not deltas[m].any() for m in mods)  # the adapted modules' merged updates are zero


def test_loralib_source_with_alpha(tmp_path):
    import torch

    rng = np.random.default_rng(8)
    sd = {}
    for l in range(2):
        for m, dout in (("q_proj", 32), ("v_proj", 16)):
            sd[f"model.layers.{l}.self_attn.{m}.lora_A"] = torch.tensor(rng.standard_normal((4, 32)), dtype=torch.float32)
            sd[f"model.layers.{l}.self_attn.{m}.lora_B"] = torch.tensor(rng.standard_normal((dout, 4)) * 0.05,
                                                                        dtype=torch.float32)
    p = tmp_path / "lora.pt"
    torch.save(sd, p)
    assert main([str(p), "--rank", "2", "--out", str(tmp_path / "x")]) == 2  # α unknown
    out = tmp_path / "from_loralib"
    assert main([str(p), "--alpha", "32", "--rank", "2", "--out", str(out)]) == 0
    ad = load_adapter(p, alpha=32)
    _check_through_peft(ad, out, dict.fromkeys(ad, 2))


def test_kohya_is_written_back_as_kohya(tmp_path, capsys):
    """Since issue 13 a kohya source is resized into a kohya file (tests/test_formats_kohya_base.py has the
    lycoris-lora / sd-scripts oracles); a folder-like --out is refused in one line."""
    from safetensors.numpy import load_file, save_file

    p = tmp_path / "k.safetensors"
    save_file({"lora_unet_down_blocks_0_attn_to_q.lora_down.weight": np.ones((2, 8), np.float32),
               "lora_unet_down_blocks_0_attn_to_q.lora_up.weight": np.ones((8, 2), np.float32)}, str(p))
    assert main([str(p), "--rank", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kohya" in err and ".safetensors" in err
    assert main([str(p), "--rank", "1", "--out", str(tmp_path / "o.safetensors"), "--quiet"]) == 0
    sd = load_file(str(tmp_path / "o.safetensors"))
    assert sd["lora_unet_down_blocks_0_attn_to_q.lora_down.weight"].shape == (1, 8)
    assert float(sd["lora_unet_down_blocks_0_attn_to_q.alpha"]) == pytest.approx(1.0)


def test_cli_errors_are_one_line(src, tmp_path, capsys):
    out = tmp_path / "o"
    assert main([str(src), "--rank", "1", "--out", str(out), "--quiet"]) == 0
    assert main([str(src), "--rank", "1", "--out", str(out)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main([str(src), "--rank", "1", "--out", str(out), "--force", "--quiet"]) == 0
    for argv, msg in (([str(src), "--rank", "0"], "--rank"), ([str(src), "--energy", "0"], "--energy"),
                      ([str(tmp_path / "nope"), "--rank", "1"], "no such file")):
        assert main(argv + ["--out", str(tmp_path / "p")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"rank_pattern": {"q_proj": -1}}')
    assert main([str(src), "--pattern", str(bad), "--out", str(tmp_path / "p")]) == 2
    assert str(bad) in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(src), "--rank", "1", "--energy", "0.5", "--out", str(tmp_path / "p")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--rank", "--energy", "--pattern", "--out", "--force", "--alpha", "--lora-alpha", "--json",
                "--quiet", "--debug"):
        assert opt in text
