"""Intruder dimensions: a planted intruder, no update, and the sweep / CLI on a real PEFT adapter."""

import json

import numpy as np
import pytest

from analysis import load_adapter
from analysis.intruders import main
from analysis.sweeps.intruders import intruder_sweep
from analysis.metrics.intruders import base_singular_vectors, intruder_dimensions

from _rank_tiny import lowrank_from, orthonormal, tiny_llama
from conftest import make_peft_adapter


@pytest.fixture(scope="module")
def planted():
    """W with a well-separated spectrum and ΔW = 20 u vᵀ, u, v spread evenly over W's 16 weakest directions."""
    rng = np.random.default_rng(0)
    d = 64
    U, V = orthonormal(rng, d, d), orthonormal(rng, d, d)
    s = np.linspace(10, 1, d)
    W = (U * s) @ V.T  # (d, d)
    u = U[:, -16:].sum(axis=1) / 4  # |cos| = 1/4 with each of W's last 16 left vectors, 0 with the rest
    v = V[:, -16:].sum(axis=1) / 4
    return W, 20.0 * np.outer(u, v), (U, V)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", ["full", "randomized"])
def test_planted_direction_is_the_one_intruder(planted, side, method):
    W, D, _ = planted
    res = intruder_dimensions(W, D, top_k=10, threshold=0.5, side=side, method=method)
    assert res.count == 1 and res.ranks == (1,)  # σ ≈ 20 > σ₁(W) = 10: it comes first
    assert res.max_cos[0] < 0.35 and np.all(res.max_cos[1:] > 1 - 1e-6)
    assert res.sigma[0] > 20 and res.sigma[1:] == pytest.approx(np.linspace(10, 1, 64)[:9], rel=1e-6)
    assert list(res.best_match[1:]) == list(range(9))
    assert res.energy_share == pytest.approx(res.sigma[0] ** 2 / (res.sigma ** 2).sum()) and not res.zero
    fr = res.to_frame()
    assert fr["intruder"].tolist() == [True] + [False] * 9 and list(fr["j"]) == list(range(1, 11))
    # a lower threshold than its max |cos| stops counting it
    assert intruder_dimensions(W, D, threshold=float(res.max_cos[0]) * 0.99, side=side).count == 0


def test_no_update_no_intruders(planted):
    W, D, _ = planted
    z = intruder_dimensions(W, np.zeros_like(W))
    assert z.zero and z.count == 0 and z.sigma == pytest.approx(np.linspace(10, 1, 64)[:10])
    tiny = intruder_dimensions(W, 1e-9 * np.random.default_rng(1).standard_normal(W.shape))
    assert not tiny.zero and tiny.count == 0 and tiny.max_cos.min() > 1 - 1e-6


def test_lowrank_input_and_precomputed_base(planted):
    W, D, _ = planted
    U, S, Vt = np.linalg.svd(D)
    lr = lowrank_from(U[:, :1], S[:1], Vt[:1].T, scale=0.5)
    X = base_singular_vectors(W, side="left")
    a = intruder_dimensions(W, lr, base_vectors=X)
    b = intruder_dimensions(W, D)
    np.testing.assert_allclose(a.max_cos, b.max_cos, atol=1e-10)
    with pytest.raises(ValueError, match="shape"):
        intruder_dimensions(W[:, :10], lr)
    for kw in ({"threshold": 0}, {"top_k": 0}, {"side": "up"}, {"method": "power"}):
        with pytest.raises(ValueError):
            intruder_dimensions(W, D, **kw)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("intr")
    make_peft_adapter(root / "ad", r=4, seed=2)
    tiny_llama().save_pretrained(str(root / "base"))
    return root / "ad", root / "base"


def test_sweep_matches_direct_computation(real):
    ad_path, base = real
    ad = load_adapter(ad_path)
    sw = intruder_sweep(ad, base, top_k=5)
    from safetensors.numpy import load_file

    W = load_file(str(base / "model.safetensors"))
    assert list(sw.frame["name"]) == sorted(ad, key=lambda n: (int(n.split(".")[2]), n))
    for row in sw.frame.to_dict(orient="records"):
        ref = intruder_dimensions(W[row["name"] + ".weight"], ad[row["name"]].delta(), top_k=5)
        assert row["count"] == ref.count and row["ranks"] == ",".join(map(str, ref.ranks))
        np.testing.assert_allclose(sw.results[row["name"]].max_cos, ref.max_cos, atol=1e-6)
        assert row["seconds"] > 0


