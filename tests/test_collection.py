"""Collections of adapters: N × N similarity and cosine, checked against dense float64 numpy and PEFT."""

import json
import os

import numpy as np
import pytest

from analysis.core import Adapter, LowRank
from analysis.errors import AdapterError
from analysis.metrics.cosine import (cosine_null_std, frobenius_cosine, frobenius_inner, gram_blocks,
                                     interference, phi_blocks)
from analysis.sweeps.collection import collection_similarity, seriation_order

NAMES = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj")
SHAPES = {NAMES[0]: (24, 20), NAMES[1]: (12, 20), NAMES[2]: (24, 20)}


def _random_collection(seed=0, ranks=(1, 2, 3, 4, 6), drop=None, zero=None):
    """In-memory adapters with random factors; ``drop``: (adapter, module) left out; ``zero``: B = 0."""
    rng = np.random.default_rng(seed)
    out = []
    for i, r in enumerate(ranks):
        mods = {}
        for n in NAMES:
            if drop and (i, n) in drop:
                continue
            d_out, d_in = SHAPES[n]
            B = rng.standard_normal((d_out, r)) * (0.0 if zero and (i, n) in zero else 1.0)
            # correlate the updates a little (a shared component) so cosines are far from 0
            A = rng.standard_normal((r, d_in)) + 0.7 * rng.standard_normal((1, d_in)) * (i % 2)
            mods[n] = LowRank(A, B, scale=float(rng.uniform(0.5, 2.0)), name=n)
        out.append(Adapter(mods, path=f"mem/adapter{i}", format="peft"))
    return out


def _dense(lr):
    return (np.asarray(lr.lora_B, np.float64) @ np.asarray(lr.lora_A, np.float64)) * lr.scale  # (d_out, d_in)


def _basis(lr, side, k):
    """Top-k basis from a dense float64 LAPACK SVD (the oracle)."""
    if side in ("input", "output"):
        U, S, Vt = np.linalg.svd(_dense(lr), full_matrices=False)
        rank = int(np.sum(S > S[0] * 1e-10)) if S[0] > 0 else 0
        X = Vt.T if side == "input" else U
    else:
        M = np.asarray(lr.lora_A, np.float64) if side == "A" else np.asarray(lr.lora_B, np.float64).T
        _, S, Vt = np.linalg.svd(M, full_matrices=False)
        rank = int(np.sum(S > S[0] * 1e-10))
        X = Vt.T
    return X[:, :min(k, rank)]


def _oracle(ads, k, side):
    n = len(ads)
    sim_sum, sim_cnt = np.zeros((n, n)), np.zeros((n, n))
    inner, na, nb = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    per_sim = {m: np.full((n, n), np.nan) for m in NAMES}
    per_cos = {m: np.full((n, n), np.nan) for m in NAMES}
    for a in range(n):
        for b in range(n):
            for m in NAMES:
                if m not in ads[a] or m not in ads[b]:
                    continue
                Da, Db = _dense(ads[a][m]), _dense(ads[b][m])
                ip = float(np.sum(Da * Db))
                inner[a, b] += ip
                na[a, b] += float(np.sum(Da * Da))
                nb[a, b] += float(np.sum(Db * Db))
                if np.any(Da) and np.any(Db):
                    per_cos[m][a, b] = ip / np.sqrt(np.sum(Da * Da) * np.sum(Db * Db))
                    Ua, Ub = _basis(ads[a][m], side, k), _basis(ads[b][m], side, k)
                    kk = min(Ua.shape[1], Ub.shape[1])
                    phi = np.linalg.norm(Ua[:, :kk].T @ Ub[:, :kk]) ** 2 / kk
                    per_sim[m][a, b] = phi
                    sim_sum[a, b] += phi
                    sim_cnt[a, b] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sim_sum / sim_cnt, inner / np.sqrt(na * nb), per_sim, per_cos


@pytest.mark.parametrize("side,k,tile,group", [("input", 1, None, None), ("output", 3, 2, 1), ("A", 2, 3, 5000),
                                               ("B", 8, 1, 1), ("input", 2, 4, 3000)])
