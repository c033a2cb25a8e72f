"""Full fine-tune deltas: planted low-rank update + noise in tiny safetensors models."""

import json

import numpy as np
import pytest

from analysis import load_adapter
from analysis.finetune import main
from analysis.sweeps.finetune import finetune_deltas, is_embedding_name

from _rank_tiny import base_state, tiny_llama

PLANTED = ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.embed_tokens")


def _save_sharded(tensors, folder):
    """An HF sharded layout: two shards and model.safetensors.index.json."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for fname, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(folder / fname))
        weight_map.update(dict.fromkeys(ks, fname))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(base folder, fine-tuned sharded folder, {name: dense float64 ΔW as stored in float32})."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("ft")
    base = {k: v.astype(np.float32) for k, v in base_state().items()}
    (root / "base").mkdir()
    save_file(base, str(root / "base" / "model.safetensors"))
    rng = np.random.default_rng(0)
    ft = dict(base)
    for name in PLANTED:
        W = base[name + ".weight"]
        U = np.linalg.qr(rng.standard_normal((W.shape[0], 3)))[0]
        V = np.linalg.qr(rng.standard_normal((W.shape[1], 3)))[0]
        D = (U * [0.9, 0.5, 0.3]) @ V.T + 1e-3 * rng.standard_normal(W.shape)  # rank 3 + noise
        ft[name + ".weight"] = (W + D).astype(np.float32)
    ft["model.extra.weight"] = np.ones((4, 4), np.float32)  # only in the fine-tuned model
    _save_sharded(ft, root / "ft")
    deltas = {n: ft[n + ".weight"].astype(np.float64) - base[n + ".weight"] for n in PLANTED}
    return root / "base", root / "ft", deltas


def _dense(D, k):
    U, S, Vt = np.linalg.svd(D, full_matrices=False)
    return S, (U[:, :k] * S[:k]) @ Vt[:k]  # (d_out, k) @ (k, d_in)


def test_spectrum_energy_and_export_match_dense(models, tmp_path):
    base, ft, deltas = models
    res = finetune_deltas(base, ft, rank=3, spectrum=6, modules=["q_proj", "v_proj", "embed"])
    fr = res.to_frame().set_index("name")
    assert fr.loc[list(PLANTED), "zero"].eq(False).all()
    assert fr["zero"].sum() == len(fr) - 3  # the other q/v modules did not move
    assert res.skipped == {"model.extra": "only in the fine-tuned model"}
    for name, D in deltas.items():
        S, Dk = _dense(D, 3)
        g = res.long[res.long["name"] == name]
        np.testing.assert_allclose(g["sigma"], S[:6], rtol=1e-6)
        assert fr.loc[name, "fro"] == pytest.approx(np.linalg.norm(D), rel=1e-12)
        assert fr.loc[name, "energy_k"] == pytest.approx((S[:3] ** 2).sum() / (S ** 2).sum(), rel=1e-9)
        assert fr.loc[name, "energy_k"] > 0.99
        np.testing.assert_allclose(res.modules[name].delta(), Dk, atol=1e-9)
    assert res.modules["model.embed_tokens"].kind == "embedding" and len(res.modules) == 3
    # the export is a PEFT adapter whose merge reproduces the rank-3 truncations
    out = tmp_path / "ft_r3"
    res.write(out)
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_llama(), str(out))
    merged = {k: v.detach().double().numpy() for k, v in model.merge_and_unload().state_dict().items()}
    b = base_state()
    for name, D in deltas.items():
        np.testing.assert_allclose(merged[name + ".weight"] - b[name + ".weight"], _dense(D, 3)[1], atol=2e-6)
    assert set(load_adapter(out)) == set(PLANTED)


def test_randomized_spectrum_is_seeded(models):
    base, ft, _ = models
    a = finetune_deltas(base, ft, rank=2, modules=["layers.0.self_attn.q_proj$"], n_iter=0, seed=1)
    b = finetune_deltas(base, ft, rank=2, modules=["layers.0.self_attn.q_proj$"], n_iter=0, seed=1)
    np.testing.assert_array_equal(a.long["sigma"], b.long["sigma"])
    assert len(a.frame) == 1 and a.frame["k"].iloc[0] == 2


def test_cli(models, tmp_path, capsys):
    base, ft, deltas = models
    out, js = tmp_path / "cli", tmp_path / "s.json"
    assert main([str(base), str(ft), "--rank", "3", "--out", str(out), "--modules", "q_proj", "v_proj",
                 "--layers", "0-1", "--json", str(js), "--spectrum", "4"]) == 0
    text = capsys.readouterr().out
    assert "energy captured by rank 3" in text and "identical" in text and "wrote" in text
    recs = json.loads(js.read_text())["modules"]
    q = next(r for r in recs if r["name"] == PLANTED[0])
    assert len(q["sigma"]) == 4 and q["sigma"][0] == pytest.approx(np.linalg.norm(deltas[PLANTED[0]], 2), rel=1e-6)
    assert set(load_adapter(out)) == set(PLANTED[:2])


def test_cli_bad_input(models, tmp_path, capsys):
    from safetensors.numpy import save_file

    base, ft, _ = models
    assert main([str(base), str(tmp_path / "nope"), "--rank", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    other = tmp_path / "other.safetensors"
    save_file({"model.layers.0.self_attn.q_proj.weight": np.ones((3, 3), np.float32)}, str(other))
    assert main([str(base), str(other), "--rank", "2"]) == 2
    err = capsys.readouterr().err
    assert "q_proj.weight" in err and "shape" in err and str(other) in err
    assert main([str(base), str(ft), "--rank", "0"]) == 2
    assert main([str(base), str(ft), "--rank", "2", "--modules", "nothing"]) == 2
    assert main([str(base), str(base), "--rank", "2", "--out", str(tmp_path / "o"), "--modules", "q_proj"]) == 2
    assert "nothing to export" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--rank", "--out", "--force", "--modules", "--layers", "--spectrum", "--lora-alpha",
                "--fan-in-fan-out", "--seed", "--n-iter", "--oversample", "--json", "--csv", "--debug"):
        assert opt in text


def test_embedding_names():
    assert is_embedding_name("transformer.wte") and is_embedding_name("model.embed_tokens")
    assert not is_embedding_name("lm_head") and not is_embedding_name("model.layers.0.mlp.up_proj")


def test_cli_tolerance_is_the_ladder_of_every_command(models, tmp_path):
    """``--tolerance`` (one vocabulary for the SVD's accuracy): ``exact`` gives the dense SVD's spectrum, and the
    setting is recorded; without it the settings (and the bytes) are as before."""
    base, ft, deltas = models
    out = tmp_path / "exact.json"
    assert main([str(base), str(ft), "--rank", "3", "--modules", "q_proj", "--json", str(out),
                 "--tolerance", "exact"]) == 0
    rec = json.loads(out.read_text())
    assert rec["settings"]["tolerance"] == "exact" and rec["settings"]["n_iter"] >= 8
    [m] = [m for m in rec["modules"] if m["name"] == PLANTED[0]]
    S, _ = _dense(deltas[PLANTED[0]], 3)
    np.testing.assert_allclose(m["sigma"][:3], S[:3], rtol=1e-6)
    plain = tmp_path / "plain.json"
    assert main([str(base), str(ft), "--rank", "3", "--modules", "q_proj", "--json", str(plain)]) == 0
    assert "tolerance" not in json.loads(plain.read_text())["settings"]