def test_cli(real, tmp_path, capsys):
    ad, base = real
    js, png = tmp_path / "i.json", tmp_path / "i.png"
    assert main([str(ad), "--base", str(base), "--top-k", "4", "--json", str(js), "--plot", str(png),
                 "--csv", str(tmp_path / "i.csv"), "--modules", "q_proj"]) == 0
    cap = capsys.readouterr()
    out = cap.out
    assert "self_attn.q_proj" in out and "v_proj" not in out.split("threshold")[1]
    assert "ms per module" in cap.err and "ms per module" not in out  # timings on stderr
    rec = json.loads(js.read_text())
    assert rec["settings"]["top_k"] == 4 and len(rec["modules"]) == 2 and len(rec["modules"][0]["max_cos"]) == 4
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input(real, tmp_path, capsys):
    ad, base = real
    for argv, msg in (([str(ad), "--base", str(tmp_path / "none")], "none"),
                      ([str(tmp_path / "none"), "--base", str(base)], "none"),
                      ([str(ad), "--base", str(base), "--threshold", "0"], "--threshold"),
                      ([str(ad), "--base", str(base), "--top-k", "0"], "--top-k")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err and "Traceback" not in err
    wide = tmp_path / "wide"
    tiny_llama(hidden=48).save_pretrained(str(wide))
    capsys.readouterr()  # drop what saving printed
    assert main([str(ad), "--base", str(wide)]) == 2
    err = capsys.readouterr().err
    assert "q_proj.weight" in err and "base model" in err
    with pytest.raises(SystemExit) as e:
        main([str(ad)])  # --base is required
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--base", "--top-k", "--threshold", "--side", "--method", "--seed", "--alpha", "--modules",
                "--layers", "--json", "--csv", "--plot", "--debug"):
        assert opt in text


def test_plot_intruders(real):
    from matplotlib.figure import Figure

    from analysis.plotting.intruders import plot_intruders

    ad, base = real
    sw = intruder_sweep(load_adapter(ad), base, top_k=3)
    ax = Figure().add_subplot()
    art = plot_intruders(sw, ax=ax, top_k=3)
    assert art.ax is ax and len(art.bars) == 2 and ax.get_ylim() == (0, 3)
    assert [b.get_height() for b in art.bars[0]] == list(sw.frame[sw.frame["module"] == "self_attn.q_proj"]["count"])
    with pytest.raises(ValueError, match="value"):
        plot_intruders(sw, value="nope")


@pytest.mark.parametrize("shape, side", [((64, 64), "left"), ((64, 64), "right"), ((150, 200), "left"),
                                         ((200, 150), "right"), ((40, 70), "left"), ((150, 200), "right")])
def test_topk_in_w_basis_matches_the_full_svd(shape, side):
    """With W's cached full basis on its smaller side, the top-k of W + ΔW come from a diagonal-plus-low-rank
    eigenproblem in W's coordinates (Lanczos for d > 4k + 40, LAPACK below): the same σ, |cos| and matches as
    LAPACK's SVD of the dense W + ΔW (and the general path where the basis is not square)."""
    from analysis.core.bases import full_basis

    rng = np.random.default_rng(sum(shape))
    m, n = shape
    q = min(m, n)
    W = (orthonormal(rng, m, q) * np.geomspace(30, 0.5, q)) @ orthonormal(rng, n, q).T  # (m, n)
    U, S, Vt = np.linalg.svd(rng.standard_normal((m, 3)) @ rng.standard_normal((3, n)), full_matrices=False)
    lr = lowrank_from(U[:, :3], 4 * S[:3] / S[0], Vt[:3].T, scale=1.0)  # ΔW of rank 3, σ up to 4
    X, S_w = full_basis(W, side=side)
    fast = intruder_dimensions(W, lr, top_k=10, side=side, base_vectors=X, base_singular_values=S_w)
    full = intruder_dimensions(W, lr.delta(), top_k=10, side=side, method="full")
    np.testing.assert_allclose(fast.sigma, full.sigma, rtol=1e-11)
    np.testing.assert_allclose(fast.max_cos, full.max_cos, atol=1e-9)
    assert list(fast.best_match) == list(full.best_match) and fast.count == full.count