def test_matrices_match_dense_float64(side, k, tile, group):
    ads = _random_collection(drop={(2, NAMES[1])}, zero={(4, NAMES[2])})
    kw = {} if group is None else {"group_bytes": group}  # small: one task per module or two
    res = collection_similarity(ads, k=k, side=side, tile=tile, **kw)
    sim, cos, per_sim, per_cos = _oracle(ads, k, side)
    np.testing.assert_allclose(res.similarity, sim, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.cosine, cos, rtol=1e-9, atol=1e-12)
    for m, name in enumerate(res.module_names):
        np.testing.assert_allclose(res.module_similarity[m], per_sim[name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.module_cosine[m], per_cos[name], rtol=1e-9, atol=1e-12)
    assert res.zero == (("mem/adapter4", NAMES[2]),)
    assert res.only_some == {NAMES[1]: ["mem/adapter0", "mem/adapter1", "mem/adapter3", "mem/adapter4"]}
    assert res.shared[2, 3] == 2 and res.shared[0, 1] == 3
    # symmetric, diagonal 1 (every adapter has a non-zero module)
    np.testing.assert_allclose(res.similarity, res.similarity.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(res.similarity), 1.0, atol=1e-12)


def test_rotation_of_factors_changes_nothing():
    ads = _random_collection(seed=3)
    rng = np.random.default_rng(9)
    rot = []
    for ad in ads:
        mods = {}
        for n, lr in ad.items():
            Q, _ = np.linalg.qr(rng.standard_normal((lr.r, lr.r)))
            mods[n] = LowRank(Q.T @ lr.lora_A, lr.lora_B @ Q, scale=lr.scale, name=n)  # B A = (B Q)(Qᵀ A)
        rot.append(Adapter(mods, path=ad.path, format="peft"))
    a, b = collection_similarity(ads, k=2), collection_similarity(rot, k=2)
    np.testing.assert_allclose(a.similarity, b.similarity, atol=1e-10)
    np.testing.assert_allclose(a.cosine, b.cosine, atol=1e-10)


def test_metric_kernels_against_dense():
    rng = np.random.default_rng(1)
    a = LowRank(rng.standard_normal((3, 7)), rng.standard_normal((5, 3)), scale=0.5)
    b = LowRank(rng.standard_normal((2, 7)), rng.standard_normal((5, 2)), scale=-2.0)
    assert frobenius_inner(a, b) == pytest.approx(float(np.sum(_dense(a) * _dense(b))), rel=1e-12)
    assert frobenius_cosine(a, a) == pytest.approx(1.0)
    assert np.isnan(frobenius_cosine(a, LowRank(np.ones((1, 7)), np.zeros((5, 1)))))
    with pytest.raises(ValueError, match="same shape"):
        frobenius_inner(a, LowRank(np.ones((1, 6)), np.ones((5, 1))))
    # gram_blocks on stacks of three = the dense inner products
    lrs = [a, b, LowRank(rng.standard_normal((4, 7)), rng.standard_normal((5, 4)), scale=1.5)]
    B = np.hstack([lr.lora_B * lr.scale for lr in lrs])
    A = np.vstack([lr.lora_A for lr in lrs])
    off = np.array([0, 3, 5, 9])
    G = gram_blocks(B, A, off, B, A, off)
    dense = np.array([[np.sum(_dense(x) * _dense(y)) for y in lrs] for x in lrs])
    np.testing.assert_allclose(G, dense, rtol=1e-12)
    with pytest.raises(ValueError, match="rank >= 1"):
        gram_blocks(B, A, np.array([0, 0, 9]), B, A, off)
    # phi_blocks: identical bases give 1, orthogonal ones 0, zero columns NaN
    I = np.eye(6)
    P = phi_blocks(I[:, :3], [1, 2, 0], I[:, [0, 3, 4]], [1, 2])
    np.testing.assert_allclose(P[:2], [[1.0, 0.0], [0.0, 0.0]])
    assert np.isnan(P[2]).all()


def _haar(rng, d, r):
    """Haar-random orthonormal (d, r): QR of a Gaussian with the signs of R's diagonal fixed (Mezzadri 2007)."""
    Q, R = np.linalg.qr(rng.standard_normal((d, r)))
    return Q * np.sign(np.diag(R))


def test_interference_null_is_calibrated_by_monte_carlo():
    """The null sd of the cosine (1/√(d_out d_in)) against random low-rank updates with fixed spectra."""
    rng = np.random.default_rng(0)
    d_out, d_in, r = 30, 20, 3
    S = np.array([3.0, 1.0, 0.2])
    cos = []
    for _ in range(4000):
        lr = []
        for _ in range(2):
            U, V = _haar(rng, d_out, r), _haar(rng, d_in, r)
            lr.append((U * S) @ V.T)
        cos.append(np.sum(lr[0] * lr[1]) / np.sum(lr[0] ** 2))
    assert np.std(cos) == pytest.approx(cosine_null_std(d_out, d_in), rel=0.05)
    assert abs(np.mean(cos)) < 4 * cosine_null_std(d_out, d_in) / np.sqrt(4000)
    G = np.array([[4.0, 3.0], [3.0, 9.0]])  # cosine 0.5: strongly reinforcing
    it = interference(G, [1.0, 1.0], (d_out, d_in))
    assert it.norm2_sum == pytest.approx(4 + 9 + 6) and it.sum_norm2 == pytest.approx(13)
    assert it.verdict == "reinforcing" and it.z > 3
    assert interference(G, [1.0, -1.0], (d_out, d_in)).verdict == "cancelling"
    G0 = np.array([[4.0, 0.01], [0.01, 9.0]])
    assert interference(G0, [1.0, 1.0], (d_out, d_in)).verdict == "orthogonal"
    assert interference(np.zeros((2, 2)), [1.0, 1.0], (d_out, d_in)).verdict == "zero"


def test_seriation_groups_blocks():
    M = np.full((6, 6), 0.1)
    for grp in ([0, 3, 5], [1, 2, 4]):
        M[np.ix_(grp, grp)] = 0.9
    order = list(seriation_order(M))
    pos = {a: order.index(a) for a in range(6)}
    assert max(pos[a] for a in (0, 3, 5)) - min(pos[a] for a in (0, 3, 5)) == 2
    with pytest.raises(ValueError, match="square"):
        seriation_order(np.ones((2, 3)))


@pytest.fixture(scope="module")
def peft_collection(tmp_path_factory):
    from conftest import make_peft_adapter

    root = tmp_path_factory.mktemp("collection")
    models = {}
    for name, r, seed in (("a", 2, 0), ("b", 4, 1), ("c", 4, 2)):
        models[name] = make_peft_adapter(root / name, r=r, seed=seed)
    return root, models


def _peft_deltas(model):
    """{module name: ΔW} from PEFT's own get_delta_weight (the oracle for reading and scaling)."""
    out = {}
    for n, mod in model.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            out[n.replace("base_model.model.", "")] = mod.get_delta_weight("default").detach().double().numpy()
    return out


def test_cosine_of_peft_adapters_matches_peft_delta_weights(peft_collection):
    root, models = peft_collection
    res = collection_similarity([str(root / x) for x in "abc"])
    deltas = [_peft_deltas(models[x]) for x in "abc"]
    names = sorted(deltas[0])
    assert set(names) == set(res.module_names)
    for i in range(3):
        for j in range(3):
            ip = sum(float(np.sum(deltas[i][n] * deltas[j][n])) for n in names)
            ni = sum(float(np.sum(deltas[i][n] ** 2)) for n in names)
            nj = sum(float(np.sum(deltas[j][n] ** 2)) for n in names)
            assert res.cosine[i, j] == pytest.approx(ip / np.sqrt(ni * nj), rel=1e-5, abs=1e-6)


def test_fsspec_url_is_read_by_the_task(peft_collection):
    import fsspec

    root, _ = peft_collection
    fs = fsspec.filesystem("memory")
    for f in os.listdir(root / "b"):
        fs.pipe(f"/coll/b/{f}", (root / "b" / f).read_bytes())
    res = collection_similarity([str(root / "a"), "memory://coll/b", str(root / "b")])
    assert res.labels[1] == "memory://coll/b"
    np.testing.assert_allclose(res.module_cosine[:, 1, 2], 1.0, atol=1e-12)
    with pytest.raises(AdapterError, match="no such file"):
        collection_similarity([str(root / "a"), "memory://coll/nothing"])


def test_bad_inputs_are_named(peft_collection, tmp_path):
    root, _ = peft_collection
    from conftest import make_peft_adapter

    make_peft_adapter(tmp_path / "wide", r=2, seed=5, hidden=48)
    with pytest.raises(AdapterError) as e:
        collection_similarity([str(root / "a"), str(tmp_path / "wide")])
    msg = str(e.value)
    assert str(tmp_path / "wide") in msg and "key 'model.layers.0.self_attn.q_proj'" in msg and "shape" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="at least two"):
        collection_similarity([str(root / "a")])
    with pytest.raises(ValueError, match="side must be"):
        collection_similarity([str(root / "a"), str(root / "b")], side="left")
    with pytest.raises(AdapterError, match="no such file"):
        collection_similarity([str(root / "a"), str(tmp_path / "missing")])


def test_cli_json_figures_and_exit_codes(peft_collection, tmp_path, capsys):
    from analysis.cli.collection import main

    root, _ = peft_collection
    paths = [str(root / x) for x in "abc"]
    out_json, figs = tmp_path / "c.json", tmp_path / "figs"
    assert main([*paths, "--json", str(out_json), "--out", str(figs), "--k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "similarity (mean phi over shared modules)" in printed
    d = json.loads(out_json.read_text())
    assert d["adapters"] == paths and d["inputs"]["adapters"] == paths and d["settings"]["k"] == 2
    res = collection_similarity(paths, k=2)
    np.testing.assert_allclose(np.array(d["similarity"], float), res.similarity, atol=1e-12)
    np.testing.assert_allclose(np.array(d["cosine"], float), res.cosine, atol=1e-12)
    assert set(d["modules"]) == set(res.module_names)
    assert np.array(d["modules"][res.module_names[0]]["cosine"]).shape == (3, 3)
    assert sorted(os.listdir(figs)) == ["cosine.png", "similarity.png"]
    # the same bytes on a rerun (no timings), and existing outputs refused without --force
    first = out_json.read_bytes()
    assert main([*paths, "--json", str(out_json)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*paths, "--json", str(out_json), "--force", "--k", "2"]) == 0
    assert out_json.read_bytes() == first
    # bad input: one line, exit 2
    assert main([paths[0], str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing" in err and "\n" not in err
    assert main([paths[0]]) == 2
    assert main([*paths, "--k", "0"]) == 2
    # pooled matrices only (large collections), with the tidy CSV and the figures
    csv, figs2 = tmp_path / "c.csv", tmp_path / "figs2"
    assert main([*paths, "--no-modules", "--csv", str(csv), "--out", str(figs2), "--side", "A"]) == 0
    import pandas as pd

    fr = pd.read_csv(csv)
    assert set(fr["module"]) == {"all"} and len(fr) == 6  # a <= b pairs of three adapters
    want = collection_similarity(paths, side="A")
    got = fr[(fr["a"] == paths[0]) & (fr["b"] == paths[2])]
    assert float(got["similarity"].iloc[0]) == pytest.approx(want.similarity[0, 2], abs=1e-12)
    assert sorted(os.listdir(figs2)) == ["cosine.png", "similarity.png"]


def test_cli_expands_a_run_folder(peft_collection, tmp_path, capsys):
    import shutil

    from analysis.cli.collection import expand_sources

    root, _ = peft_collection
    run = tmp_path / "run"
    for step, src in ((200, "b"), (100, "a"), (1000, "c")):
        shutil.copytree(root / src, run / f"checkpoint-{step}")
    got = expand_sources([str(run), str(root / "a")])
    assert got == [str(run / "checkpoint-100"), str(run / "checkpoint-200"), str(run / "checkpoint-1000"),
                   str(root / "a")]


def test_cli_run_folder_gives_a_trajectory(peft_collection, tmp_path, capsys):
    import shutil

    from analysis.cli.collection import main

    root, _ = peft_collection
    run = tmp_path / "run"
    for step, src in ((100, "b"), (200, "c")):
        shutil.copytree(root / src, run / f"checkpoint-{step}")
    out, figs = tmp_path / "t.json", tmp_path / "figs"
    assert main([str(run), str(root / "a"), "--json", str(out), "--out", str(figs)]) == 0
    assert f"run {run}: 2 checkpoints (steps 100-200)" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["adapters"] == [str(run / "checkpoint-100"), str(run / "checkpoint-200"), str(root / "a")]
    tr = d["trajectories"][str(run)]
    final = [r for r in tr["checkpoints"] if r["step"] == 200]
    assert all(r["drift_final"] == pytest.approx(0.0, abs=1e-12) for r in final)
    first = {r["name"]: r for r in tr["checkpoints"] if r["step"] == 100}
    # φ(1, 1) between checkpoint-100 (= b) and the final (= c) is the collection's per-module similarity
    for m, name in enumerate(d["modules"]):
        assert first[name]["phi_final"] == pytest.approx(d["modules"][name]["similarity"][0][1], abs=1e-12)
    assert "trajectory_run.png" in os.listdir(figs)
